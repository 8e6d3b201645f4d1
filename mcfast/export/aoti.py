"""torch.export + AOTInductor packages (``.pt2``): where PyTorch deployment is going.

What is exported: the guided loop has data-dependent control (which conditions are active, how
many steps), so the package holds **one reverse step**, and a short driver runs the loop:

- with the mcfast ops loaded (and their fake kernels, ``mcfast.ops.load()``): :class:`GuidedStepModule`
  = U-Net + ``torch.ops.mcfast.guided_step`` — one call per step, the custom op stays a call into the
  ops library (AOTInductor emits a dispatcher call for it, so the library must be loaded first);
- without them: the U-Net alone, with the update and guidance in PyTorch around it.

Shapes are static for the exported batch size B and condition slots S (the step's tables have
fixed sizes: references are padded to B·S·H·W). Beside ``sampler.pt2`` a ``sampler.pt2.json``
records the kind, shapes and the diffusion settings the driver needs.

Python: ``AOTISampler("sampler.pt2")(refs, factors, stop_steps, weights, noise=..., ...)``.
C++: ``torch::inductor::AOTIModelPackageLoader loader("sampler.pt2"); loader.run({x, t, ...})``
after loading the ops library (see docs/export.md).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from mcfast.atomic import atomic_path, write_text
from mcfast.diffusion.coefficients import NUM_COEFS
from mcfast.diffusion.noise import randn
from mcfast.errors import InputError
from mcfast.export.opsampler import OpsGuidedSampler, ops_loaded
from mcfast.export.tables import FusedTables
from mcfast.export.torchscript import GuidedSampler
from mcfast.ops.step import guided_step

STEP_INPUTS = ("x", "t", "coefs", "noise", "ref_noise", "refs", "ref_offsets", "factors", "active", "weight_kind",
               "patch", "weight_maps", "weight_offsets")


class GuidedStepModule(nn.Module):
    """One reverse step for torch.export: ε̂ (+ v) from the U-Net, then the fused guided update."""

    def __init__(self, unet: nn.Module, learned_variance: bool, clip: bool):
        super().__init__()
        self.unet = unet
        self.learned_variance = bool(learned_variance)
        self.clip = bool(clip)

    def forward(self, x: Tensor, t: Tensor, coefs: Tensor, noise: Tensor, ref_noise: Tensor, refs: Tensor,
                ref_offsets: Tensor, factors: Tensor, active: Tensor, weight_kind: Tensor, patch: Tensor,
                weight_maps: Tensor, weight_offsets: Tensor) -> Tensor:
        model_output = self.unet(x, t).float().contiguous()
        return guided_step(x_t=x, model_output=model_output, coefs=coefs, noise=noise, ref_noise=ref_noise, refs=refs,
                           ref_offsets=ref_offsets, factors=factors, active=active, weight_kind=weight_kind,
                           patch=patch, weight_maps=weight_maps, weight_offsets=weight_offsets,
                           learned_variance=self.learned_variance, clip=self.clip)


def _padded(flat: Tensor, length: int) -> Tensor:
    out = torch.zeros(length, dtype=flat.dtype, device=flat.device)
    out[:flat.numel()] = flat
    return out


def example_step_inputs(sampler: OpsGuidedSampler, batch: int, slots: int) -> tuple:
    """Inputs of the right shapes and dtypes for exporting :class:`GuidedStepModule`."""
    h = w = sampler.image_size
    n = batch * slots * h * w
    x = torch.zeros(batch, 1, h, w)
    return (x, sampler.timestep_map[:1].expand(batch).clone(), sampler.fused_coefs[:1].expand(batch, NUM_COEFS).contiguous(),
            torch.zeros_like(x), torch.zeros(n), torch.zeros(n), torch.zeros(batch, slots, dtype=torch.long),
            torch.ones(batch, slots, dtype=torch.long), torch.zeros(batch, slots, dtype=torch.bool),
            torch.zeros(batch, slots, dtype=torch.long), torch.zeros(batch, slots, 7), torch.zeros(n),
            torch.zeros(batch, slots, dtype=torch.long))


def compile_package(module: nn.Module, args: tuple, path: str | os.PathLike,
                    inductor_configs: Optional[dict] = None) -> Path:
    """torch.export ``module`` at ``args`` and compile it with AOTInductor into the package ``path`` (atomically)."""
    path = Path(path)
    with torch.no_grad():
        program = torch.export.export(module.eval(), args)
    with atomic_path(path) as tmp:
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=inductor_configs)
    return path


def export_sampler_pt2(sampler: GuidedSampler, diffusion_kwargs: dict, path: str | os.PathLike, batch: int = 1,
                       slots: int = 1, inductor_configs: Optional[dict] = None) -> Path:
    """Write ``path`` (.pt2) and ``path.json`` for ``sampler`` (its U-Net and schedule) at batch B and S slots."""
    path = Path(path)
    if batch < 1 or slots < 0:
        raise InputError(f"pt2 export needs batch >= 1 and slots >= 0, got {batch} and {slots}")
    h = sampler.image_size
    use_step = isinstance(sampler, OpsGuidedSampler) and ops_loaded()
    if use_step:
        module: nn.Module = GuidedStepModule(sampler.unet, sampler.fused_learned, sampler.clip_denoised)
        args = example_step_inputs(sampler, batch, slots)
    else:
        module = sampler.unet
        args = (torch.zeros(batch, 1, h, h), sampler.timestep_map[:1].expand(batch).clone())
    compile_package(module, args, path, inductor_configs)
    meta = json.loads(sampler.metadata_json)
    meta.update(kind="guided_step" if use_step else "unet", batch=batch, slots=slots, diffusion=diffusion_kwargs,
                inputs=list(STEP_INPUTS) if use_step else ["x", "t"])
    write_text(Path(str(path) + ".json"), json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return path


class _PackagedUNet(nn.Module):
    """The AOTI U-Net package behind the ``unet(x, t)`` call the sampler loop makes."""

    def __init__(self, runner: Any):
        super().__init__()
        self.runner = runner

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.runner(x.contiguous(), t.contiguous())


class _StepDriver(OpsGuidedSampler):
    """Runs the loop of :class:`OpsGuidedSampler` with each step done by the AOTI step package."""

    def __init__(self, runner: Any, batch: int, slots: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.runner = runner
        self.batch, self.slots = batch, slots

    def _prepare_fused(self, refs: Tensor, factors: Tensor, stop_steps: Tensor, weights: Tensor,
                       filters: Tensor) -> Optional[FusedTables]:
        tables = super()._prepare_fused(refs, factors, stop_steps, weights, filters)
        if tables is None:
            raise InputError("this .pt2 runs the fused guided step, which needs box-filter conditions with "
                             "power-of-two factors; export with --no-ops for other conditions")
        return tables

    def _fused_step(self, x: Tensor, t: Tensor, i: int, j: int, step_noise: Optional[Tensor],
                    cond_noise: Optional[Tensor], seed: int, tables: FusedTables) -> Tensor:
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        n = b * self.slots * h * w
        # AOTISampler always passes both noises, so the package gets explicit noise.
        coefs, active, noise, ref_noise = self._step_inputs(x, i, j, tables, step_noise, cond_noise)
        dev = x.device  # the package was compiled for inputs on one device
        step = dict(x=x.contiguous(), t=t.contiguous(), coefs=coefs, noise=noise, ref_noise=_padded(ref_noise, n),
                    refs=_padded(tables.refs, n), ref_offsets=tables.ref_offsets.to(dev),
                    factors=tables.factors.to(dev), active=active.to(dev), weight_kind=tables.weight_kind.to(dev),
                    patch=tables.patch.to(dev), weight_maps=_padded(tables.weight_maps, n),
                    weight_offsets=tables.weight_offsets.to(dev))
        return self.runner(*(step[name] for name in STEP_INPUTS))


class AOTISampler:
    """Python loading path of an exported ``.pt2``: the same call as the TorchScript sampler.

    The step package needs explicit noise for reproducibility with the other paths; what is not given
    is drawn from a ``torch.Generator`` seeded with ``seed``. Batch size and slots must match the export.
    """

    def __init__(self, path: str | os.PathLike, ops_library: str | os.PathLike | None = None):
        from mcfast.diffusion import create_diffusion
        from mcfast.export.runtime import load_ops_library

        path = Path(path)
        meta_path = Path(str(path) + ".json")
        if not path.is_file() or not meta_path.is_file():
            raise InputError(f"{path}: AOTInductor package or its {meta_path.name} not found")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta["kind"] == "guided_step" and not load_ops_library(ops_library):
            raise InputError(f"{path}: the package calls torch.ops.mcfast.guided_step but the mcfast ops library "
                             f"is not available")
        runner = torch._inductor.aoti_load_package(str(path))
        diffusion = create_diffusion(**self.meta["diffusion"])
        kwargs = dict(method=self.meta["method"], eta=self.meta["eta"], clip_denoised=self.meta["clip_denoised"],
                      image_size=self.meta["image_size"])
        placeholder = nn.Identity()  # the U-Net lives inside the package
        if self.meta["kind"] == "guided_step":
            self.loop: GuidedSampler = _StepDriver(runner, self.meta["batch"], self.meta["slots"], placeholder,
                                                   diffusion, **kwargs)
        else:
            self.loop = GuidedSampler(_PackagedUNet(runner), diffusion, **kwargs)
        self.loop.eval()

    def __call__(self, refs: Tensor, factors: Tensor, stop_steps: Tensor, weights: Tensor, **kw: Any) -> Tensor:
        b, s = int(refs.shape[0]), int(refs.shape[1]) if refs.dim() == 4 else -1
        if self.meta["kind"] == "guided_step" and (b, s) != (self.meta["batch"], self.meta["slots"]):
            raise InputError(f"this .pt2 was exported for batch {self.meta['batch']} with {self.meta['slots']} "
                             f"condition slots, got refs of shape {tuple(refs.shape)}")
        if self.meta["kind"] == "guided_step":
            # The packaged step takes explicit noise only: draw what is missing, in a fixed order.
            gen = torch.Generator().manual_seed(int(kw.get("seed", 0)))
            h, w = int(refs.shape[2]), int(refs.shape[3])
            steps = self.loop.steps
            for name, shape in (("noise", (b, 1, h, w)), ("step_noise", (steps, b, 1, h, w)),
                                ("cond_noise", (steps, b, s, h, w))):
                if kw.get(name) is None:
                    kw[name] = randn(shape, gen, "cpu")
        with torch.no_grad():
            return self.loop(refs, factors, stop_steps, weights, **kw)

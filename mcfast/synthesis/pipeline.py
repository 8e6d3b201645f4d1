"""Run a recipe: plan items, sample them in batches with ILVR guidance, write annotated outputs.

Resumable (finished items are skipped), and split across ranks when launched by ``torchrun``
(item k goes to rank k mod world size; rank 0 merges everything into one COCO file).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from mcfast import __version__
from mcfast.atomic import write_text
from mcfast.errors import InputError
from mcfast.synthesis import outputs
from mcfast.seeding import SEED_RULE, item_seed
from mcfast.synthesis.plan import ItemPlan, plan_item
from mcfast.synthesis.recipe import Recipe

PROVENANCE = "provenance.json"


@dataclass
class SynthesisResult:
    out: Path
    written: int
    skipped: int
    coco: Path | None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def initial_noise(run_seed: int, indices: list[int], size: int) -> torch.Tensor:
    """x_T (B, 1, size, size) of items ``indices``, each from its own "start" seed (:mod:`mcfast.seeding`)."""
    return torch.stack([torch.randn(1, size, size, generator=torch.Generator().manual_seed(item_seed(run_seed, i, "start")))
                        for i in indices])


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return rank, world


def _check_provenance(out: Path, provenance: dict) -> None:
    """Refuse to mix two different runs in one folder; the same run resumes."""
    path = out / PROVENANCE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise InputError(f"{path}: unreadable provenance; use another --out") from None
    for key in ("recipe", "checkpoint_sha256", "n"):
        same = (same_recipe(old.get(key), provenance.get(key)) if key == "recipe"
                else old.get(key) == provenance.get(key))
        if not same:
            raise InputError(f"{out}: holds a run with a different {key}; use another --out to keep both")


def same_recipe(old: dict | None, new: dict | None) -> bool:
    """Whether two provenance recipes are one run. A setting that mcfast gained after ``old`` was written
    (so ``old`` lacks it) counts as the same when ``new`` has it at its default: defaults change nothing,
    and an interrupted run must resume after an upgrade."""
    from dataclasses import asdict

    from mcfast.synthesis.recipe import PathologySpec, Recipe

    if old is None or new is None:
        return old == new
    defaults = json.loads(json.dumps(Recipe().to_dict()))
    defaults["pathology"] = json.loads(json.dumps(asdict(PathologySpec())))  # the default of each list item

    def same(o, n, d) -> bool:
        if isinstance(o, dict) and isinstance(n, dict):
            if set(o) - set(n):
                return False
            d = d if isinstance(d, dict) else {}
            return all(same(o[k], n[k], d.get(k)) if k in o else (k in d and n[k] == d[k]) for k in n)
        if isinstance(o, list) and isinstance(n, list) and isinstance(d, dict):
            return len(o) == len(n) and all(same(a, b, d) for a, b in zip(o, n))
        return o == n

    return same(old, new, defaults)


def _publish_provenance(out: Path, provenance: dict, rank: int) -> None:
    """Rank 0 writes ``provenance.json`` once, the first time a batch is sampled (or at the end of a
    run with nothing to sample): a recipe whose first item cannot be planned leaves none behind that
    would refuse the corrected recipe."""
    if rank == 0 and not (out / PROVENANCE).is_file():
        write_text(out / PROVENANCE, json.dumps(provenance, indent=2))


@dataclass
class SampledItem:
    """One sampled item in memory: its plan, its image in model space (H, W) float32 as the sampler left
    it, the indices of the batch it was sampled in and how it was sampled (meta.json's sampler keys)."""

    plan: ItemPlan
    image: np.ndarray
    batch: list[int]
    sampling: dict


class RunSampler:
    """A run's U-Net loaded once, and the in-memory core of synthesis: plan → guided sampling → one
    model-space array per item. :func:`synthesize` (folders, provenance, resume, ranks) and
    :class:`mcfast.api.Synthesizer` (arrays in memory) both sample through :meth:`batches`, so an item is
    the same array whichever of them made it.

    ``fused_norm``: the U-Net's fused norm + SiLU op (None = when it is available; see make_model_fn)."""

    def __init__(self, ckpt: str | Path, *, device: str | None = None, precision: str = "fp32",
                 channels_last: bool = False, fused_norm: bool | None = None):
        from mcfast.models.inference import make_model_fn
        from mcfast.train.checkpoint import load_model

        self.ckpt = Path(ckpt)
        self.model, self.diffusion_kwargs, self.config = load_model(self.ckpt, device=device or "cpu")
        self.device = next(self.model.parameters()).device
        self.precision = precision
        # One network call per item: convolution rounding depends on the batch size (make_model_fn).
        self.model_fn = make_model_fn(self.model, self.device, precision, channels_last=channels_last,
                                      fused_norm=fused_norm, per_item=True)

    @property
    def modality(self) -> str:
        """What the run was trained on: "ct", "mg" or "generic"."""
        return str(self.config.get("data", {}).get("modality", "generic"))

    @property
    def trained_size(self) -> int:
        return int(self.config.get("data", {}).get("image_size", self.config["model"].get("image_size", 0)))

    def diffusion_for(self, recipe: Recipe):
        """The respaced chain ``recipe`` samples with, after checking that this model can serve it
        (image size, modality): every error before any sampling or output."""
        from mcfast.diffusion.gaussian import create_diffusion
        from mcfast.models.unet import check_sampling_size

        check_sampling_size(self.config["model"], recipe.image_size, self.trained_size,
                            where=f"{recipe.source} with the model at {self.ckpt}")
        if self.modality not in ("generic", recipe.modality):
            raise InputError(f"{recipe.source}: modality = {recipe.modality!r} but the model at {self.ckpt} was "
                             f"trained on {self.modality!r} images")
        return create_diffusion(**{**self.diffusion_kwargs, "respacing": recipe.sampler.steps})

    def batches(self, recipe: Recipe, indices: list[int], *, batch_size: int | None = None, diffusion=None,
                plan: Callable[[int], ItemPlan] | None = None) -> Iterator[list[SampledItem]]:
        """Sample items ``indices`` of ``recipe`` in batches of ``batch_size`` (default the recipe's),
        yielding each batch's items. ``plan(index)`` makes an item's plan (default
        ``plan_item(recipe, index)``). An item's image depends on (recipe seed, index) only."""
        from mcfast.diffusion.eps_scaling import scale_eps
        from mcfast.diffusion.samplers import sample, sdedit_start
        from mcfast.guidance.ilvr import ILVRGuidance

        diffusion = diffusion if diffusion is not None else self.diffusion_for(recipe)
        plan = plan or (lambda i: plan_item(recipe, i))
        model_fn = scale_eps(self.model_fn, recipe.sampler.eps_scale)
        device_t, size, s = self.device, recipe.image_size, recipe.sampler
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise InputError(f"batch_size must be an integer >= 1 (None: the recipe's), got {batch_size!r}")
        bs = batch_size if batch_size is not None else s.batch_size
        for start in range(0, len(indices), bs):
            batch = list(indices[start:start + bs])
            plans = [plan(i) for i in batch]
            noise = initial_noise(recipe.seed, batch, size).to(device_t)
            # The chain runs in the model's companded space: references go in encoded, the image comes out decoded.
            conditions = [[replace(c, ref=diffusion.companding.encode(c.ref)) for c in p.conditions] for p in plans]
            # SDEdit start: each item's anatomy reference noised to start_step with its own x_T noise.
            anatomy = torch.stack([c[0].ref for c in conditions]).to(device_t)
            x_start, first = sdedit_start(diffusion, anatomy, noise, s.start_step)
            # One step-noise generator and one guidance seed per item: an item's image depends on its seed only.
            gens = [torch.Generator(device=device_t).manual_seed(item_seed(recipe.seed, i, "steps")) for i in batch]
            guidance = ILVRGuidance(conditions, diffusion,
                                    generator=[item_seed(recipe.seed, i, "guidance") for i in batch],
                                    backend=s.backend)
            x = sample(model_fn, diffusion, noise.shape, method=s.method, eta=s.eta,
                       clip_denoised=s.clip_denoised, noise=x_start, generator=gens, guidance=guidance,
                       progress=False, device=device_t, start_at=first, x0_guidance=s.x0_guidance,
                       deterministic_below=s.deterministic_below)
            images = diffusion.companding.decode(x.float()).cpu().numpy()[:, 0]
            sampling = {"sampler": s.method, "eta": s.eta, "x0_guidance": s.x0_guidance, "eps_scale": s.eps_scale,
                        "steps": s.steps, "start_step": s.start_step, "deterministic_below": s.deterministic_below,
                        "network_calls": first + 1}
            yield [SampledItem(p, img, batch, dict(sampling)) for p, img in zip(plans, images)]


def synthesize(ckpt: str | Path | RunSampler, recipe: Recipe, n: int, out: str | Path, *, device: str | None = None,
               precision: str = "fp32", batch_size: int | None = None, progress: bool = True,
               channels_last: bool = False, fused_norm: bool | None = None) -> SynthesisResult:
    """Make ``n`` annotated images from the run at ``ckpt`` following ``recipe`` into ``out``.

    ``ckpt``: a run folder, or a :class:`RunSampler` already loaded (then ``device``, ``precision``,
    ``channels_last`` and ``fused_norm`` are its own and these arguments are not used).
    ``fused_norm``: the U-Net's fused norm + SiLU op (None = when it is available; see make_model_fn)."""
    from mcfast.train.checkpoint import weights_file

    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    out = Path(out)
    engine = ckpt if isinstance(ckpt, RunSampler) else RunSampler(
        ckpt, device=device, precision=precision, channels_last=channels_last, fused_norm=fused_norm)
    ckpt, config = engine.ckpt, engine.config
    diffusion = engine.diffusion_for(recipe)
    rank, world = _dist_info()
    provenance = {
        "mcfast_version": __version__, "torch_version": torch.__version__,
        "recipe": json.loads(json.dumps(recipe.to_dict())), "n": n, "checkpoint": str(ckpt),
        "checkpoint_sha256": file_sha256(weights_file(ckpt)), "checkpoint_step": config.get("step"),
        "item_seeds": SEED_RULE, "world_size": world,
        "precision": engine.precision,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    provenance = outputs.private_provenance(provenance, recipe.output.full_paths)  # no patient-named folders
    _check_provenance(out, provenance)
    out.mkdir(parents=True, exist_ok=True)
    mine = [i for i in range(n) if i % world == rank]
    todo = [i for i in mine if not outputs.is_done(out, i)]
    bar = tqdm(total=len(todo), desc=f"synthesize {recipe.modality}", unit="img", disable=not progress)
    for items in engine.batches(recipe, todo, batch_size=batch_size, diffusion=diffusion):
        _publish_provenance(out, provenance, rank)
        for item in items:
            outputs.write_item(out, item.plan, item.image, recipe.modality, recipe.output,
                               {"rank": rank, "batch": item.batch, **item.sampling})
        bar.update(len(items))
    bar.close()
    _publish_provenance(out, provenance, rank)  # nothing was left to sample, e.g. rank 0 had no items
    coco = None
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        coco = outputs.write_coco(out, n, recipe.modality)
    return SynthesisResult(out, len(todo), len(mine) - len(todo), coco)

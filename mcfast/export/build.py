"""Build and export samplers: ``build_sampler`` (which sampler class, from a model and a diffusion),
``export_torchscript`` (sampler.pt) and ``export_pt2`` (AOTInductor package) from a run folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from mcfast.errors import CheckpointError, InputError
from mcfast.export import OPS_CHOICES
from mcfast.export.opsampler import OpsGuidedSampler, ops_loaded
from mcfast.export.torchscript import GuidedSampler


def respacing_for(steps: int, T: int) -> str:
    """The respacing string for ``steps`` sampling steps over a T-step chain ("" keeps all T)."""
    if steps < 1 or steps > T:
        raise InputError(f"--steps must be in 1..{T}, got {steps}")
    return "" if steps == T else str(steps)


def sampler_class(use_ops: Optional[bool] = None) -> type:
    """OpsGuidedSampler when the ops are loaded (or required by ``use_ops=True``), else GuidedSampler."""
    if use_ops is False:
        return GuidedSampler
    if ops_loaded():
        return OpsGuidedSampler
    if use_ops:
        raise InputError("the mcfast ops library is not loaded (torch.ops.mcfast.guided_step is missing); "
                         "build it with `python setup.py build_ext --inplace` or export with --no-ops")
    return GuidedSampler


def build_sampler(model: nn.Module, diffusion: Any, method: str = "ddpm", eta: float = 0.0,
                  clip_denoised: bool = True, metadata: Optional[Dict[str, Any]] = None,
                  use_ops: Optional[bool] = None) -> GuidedSampler:
    """Wrap ``model`` (a UNetModel, eval mode) and a (respaced) ``diffusion`` into an eager :class:`GuidedSampler`.

    ``use_ops``: None = call ``torch.ops.mcfast.guided_step`` when the ops library is loaded, True = require
    it, False = plain PyTorch steps (see :mod:`mcfast.export.opsampler`).
    """
    config = model.model_config() if hasattr(model, "model_config") else {}
    image_size = int(config.get("image_size", 0))
    in_channels = int(config.get("in_channels", 1))
    out_channels = int(config.get("out_channels", 1))
    if diffusion.model_var_type == "learned_range" and out_channels != 2 * in_channels:
        raise InputError(f"the diffusion learns the variance but the model has {out_channels} output channels")
    cls = sampler_class(use_ops)
    meta = {"uses_ops": cls is OpsGuidedSampler, "method": method, "eta": float(eta),
            "steps": int(diffusion.num_timesteps), "image_size": image_size, "model": config,
            "clip_denoised": bool(clip_denoised)}
    meta.update(metadata or {})
    meta["uses_ops"] = cls is OpsGuidedSampler
    sampler = cls(model.eval(), diffusion, method=method, eta=eta, clip_denoised=clip_denoised,
                  image_size=image_size, in_channels=in_channels, metadata=meta)
    return sampler.eval()


def script_sampler(sampler: GuidedSampler) -> torch.jit.ScriptModule:
    """``torch.jit.script`` the sampler (U-Net included), without the 2.14 deprecation warning."""
    from mcfast.export import jit_compat
    return jit_compat.script(sampler.eval())


def _resolve_ops(ops: str) -> Optional[bool]:
    """Load the ops library per ``ops`` ("auto" | "require" | "off"); returns build_sampler's use_ops."""
    if ops not in OPS_CHOICES:
        raise InputError(f"unknown ops mode {ops!r}; expected one of {', '.join(OPS_CHOICES)}")
    if ops == "off":
        return False
    from mcfast.export.runtime import load_ops_library
    loaded = load_ops_library()
    if ops == "require" and not loaded:
        from mcfast import ops as mcops
        mcops.load()  # raises the build hint
    return True if loaded else False


def sampler_from_run(run_dir: str | os.PathLike, steps: int, method: str = "ddpm", eta: float = 0.0,
                     clip_denoised: bool = True, ema: bool = True, ops: str = "auto"):
    """(eager sampler, diffusion kwargs) for the run's EMA (or raw) weights, respaced to ``steps``."""
    from mcfast.diffusion import create_diffusion
    from mcfast.train.checkpoint import load_model

    model, diffusion_kwargs, config = load_model(run_dir, device="cpu", ema=ema)
    if int(config["model"].get("in_channels", 1)) != 1:
        raise CheckpointError(f"{run_dir}: the model takes {config['model']['in_channels']} channels; the exported "
                              f"sampler makes 1-channel images")
    if diffusion_kwargs.get("companding", "linear") != "linear":
        # The exported graph takes references and returns images in the space it samples in.
        raise CheckpointError(f"{run_dir}: the run diffuses in companded space ({diffusion_kwargs['companding']}); "
                              f"the exported sampler has no encode/decode, so export only linear runs")
    T = int(diffusion_kwargs.get("T", 1000))
    diffusion_kwargs = dict(diffusion_kwargs, respacing=respacing_for(int(steps), T))
    diffusion = create_diffusion(**diffusion_kwargs)
    meta = {"ckpt": str(Path(run_dir).resolve()), "ckpt_step": int(config.get("step", 0)),
            "data": config.get("data", {}), "ema": bool(ema)}
    sampler = build_sampler(model, diffusion, method=method, eta=eta, clip_denoised=clip_denoised, metadata=meta,
                            use_ops=_resolve_ops(ops))
    return sampler, diffusion_kwargs


def export_torchscript(run_dir: str | os.PathLike, out: str | os.PathLike, steps: int, method: str = "ddpm",
                       eta: float = 0.0, clip_denoised: bool = True, ema: bool = True, ops: str = "auto") -> Path:
    """Script the whole guided sampler of ``run_dir`` and save it to ``out`` (atomically)."""
    from mcfast.atomic import atomic_path
    from mcfast.export import jit_compat

    sampler, _ = sampler_from_run(run_dir, steps, method, eta, clip_denoised, ema, ops)
    scripted = script_sampler(sampler)
    out = Path(out)
    with atomic_path(out) as tmp:
        jit_compat.save(scripted, tmp)
    return out


def export_pt2(run_dir: str | os.PathLike, out: str | os.PathLike, steps: int, method: str = "ddpm",
               eta: float = 0.0, clip_denoised: bool = True, ema: bool = True, ops: str = "auto", batch: int = 1,
               slots: int = 1, inductor_configs: Optional[dict[str, Any]] = None) -> Path:
    """torch.export + AOTInductor package of one guided step (or the U-Net) of ``run_dir``; see mcfast.export.aoti."""
    from mcfast.export.aoti import export_sampler_pt2

    sampler, diffusion_kwargs = sampler_from_run(run_dir, steps, method, eta, clip_denoised, ema, ops)
    return export_sampler_pt2(sampler, diffusion_kwargs, out, batch=batch, slots=slots,
                              inductor_configs=inductor_configs)

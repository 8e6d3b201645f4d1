"""Export a trained run: ``export_torchscript`` (sampler.pt) and ``export_pt2`` (AOTInductor package)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from mcfast.errors import CheckpointError, InputError
from mcfast.export import OPS_CHOICES
from mcfast.export.torchscript import build_sampler, respacing_for, script_sampler


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

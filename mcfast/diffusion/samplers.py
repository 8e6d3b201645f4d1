"""Reverse-process sampling loops: DDPM ancestral and DDIM (η), with an optional guidance hook.

The loop owns the network call; per step i (num_timesteps−1 … 0) it calls
``model(x, timestep_map[i])`` and then either lets the guidance fuse the whole step
(``guidance.fused_step`` returns x_{i−1}) or does the plain update followed by
``guidance.correct(x_prev, i)``. All noise comes from the explicit ``generator``, so a seed
fixes the result.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mcfast.diffusion.gaussian import GaussianDiffusion
from mcfast.errors import InputError

METHODS = ("ddpm", "ddim")


class Guidance(Protocol):
    """What the sampler asks of a guidance object (duck-typed; see docs/architecture.md)."""

    def correct(self, x_prev: Tensor, i: int) -> Tensor: ...

    def fused_step(self, x_t: Tensor, model_output: Tensor, i: int, method: str, eta: float,
                   clip_denoised: bool, generator: torch.Generator | None) -> Tensor | None: ...


def randn(shape, generator: torch.Generator | None, device: torch.device | str | None,
          dtype: torch.dtype = torch.float32) -> Tensor:
    """N(0, I) noise from ``generator`` on ``device`` (drawn on the generator's device and moved if they differ)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    gen_device = generator.device if generator is not None else device
    z = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype)
    return z if z.device == device else z.to(device)


def ddpm_step(diffusion: GaussianDiffusion, model_output: Tensor, x: Tensor, i: int, clip_denoised: bool,
              generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """One ancestral step x_i → x_{i−1}: mean + exp(½·log σ²)·z, no noise at i = 0. Returns (x_prev, pred_xstart)."""
    t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
    out = diffusion.p_mean_variance(model_output, x, t, clip_denoised=clip_denoised)
    if i == 0:
        return out["mean"], out["pred_xstart"]
    z = randn(x.shape, generator, x.device)
    return out["mean"] + torch.exp(0.5 * out["log_variance"]) * z, out["pred_xstart"]


def ddim_step(diffusion: GaussianDiffusion, model_output: Tensor, x: Tensor, i: int, clip_denoised: bool,
              eta: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """One DDIM step x_i → x_{i−1} with stochasticity ``eta`` (0 = deterministic). Returns (x_prev, pred_xstart)."""
    t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
    out = diffusion.p_mean_variance(model_output, x, t, clip_denoised=clip_denoised)
    # ε consistent with the (possibly clipped) x0 prediction, as in improved-diffusion.
    eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
    a_bar = float(diffusion.alphas_cumprod[i])
    a_bar_prev = float(diffusion.alphas_cumprod_prev[i])
    sigma = eta * ((1 - a_bar_prev) / (1 - a_bar)) ** 0.5 * (1 - a_bar / a_bar_prev) ** 0.5
    x_prev = out["pred_xstart"] * a_bar_prev ** 0.5 + max(1 - a_bar_prev - sigma ** 2, 0.0) ** 0.5 * eps
    if i > 0 and sigma > 0:
        x_prev = x_prev + sigma * randn(x.shape, generator, x.device)
    return x_prev, out["pred_xstart"]


def start_index(diffusion: GaussianDiffusion, start_step: int | None) -> int:
    """The chain index an SDEdit start at ``start_step`` (original 1000-step scale) begins from: the last
    index whose original step is ≤ start_step. None or ≥ T: the top of the chain (pure noise)."""
    top = diffusion.num_timesteps - 1
    if start_step is None or start_step >= int(diffusion.timestep_map[top]) + 1:
        return top
    if start_step < 1:
        raise InputError(f"start_step must be >= 1 (the 1000-step scale), got {start_step}")
    below = [i for i in range(diffusion.num_timesteps) if int(diffusion.timestep_map[i]) <= start_step]
    if not below:
        raise InputError(f"start_step {start_step} is below the first sampled step "
                         f"{int(diffusion.timestep_map[0])}")
    return below[-1]


def sdedit_start(diffusion: GaussianDiffusion, reference: Tensor, noise: Tensor, start_step: int | None
                 ) -> tuple[Tensor, int]:
    """SDEdit (Meng et al. 2022): x at ``start_index`` drawn from q(x_t | reference) with the given ``noise``,
    and that index. At the top of the chain x is the noise itself, so start_step = T (or None) is exactly
    ordinary sampling."""
    i = start_index(diffusion, start_step)
    if i == diffusion.num_timesteps - 1:
        return noise, i
    t = torch.full((noise.shape[0],), i, dtype=torch.long, device=noise.device)
    return diffusion.q_sample(reference.to(noise), t, noise=noise), i


@torch.no_grad()
def sample(model: Callable[[Tensor, Tensor], Tensor], diffusion: GaussianDiffusion, shape, *,
           method: str = "ddpm", eta: float = 0.0, clip_denoised: bool = True, noise: Tensor | None = None,
           generator: torch.Generator | None = None, guidance: Any = None, progress: bool = True,
           return_intermediates: bool = False, device: torch.device | str | None = None,
           start_at: int | None = None) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Draw images of ``shape`` (B, C, H, W) from ``model`` by the reverse process of ``diffusion``.

    ``method`` "ddpm" (ancestral) or "ddim" (with ``eta``). ``noise`` gives x_T (else drawn from
    ``generator``). ``guidance`` follows the protocol in :class:`Guidance`. With
    ``return_intermediates`` the list of x after every step (on CPU, x_T first) is returned too.
    ``start_at`` (a chain index, see :func:`sdedit_start`) begins the loop there with ``noise`` as x
    at that index instead of at the top of the chain.
    """
    if method not in METHODS:
        raise InputError(f"unknown sampler {method!r}; expected one of {', '.join(METHODS)}")
    if eta < 0:
        raise InputError(f"DDIM eta must be >= 0, got {eta}")
    if device is None:
        device = noise.device if noise is not None else next(_parameters(model), torch.empty(0)).device
    device = torch.device(device)
    if noise is not None:
        if tuple(noise.shape) != tuple(shape):
            raise InputError(f"initial noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
        x = noise.to(device=device, dtype=torch.float32)
    else:
        x = randn(shape, generator, device)
    intermediates: list[Tensor] = [x.cpu()] if return_intermediates else []
    timestep_map = torch.from_numpy(diffusion.timestep_map).to(device)
    top = diffusion.num_timesteps - 1 if start_at is None else int(start_at)
    if not 0 <= top < diffusion.num_timesteps:
        raise InputError(f"start index {top} is outside the chain [0, {diffusion.num_timesteps - 1}]")
    steps = range(top, -1, -1)
    for i in tqdm(steps, desc=f"{method} sampling", disable=not progress, leave=False):
        t_model = timestep_map[i].expand(x.shape[0])
        model_output = model(x, t_model).float()
        fused = None
        if guidance is not None:
            fused = guidance.fused_step(x, model_output, i, method, eta, clip_denoised, generator)
        if fused is not None:
            x = fused
        else:
            if method == "ddpm":
                x, _ = ddpm_step(diffusion, model_output, x, i, clip_denoised, generator)
            else:
                x, _ = ddim_step(diffusion, model_output, x, i, clip_denoised, eta, generator)
            if guidance is not None:
                x = guidance.correct(x, i)
        if return_intermediates:
            intermediates.append(x.cpu())
    return (x, intermediates) if return_intermediates else x


def _parameters(model):
    params = getattr(model, "parameters", None)
    return iter(params()) if callable(params) else iter(())

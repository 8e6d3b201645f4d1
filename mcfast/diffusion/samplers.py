"""Reverse-process sampling loops: DDPM ancestral, DDIM (η) and DPM-Solver++(2M), with a guidance hook.

The loop owns the network call; per step i (num_timesteps−1 … 0) it calls
``model(x, timestep_map[i])`` and then either lets the guidance fuse the whole step
(``guidance.fused_step`` returns x_{i−1}) or does the plain update followed by
``guidance.correct(x_prev, i)``. With ``x0_guidance`` the guidance also corrects the model's
data prediction before the update (x̂₀ ← x̂₀ + W ⊙ (φ_N(y) − φ_N(x̂₀)), as DDNM does), which is
what keeps the low frequencies on the reference when a few large steps leave little room for the
x_t correction alone. Step coefficients come from :mod:`mcfast.diffusion.coefficients`.

Noise comes from the explicit ``generator``: one torch.Generator for the batch, or one per image
(then every image's noise, and so the image, depends only on its own generator).
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mcfast.diffusion.coefficients import (FUSED_METHODS, alpha_bars, ddim_eps_coefficient, ddim_sigma,
                                           dpmpp_2m_step_coefficients)
from mcfast.diffusion.gaussian import GaussianDiffusion
from mcfast.diffusion.noise import Generators, image_generator, randn  # noqa: F401  (re-exported)
from mcfast.diffusion.schedule import space_timesteps
from mcfast.errors import InputError

METHODS = ("ddpm", "ddim", "dpmpp2m")
# Methods whose update the fused guided-step op implements (its coefficient table, docs/kernels.md).
FUSABLE_METHODS = FUSED_METHODS


class Guidance(Protocol):
    """What the sampler asks of a guidance object (duck-typed; see docs/architecture.md)."""

    def correct(self, x_prev: Tensor, i: int) -> Tensor: ...

    def correct_x0(self, pred_xstart: Tensor, i: int) -> Tensor: ...

    def fused_step(self, x_t: Tensor, model_output: Tensor, i: int, method: str, eta: float,
                   clip_denoised: bool, generator: Generators) -> Tensor | None: ...


def _chain_t(x: Tensor, i: int) -> Tensor:
    return torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)


def ddpm_step(diffusion: GaussianDiffusion, model_output: Tensor, x: Tensor, i: int, clip_denoised: bool,
              generator: Generators, x0_correction: Callable[[Tensor], Tensor] | None = None
              ) -> tuple[Tensor, Tensor]:
    """One ancestral step x_i → x_{i−1}: posterior mean + exp(½·log σ²)·z, no noise at i = 0.

    ``x0_correction`` (x̂₀ → x̂₀') replaces the data prediction in the posterior mean (the model's
    variance is kept). Returns (x_prev, the x̂₀ used).
    """
    t = _chain_t(x, i)
    out = diffusion.p_mean_variance(model_output, x, t, clip_denoised=clip_denoised)
    mean, x0 = out["mean"], out["pred_xstart"]
    if x0_correction is not None:
        x0 = x0_correction(x0)
        mean, _, _ = diffusion.q_posterior_mean_variance(x0, x, t)
    if i == 0:
        return mean, x0
    z = randn(x.shape, generator, x.device)
    return mean + torch.exp(0.5 * out["log_variance"]) * z, x0


def ddim_step(diffusion: GaussianDiffusion, model_output: Tensor, x: Tensor, i: int, clip_denoised: bool,
              eta: float, generator: Generators, x0_correction: Callable[[Tensor], Tensor] | None = None
              ) -> tuple[Tensor, Tensor]:
    """One DDIM step x_i → x_{i−1} with stochasticity ``eta`` (0 = deterministic).

    ε is the one consistent with the (possibly clipped) model x̂₀, as in improved-diffusion; an
    ``x0_correction`` changes only the x̂₀ term (DDNM's rule: the correction then reaches x_{i−1}
    with weight √ᾱ_prev instead of cancelling through ε). Returns (x_prev, the x̂₀ used).
    """
    t = _chain_t(x, i)
    out = diffusion.p_mean_variance(model_output, x, t, clip_denoised=clip_denoised)
    eps = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
    x0 = out["pred_xstart"] if x0_correction is None else x0_correction(out["pred_xstart"])
    a_bar, a_bar_prev = alpha_bars(diffusion, i)
    sigma = ddim_sigma(a_bar, a_bar_prev, eta)
    x_prev = x0 * a_bar_prev ** 0.5 + ddim_eps_coefficient(a_bar_prev, sigma) * eps
    if i > 0 and sigma > 0:
        x_prev = x_prev + sigma * randn(x.shape, generator, x.device)
    return x_prev, x0


def dpmpp_2m_step(diffusion: GaussianDiffusion, model_output: Tensor, x: Tensor, i: int, clip_denoised: bool,
                  previous_x0: Tensor | None, x0_correction: Callable[[Tensor], Tensor] | None = None
                  ) -> tuple[Tensor, Tensor]:
    """One DPM-Solver++(2M) step x_i → x_{i−1} (deterministic); ``previous_x0`` is the x̂₀ of step i + 1.

    Returns (x_prev, the x̂₀ used), which the caller passes back as ``previous_x0`` next step.
    """
    out = diffusion.p_mean_variance(model_output, x, _chain_t(x, i), clip_denoised=clip_denoised)
    x0 = out["pred_xstart"] if x0_correction is None else x0_correction(out["pred_xstart"])
    step = dpmpp_2m_step_coefficients(diffusion, i, previous_x0 is not None)
    x_prev = step.c_x0 * x0 + step.c_xt * x
    if step.c_prev != 0.0:
        x_prev = x_prev + step.c_prev * previous_x0
    return x_prev, x0


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


def network_calls(steps: str, start_step: int | None, num_timesteps: int = 1000) -> int:
    """How many network calls respacing ``steps`` makes from an SDEdit start at ``start_step`` (the
    kept timesteps ≤ start_step, as :func:`start_index` counts; None or ≥ T: all of them)."""
    kept = sorted(space_timesteps(num_timesteps, steps))
    if start_step is None or start_step >= kept[-1] + 1:
        return len(kept)
    return sum(1 for t in kept if t <= start_step)


def respacing_for_calls(calls: int, start_step: int | None, num_timesteps: int = 1000) -> str:
    """The uniform respacing "N" whose chain makes ``calls`` network calls from ``start_step``: the
    smallest N that makes at least that many (SDEdit skips the kept steps above the start)."""
    if calls < 1:
        raise InputError(f"network calls must be >= 1, got {calls}")
    for n in range(calls, num_timesteps + 1):
        if network_calls(str(n), start_step, num_timesteps) >= calls:
            return str(n)
    raise InputError(f"{calls} network calls cannot be made from start_step {start_step} of a "
                     f"{num_timesteps}-step chain")


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
           generator: Generators = None, guidance: Any = None, progress: bool = True,
           return_intermediates: bool = False, device: torch.device | str | None = None,
           start_at: int | None = None, x0_guidance: bool = False,
           deterministic_below: int = 0) -> Tensor | tuple[Tensor, list[Tensor]]:
    """Draw images of ``shape`` (B, C, H, W) from ``model`` by the reverse process of ``diffusion``.

    ``method`` "ddpm" (ancestral), "ddim" (with ``eta``) or "dpmpp2m" (DPM-Solver++(2M), for few
    steps). ``noise`` gives x_T (else drawn from ``generator``: one, or one per image).
    ``guidance`` follows the protocol in :class:`Guidance`; ``x0_guidance`` also applies its
    correction to x̂₀ before each update (then the fused op is not used). With
    ``return_intermediates`` the list of x after every step (on CPU, x_T first) is returned too.
    ``start_at`` (a chain index, see :func:`sdedit_start`) begins the loop there with ``noise`` as x
    at that index instead of at the top of the chain.
    ``deterministic_below`` (original 1000-step scale): steps whose timestep is below it are DDIM η = 0
    steps whatever ``method`` says (0: off). Karras et al. (2022) inject noise only inside a range of
    noise levels (S_tmin) for the reason measured here: fresh noise added at the lowest levels is not
    removed again by a network that cannot tell it from fine texture, and stays in the image as grain.
    """
    if method not in METHODS:
        raise InputError(f"unknown sampler {method!r}; expected one of {', '.join(METHODS)}")
    if eta < 0:
        raise InputError(f"DDIM eta must be >= 0, got {eta}")
    if not 0 <= deterministic_below <= 1000:
        raise InputError(f"deterministic_below must be in [0, 1000] (the 1000-step scale), got {deterministic_below}")
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
    can_fuse = guidance is not None and method in FUSABLE_METHODS and not x0_guidance
    previous_x0: Tensor | None = None
    for i in tqdm(steps, desc=f"{method} sampling", disable=not progress, leave=False):
        t_model = timestep_map[i].expand(x.shape[0])
        model_output = model(x, t_model).float()
        step_method, step_eta = method, eta
        if method != "dpmpp2m" and int(diffusion.timestep_map[i]) < deterministic_below:
            step_method, step_eta = "ddim", 0.0
        fused = (guidance.fused_step(x, model_output, i, step_method, step_eta, clip_denoised, generator)
                 if can_fuse else None)
        if fused is not None:
            x = fused
        else:
            correction = None
            if x0_guidance and guidance is not None:
                correction = (lambda x0, i=i: guidance.correct_x0(x0, i))
            if step_method == "ddpm":
                x, _ = ddpm_step(diffusion, model_output, x, i, clip_denoised, generator, correction)
            elif step_method == "ddim":
                x, _ = ddim_step(diffusion, model_output, x, i, clip_denoised, step_eta, generator, correction)
            else:
                x, previous_x0 = dpmpp_2m_step(diffusion, model_output, x, i, clip_denoised, previous_x0, correction)
            if guidance is not None:
                x = guidance.correct(x, i)
        if return_intermediates:
            intermediates.append(x.cpu())
    return (x, intermediates) if return_intermediates else x


def _parameters(model):
    params = getattr(model, "parameters", None)
    return iter(params()) if callable(params) else iter(())

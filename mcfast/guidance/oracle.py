"""The plain-PyTorch guided correction (paper eq. 3–5): the oracle every fused kernel is tested against,
and the path ``ILVRGuidance`` takes when the fused op does not serve (backend "reference").

After the reverse step from chain index i (original timestep t = ``timestep_map[i]``) has produced
x_{t−1}, every condition s of image b with t ≥ a_s contributes

    r_s = φ_{n_s}(y_{s,t−1}) − φ_{n_s}(x_{t−1}),   y_{s,t−1} = √ᾱ_prev[i]·y_s + √(1 − ᾱ_prev[i])·ε_s

and x_{t−1} ← x_{t−1} + Σ_s W_s ⊙ r_s, all r_s from the same x_{t−1}. ᾱ_prev is the (possibly
respaced) chain's, so at i = 0 it is 1 and y is the clean reference. Written for clarity, not
speed: one image and one condition at a time, filters at full resolution.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from mcfast.diffusion.noise import randn
from mcfast.errors import InputError
from mcfast.guidance.conditions import Condition
from mcfast.guidance.filters import lowpass, upsample

Generators = torch.Generator | Sequence[Sequence[torch.Generator]] | None


def active_conditions(per_image: Sequence[Sequence[Condition]], t: int) -> list[tuple[int, int]]:
    """(image, condition) index pairs that apply after the step from original timestep ``t``."""
    return [(b, s) for b, conds in enumerate(per_image) for s, c in enumerate(conds) if c.active_at(t)]


def noisy_reference_coefficients(diffusion: Any, i: int) -> tuple[float, float]:
    """(√ᾱ_prev[i], √(1 − ᾱ_prev[i])) of the chain: y_{t−1} = a·y + b·ε."""
    abar_prev = float(diffusion.alphas_cumprod_prev[i])
    return math.sqrt(abar_prev), math.sqrt(max(0.0, 1.0 - abar_prev))


def _pick_generator(generator: Generators, b: int, s: int) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    return generator[b][s]


def _upsampled_low_noise(eps_low: Tensor, cond: Condition, what: str) -> Tensor:
    """up_N of a low-resolution down_N(ε) given as (H/N, W/N) or (1, H/N, W/N)."""
    height, width = cond.shape
    n = cond.factor
    if eps_low.numel() != (height // n) * (width // n) or tuple(eps_low.shape[-2:]) != (height // n, width // n):
        raise InputError(f"{what} has shape {tuple(eps_low.shape)}; expected {(height, width)} or "
                         f"{(height // n, width // n)}")
    return upsample(eps_low.reshape(1, height // n, width // n), n, cond.filter)


def guided_correction(x_prev: Tensor, conditions_per_image: Sequence[Sequence[Condition]], diffusion: Any, i: int,
                      generator: Generators = None,
                      noise: Sequence[Sequence[Tensor | None]] | None = None) -> Tensor:
    """Return x_prev with the multi-condition ILVR correction of chain index ``i`` applied (a new tensor).

    ``x_prev``: (B, 1, H, W). ``conditions_per_image``: one list per image (see
    :func:`mcfast.guidance.conditions.conditions_per_image`). ε_s is drawn as
    ``torch.randn((1, H, W), generator=...)`` for each active (b, s) in order, from ``generator``
    or from ``generator[b][s]`` when one generator per condition is given; nothing is drawn at the
    last step, where y = ref. ``noise[b][s]`` overrides the draw (kernel parity tests): a full
    ε (H, W) or a low-resolution down_N(ε) (H/N, W/N).
    """
    _check_batch(x_prev, conditions_per_image)
    t = int(diffusion.timestep_map[i])
    coef_ref, coef_eps = noisy_reference_coefficients(diffusion, i)
    return _apply_corrections(x_prev, conditions_per_image, t, coef_ref, coef_eps, generator, noise)


def clean_reference_correction(pred_xstart: Tensor, conditions_per_image: Sequence[Sequence[Condition]],
                               diffusion: Any, i: int) -> Tensor:
    """x̂₀ + Σ_s W_s ⊙ (φ_{n_s}(y_s) − φ_{n_s}(x̂₀)) for the conditions active at chain index ``i``.

    The data-prediction form of the same correction (DDNM's range-space replacement, with ILVR's
    low-pass as the operator): the model's x̂₀ is compared with the clean reference, so nothing
    is drawn. Same condition rules as :func:`guided_correction`.
    """
    _check_batch(pred_xstart, conditions_per_image)
    return _apply_corrections(pred_xstart, conditions_per_image, int(diffusion.timestep_map[i]), 1.0, 0.0, None, None)


def _check_batch(x: Tensor, conditions_per_image: Sequence[Sequence[Condition]]) -> None:
    if x.ndim != 4 or x.shape[1] != 1:
        raise InputError(f"guided correction expects samples of shape (B, 1, H, W), got {tuple(x.shape)}")
    if len(conditions_per_image) != x.shape[0]:
        raise InputError(f"got guidance conditions for {len(conditions_per_image)} images but the batch has "
                         f"{x.shape[0]}")


def _apply_corrections(x: Tensor, conditions_per_image: Sequence[Sequence[Condition]], t: int,
                       coef_ref: float, coef_eps: float, generator: Generators,
                       noise: Sequence[Sequence[Tensor | None]] | None) -> Tensor:
    """x + Σ_s W_s ⊙ (φ(coef_ref·y_s + coef_eps·ε_s) − φ(x)) over the conditions active at original step t."""
    height, width = x.shape[-2:]
    out = []
    for b, conds in enumerate(conditions_per_image):
        x_b = x[b]
        total = torch.zeros_like(x_b)
        for s, cond in enumerate(conds):
            if not cond.active_at(t):
                continue
            ref = cond.reference(x.device).to(x.dtype)
            given = None if noise is None else noise[b][s]
            if given is not None:
                given = given.to(x.device, x.dtype)
            if given is not None and tuple(given.shape[-2:]) != (height, width):
                # Low-resolution down_N(ε): only linearity can place it, as a fused kernel does.
                phi_y = (lowpass(coef_ref * ref, cond.factor, cond.filter)
                         + coef_eps * _upsampled_low_noise(given, cond, f"noise for image {b} condition {s}"))
            else:
                if given is None and coef_eps > 0.0:
                    given = randn((1, height, width), _pick_generator(generator, b, s), x.device).to(x.dtype)
                y = coef_ref * ref if given is None else coef_ref * ref + coef_eps * given.reshape(1, height, width)
                phi_y = lowpass(y, cond.factor, cond.filter)
            residual = phi_y - lowpass(x_b, cond.factor, cond.filter)
            total = total + cond.weight_map(x.device).to(x.dtype) * residual
        out.append(x_b + total)
    return torch.stack(out, dim=0)

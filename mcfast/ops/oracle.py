"""Plain-PyTorch statement of the ``mcfast::guided_step`` op contract (packed-table form).

This is the op-level oracle: it takes exactly the op's arguments (with noise passed in) and
computes x_{t−1} with whole-tensor PyTorch ops. ``philox_noise`` builds, from the compiled
generator, the noise tensors the kernels draw in-kernel, so in-kernel runs can be checked
against this oracle too. The guidance-level oracle is :mod:`mcfast.guidance.oracle`.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mcfast.diffusion.coefficients import (LOGVAR_MAX, LOGVAR_MIN, MEAN_X0, MEAN_XT, NOISE_SCALE, NUM_COEFS,
                                           REF_NOISE, REF_SIGNAL, X0_FROM_EPS, X0_FROM_XT)
from mcfast.guidance.filters import downsample, upsample
from mcfast.ops.step import WEIGHT_FULL, WEIGHT_MAP


def patch_weight(params: Tensor, height: int, width: int) -> Tensor:
    """The in-kernel Gaussian patch weight (H, W): separable exp(−dx²/2σ²)·exp(−dy²/2σ²) inside the box, 0 outside."""
    cx, cy, sigma, bx, by, bw, bh = (float(v) for v in params)
    xs = torch.arange(width, dtype=torch.float32)
    ys = torch.arange(height, dtype=torch.float32)
    inv = 1.0 / (2.0 * sigma * sigma)
    wx = torch.where((xs >= bx) & (xs < bx + bw), torch.exp(-(xs - cx) ** 2 * inv), torch.zeros(()))
    wy = torch.where((ys >= by) & (ys < by + bh), torch.exp(-(ys - cy) ** 2 * inv), torch.zeros(()))
    return wy[:, None] * wx[None, :]


def guided_step_oracle(x_t: Tensor, model_output: Tensor, coefs: Tensor, noise: Tensor, ref_noise: Tensor,
                          refs: Tensor, ref_offsets: Tensor, factors: Tensor, active: Tensor, weight_kind: Tensor,
                          patch: Tensor, weight_maps: Tensor, weight_offsets: Tensor, learned_variance: bool,
                          clip: bool) -> Tensor:
    """x_{t−1} per the op contract, in float32, returned in x_t's dtype."""
    B, _, H, W = x_t.shape
    x = x_t.float()
    eps = model_output[:, :1].float()
    c = coefs.float().reshape(B, NUM_COEFS, 1, 1, 1).unbind(1)
    x0 = c[X0_FROM_XT] * x - c[X0_FROM_EPS] * eps
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    mean = c[MEAN_X0] * x0 + c[MEAN_XT] * x
    if learned_variance:
        frac = (model_output[:, 1:2].float() + 1.0) / 2.0
        log_var = frac * c[LOGVAR_MAX] + (1.0 - frac) * c[LOGVAR_MIN]
    else:
        log_var = c[LOGVAR_MIN]
    x_prime = mean + c[NOISE_SCALE] * torch.exp(0.5 * log_var) * noise.float()
    out = x_prime.clone()
    for b in range(B):
        for m in range(factors.shape[1]):
            if not bool(active[b, m]):
                continue
            n = int(factors[b, m])
            h, w = H // n, W // n
            o = int(ref_offsets[b, m])
            low_y = coefs[b, REF_SIGNAL] * refs[o:o + h * w].reshape(1, 1, h, w) \
                + coefs[b, REF_NOISE] * ref_noise[o:o + h * w].reshape(1, 1, h, w)
            low_x = downsample(x_prime[b:b + 1], n, "box")
            r = upsample(low_y - low_x, n, "box")
            kind = int(weight_kind[b, m])
            if kind == WEIGHT_FULL:
                weight = torch.ones(H, W)
            elif kind == WEIGHT_MAP:
                wo = int(weight_offsets[b, m])
                weight = weight_maps[wo:wo + H * W].reshape(H, W)
            else:
                weight = patch_weight(patch[b, m], H, W)
            out[b] += weight * r[0]
    return out.to(x_t.dtype)


def philox_noise(seed: int, offset: int, shape: tuple[int, int, int, int], factors: Tensor, ref_offsets: Tensor,
                 active: Tensor, ref_numel: int) -> tuple[Tensor, Tensor]:
    """(z, ref_noise) exactly as the kernels draw them in-kernel (docs/kernels.md, "Noise")."""
    B, _, H, W = shape
    z = torch.empty(B * H * W)
    torch.ops.mcfast.philox_normal_(z, seed, offset, 0, 0)
    ref_noise = torch.zeros(ref_numel)
    for b in range(B):
        for m in range(factors.shape[1]):
            if not bool(active[b, m]):
                continue
            n = int(factors[b, m])
            low = torch.empty((H // n) * (W // n))
            torch.ops.mcfast.philox_normal_(low, seed, offset, 1 + m, b * H * W)
            o = int(ref_offsets[b, m])
            ref_noise[o:o + low.numel()] = low / n
    return z.reshape(B, 1, H, W), ref_noise

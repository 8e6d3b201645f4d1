"""Analytic "models" for sampler and guidance tests: their outputs are known in closed form.

``ExactEpsModel`` predicts the exact ε of a fixed clean image x0 from (x_t, t):
ε = (x_t − √ᾱ_t·x0) / √(1 − ᾱ_t), with ᾱ at the *original* timestep t the sampler passes
(so it is right under respacing). Its x0 prediction is x0 whatever x_t is, and the DDPM/DDIM
step at chain index 0 returns x0 exactly. ``ZeroEpsModel`` predicts ε = 0, so x0_pred = x_t/√ᾱ_t.
Both emit a constant v channel when the diffusion learns its variance.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def _out_channels(diffusion: Any, out_channels: int | None) -> int:
    if out_channels is not None:
        return out_channels
    return 2 if getattr(diffusion, "learns_variance", False) else 1


def original_alphas_cumprod(diffusion: Any) -> np.ndarray:
    """ᾱ indexed by original timestep (NaN at steps the respaced chain skips)."""
    T = int(getattr(diffusion, "original_num_steps", diffusion.num_timesteps))
    table = np.full(T, np.nan)
    table[np.asarray(diffusion.timestep_map)] = diffusion.alphas_cumprod
    return table


class ExactEpsModel(nn.Module):
    """ε of a known ``x0`` (B, 1, H, W) or (1, H, W) broadcast over the batch."""

    def __init__(self, x0: Tensor, diffusion: Any, out_channels: int | None = None, v: float = 0.0):
        super().__init__()
        self.register_buffer("x0", x0.reshape((-1,) + tuple(x0.shape[-3:])).float() if x0.ndim >= 3
                             else x0.reshape(1, 1, *x0.shape).float())
        self.register_buffer("alphas_cumprod", torch.from_numpy(original_alphas_cumprod(diffusion)))
        self.out_channels = _out_channels(diffusion, out_channels)
        self.v = float(v)
        self.calls: list[int] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        abar = self.alphas_cumprod[t.long()]
        if torch.isnan(abar).any():
            raise AssertionError(f"model called with timesteps outside the chain: {t.tolist()}")
        self.calls.append(int(t[0]))
        abar = abar.reshape(-1, 1, 1, 1)
        eps = ((x.double() - abar.sqrt() * self.x0.double()) / (1.0 - abar).sqrt()).float()
        if self.out_channels == 1:
            return eps
        return torch.cat([eps, torch.full_like(eps, self.v).repeat(1, self.out_channels - 1, 1, 1)], dim=1)


class ZeroEpsModel(nn.Module):
    """Predicts ε = 0 (and a constant v channel for learned-range diffusions)."""

    def __init__(self, diffusion: Any = None, out_channels: int | None = None, v: float = 0.0):
        super().__init__()
        self.out_channels = _out_channels(diffusion, out_channels)
        self.v = float(v)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        eps = torch.zeros_like(x)
        if self.out_channels == 1:
            return eps
        return torch.cat([eps, torch.full_like(eps, self.v).repeat(1, self.out_channels - 1, 1, 1)], dim=1)

"""Epsilon scaling: a training-free correction of the sampler's exposure bias.

Ning et al., *Elucidating the Exposure Bias in Diffusion Models* (ICLR 2024): during sampling the network
sees its own x_t, not q(x_t | x_0) of real data, and its ε prediction comes out too large on average, so
every step removes a little more than noise. Dividing the predicted ε by a constant λ slightly above 1
compensates. In mcfast's CT model the bias shows as missing fine texture: one x0 prediction from a
real crop keeps most of its high-frequency power, while reverse chains lose more of it the higher they
start (docs/results/eps_scale_ct.md measures both), and λ is calibrated there on training-split crops.

The wrapper sits between the network and the sampler, so every sampler, the x̂₀ guidance and the
fused guided-step op see the same scaled ε; the learned-variance channels pass unchanged.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from mcfast.errors import InputError

ModelFn = Callable[[Tensor, Tensor], Tensor]


def check_eps_scale(scale: float, where: str = "eps_scale") -> float:
    """``scale`` as a float, or an InputError naming it (λ must be a finite number > 0)."""
    value = float(scale)
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"{where} = {scale} must be a finite number > 0 (1 = no scaling)")
    return value


def scale_eps(model_fn: ModelFn, scale: float) -> ModelFn:
    """``model_fn`` with its ε output (the first C channels, C = the input's channels) divided by ``scale``.

    ``scale`` = 1 returns ``model_fn`` itself (bit-identical sampling)."""
    scale = check_eps_scale(scale)
    if scale == 1.0:
        return model_fn

    def scaled(x: Tensor, t: Tensor) -> Tensor:
        out = model_fn(x, t)
        channels = x.shape[1]
        return torch.cat([out[:, :channels] / scale, out[:, channels:]], dim=1)
    return scaled

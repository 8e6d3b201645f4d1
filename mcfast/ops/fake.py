"""Fake (meta) kernels of the mcfast ops, for torch.compile, FakeTensor tracing and opcheck.

The ops are defined in C++ (csrc/ops.cpp), which names this module as their Python home
(``set_python_module``); ``mcfast.ops.load()`` imports it after the library.
"""
from __future__ import annotations

import torch
from torch import Tensor

import mcfast._C  # noqa: F401  (the op schemas must exist before their fake kernels)


@torch.library.register_fake("mcfast::guided_step")
def _guided_step_fake(x_t: Tensor, model_output: Tensor, coefs: Tensor, noise: Tensor | None,
                      ref_noise: Tensor | None, refs: Tensor, ref_offsets: Tensor, factors: Tensor, active: Tensor,
                      weight_kind: Tensor, patch: Tensor, weight_maps: Tensor, weight_offsets: Tensor, seed: int,
                      offset: int, learned_variance: bool, clip: bool) -> Tensor:
    torch._check(x_t.dim() == 4, lambda: "mcfast::guided_step: x_t must have shape (B, 1, H, W)")
    torch._check(model_output.shape[0] == x_t.shape[0],
                 lambda: "mcfast::guided_step: model_output and x_t have different batch sizes")
    return torch.empty_like(x_t)


@torch.library.register_fake("mcfast::philox_normal_")
def _philox_normal_fake(out: Tensor, seed: int, offset: int, stream: int, start: int) -> None:
    return None


@torch.library.register_fake("mcfast::philox_bits_")
def _philox_bits_fake(out: Tensor, seed: int, offset: int, stream: int, start: int) -> None:
    return None


@torch.library.register_fake("mcfast::group_norm_silu")
def _group_norm_silu_fake(x: Tensor, weight: Tensor, bias: Tensor, scale: Tensor | None, shift: Tensor | None,
                          groups: int, eps: float, apply_silu: bool) -> Tensor:
    torch._check(x.dim() == 4, lambda: f"mcfast::group_norm_silu: x must have shape (B, C, H, W), got {tuple(x.shape)}")
    torch._check(groups > 0 and x.shape[1] % groups == 0,
                 lambda: f"mcfast::group_norm_silu: channels C = {x.shape[1]} are not divisible by groups = {groups}")
    # Like the kernels: x's own strides when contiguous or channels_last, else a contiguous result.
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty_like(x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)

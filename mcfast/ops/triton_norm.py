"""Triton twin of ``torch.ops.mcfast.group_norm_silu`` (same arguments and result; docs/kernels.md).

Exposed as ``torch.ops.mcfast.group_norm_silu_triton`` (``torch.library.triton_op``). Two kernels:
one program per (image, group) for the float32 moments — two passes over the group (mean, then
Σ(x − mean)², so no cancellation; the second pass mostly hits cache) — then an elementwise pass in
memory order. Runs on CUDA, or on CPU tensors under ``TRITON_INTERPRET=1`` (the tests do that).
"""
from __future__ import annotations

import torch
from mcfast.extras import require

triton = require("triton", extra="triton", feature="the Triton GroupNorm kernel")
import triton.language as tl  # noqa: E402
from torch import Tensor
from torch.library import triton_op, wrap_triton

STATS_BLOCK = 1024
APPLY_BLOCK = 1024
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _group_stats_kernel(x_ptr, mean_ptr, rstd_ptr, C, HW, G, eps, CHANNELS_LAST: tl.constexpr,
                        BLOCK: tl.constexpr):
    bg = tl.program_id(0)
    b = bg // G
    g = bg % G
    Cg = C // G
    n = Cg * HW
    base = x_ptr + b.to(tl.int64) * C * HW
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        e = start + tl.arange(0, BLOCK)
        if CHANNELS_LAST:  # value e: channel g·Cg + e % Cg of pixel e // Cg (consecutive lanes, adjacent channels)
            off = (e // Cg).to(tl.int64) * C + g * Cg + e % Cg
        else:              # the group is one span
            off = (g * Cg).to(tl.int64) * HW + e
        acc += tl.load(base + off, mask=e < n, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / n
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        e = start + tl.arange(0, BLOCK)
        if CHANNELS_LAST:
            off = (e // Cg).to(tl.int64) * C + g * Cg + e % Cg
        else:
            off = (g * Cg).to(tl.int64) * HW + e
        v = tl.load(base + off, mask=e < n, other=0.0).to(tl.float32)
        d = tl.where(e < n, v - mean, 0.0)
        acc += d * d
    var = tl.sum(acc, axis=0) / n
    tl.store(mean_ptr + bg, mean)
    tl.store(rstd_ptr + bg, 1.0 / tl.sqrt(var + eps))


@triton.jit
def _apply_kernel(x_ptr, y_ptr, mean_ptr, rstd_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, C, HW, G,
                  CHANNELS_LAST: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
                  APPLY_SILU: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(1)
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # memory order within image b
    inside = i < C * HW
    c = i % C if CHANNELS_LAST else i // HW
    bg = b * G + c // (C // G)
    at = b.to(tl.int64) * C * HW + i
    x = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + bg, mask=inside, other=0.0)
    rstd = tl.load(rstd_ptr + bg, mask=inside, other=0.0)
    w = tl.load(w_ptr + c, mask=inside, other=0.0)
    bias = tl.load(bias_ptr + c, mask=inside, other=0.0)
    v = (x - mean) * rstd * w + bias
    if HAS_SCALE:
        v = v * (1.0 + tl.load(scale_ptr + b * C + c, mask=inside, other=0.0))
    if HAS_SHIFT:
        v = v + tl.load(shift_ptr + b * C + c, mask=inside, other=0.0)
    if APPLY_SILU:
        v = v / (1.0 + tl.exp(-v))
    tl.store(y_ptr + at, v.to(y_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=inside)


def _check(x: Tensor, weight: Tensor, bias: Tensor, scale: Tensor | None, shift: Tensor | None, groups: int) -> None:
    op = "mcfast::group_norm_silu_triton: "
    torch._check(x.dim() == 4, lambda: f"{op}x must have shape (B, C, H, W), got {tuple(x.shape)}")
    torch._check(x.dtype in DTYPES, lambda: f"{op}x must be float32, bfloat16 or float16, got {x.dtype}")
    B, C = x.shape[:2]
    torch._check(groups > 0 and C % groups == 0,
                 lambda: f"{op}channels C = {C} are not divisible by groups = {groups}")
    for name, t in (("weight", weight), ("bias", bias)):
        torch._check(tuple(t.shape) == (C,), lambda: f"{op}{name} must have shape (C,) = ({C},), got {tuple(t.shape)}")
        torch._check(t.dtype == torch.float32, lambda: f"{op}{name} must be float32, got {t.dtype}")
    for name, t in (("scale", scale), ("shift", shift)):
        if t is not None:
            torch._check(tuple(t.shape) == (B, C),
                         lambda: f"{op}{name} must have shape (B, C) = ({B}, {C}), got {tuple(t.shape)}")


@triton_op("mcfast::group_norm_silu_triton", mutates_args=())
def group_norm_silu_triton(x: Tensor, weight: Tensor, bias: Tensor, scale: Tensor | None, shift: Tensor | None,
                           groups: int, eps: float, apply_silu: bool) -> Tensor:
    """GroupNorm + scale-shift + SiLU (same arguments and result as ``torch.ops.mcfast.group_norm_silu``)."""
    _check(x, weight, bias, scale, shift, groups)
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if not channels_last:
        x = x.contiguous()  # like the C++ op: other layouts are read as contiguous
    y = torch.empty_like(x)
    B, C, H, W = x.shape
    if y.numel() == 0:
        return y
    stats = torch.empty(2, B * groups, dtype=torch.float32, device=x.device)
    wrap_triton(_group_stats_kernel)[(B * groups,)](
        x, stats[0], stats[1], C, H * W, groups, eps, CHANNELS_LAST=channels_last, BLOCK=STATS_BLOCK)
    sc = scale.to(device=x.device, dtype=torch.float32).contiguous() if scale is not None else stats
    sh = shift.to(device=x.device, dtype=torch.float32).contiguous() if shift is not None else stats
    wrap_triton(_apply_kernel)[(triton.cdiv(C * H * W, APPLY_BLOCK), B)](
        x, y, stats[0], stats[1], weight, bias, sc, sh, C, H * W, groups, CHANNELS_LAST=channels_last,
        HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, APPLY_SILU=bool(apply_silu), BLOCK=APPLY_BLOCK)
    return y

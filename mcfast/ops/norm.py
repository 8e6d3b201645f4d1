"""GroupNorm + scale-shift + SiLU as one op, for the U-Net's residual blocks at inference.

``y = act((group_norm(x) · weight + bias) · (1 + scale) + shift)``, act = SiLU or identity, with the
per-(image, group) statistics in float32 and one rounding to x's dtype at the end (docs/kernels.md).

:func:`group_norm_silu_reference` is the plain PyTorch definition, the oracle of the tests.
:func:`group_norm_silu` serves the call with ``torch.ops.mcfast.group_norm_silu`` (C++ on CPU, CUDA
kernel on GPUs), or the Triton twin (:mod:`mcfast.ops.triton_norm`) on a GPU when the library was built
without CUDA, and falls back to the reference when no kernel can serve: library not built, another device
or dtype, or a gradient needed (the kernels have no backward).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

SUPPORTED_DTYPES = {"cpu": (torch.float32, torch.bfloat16),
                    "cuda": (torch.float32, torch.bfloat16, torch.float16)}


def group_norm_silu_reference(x: Tensor, weight: Tensor, bias: Tensor, scale: Tensor | None, shift: Tensor | None,
                              groups: int, eps: float, apply_silu: bool) -> Tensor:
    """The op in plain PyTorch: float32 math (``F.group_norm``), cast to x's dtype once at the end.

    The result is contiguous. GroupNorm runs on a contiguous copy: torch's channels_last CPU kernel loses
    the variance when |μ| ≫ σ (as E[x²] − E[x]² in float32 would; an oracle must not).
    """
    y = F.group_norm(x.float().contiguous(), groups, weight.float(), bias.float(), eps)
    if scale is not None:
        y = y * (1 + scale.float()[:, :, None, None])
    if shift is not None:
        y = y + shift.float()[:, :, None, None]
    if apply_silu:
        y = F.silu(y)
    return y.to(x.dtype)


@functools.cache
def _library_loaded() -> bool:
    # Cached: ResBlocks ask on every call, and a failed import is slow to repeat.
    from mcfast import ops

    return ops.available()


def kernel_for(x: Tensor) -> Callable[..., Tensor] | None:
    """The fused op that serves ``x`` (its device and dtype), or None when only the reference can."""
    if x.dim() != 4 or x.dtype not in SUPPORTED_DTYPES.get(x.device.type, ()) or not _library_loaded():
        return None
    if x.device.type == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key("mcfast::group_norm_silu",
                                                                                         "CUDA"):
        try:
            from mcfast.ops.triton_norm import group_norm_silu_triton
        except Exception:  # triton missing or broken: the reference still serves
            return None
        return group_norm_silu_triton
    return torch.ops.mcfast.group_norm_silu


def group_norm_silu(x: Tensor, weight: Tensor, bias: Tensor, scale: Tensor | None = None,
                    shift: Tensor | None = None, groups: int = 32, eps: float = 1e-5,
                    apply_silu: bool = True) -> Tensor:
    """``act((group_norm(x)·weight + bias)·(1 + scale) + shift)`` with the fused op when it can serve.

    x (B, C, H, W); weight, bias (C,) (cast to float32); scale, shift (B, C) or None. The result has
    x's dtype (and, from the fused op, its memory format). When autograd needs a gradient of any input
    the differentiable reference runs instead.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, scale, shift))
    kernel = None if needs_grad else kernel_for(x)
    if kernel is None:
        return group_norm_silu_reference(x, weight, bias, scale, shift, groups, eps, apply_silu)
    return kernel(x, weight.float(), bias.float(), scale, shift, int(groups), float(eps), bool(apply_silu))


__all__ = ["group_norm_silu", "group_norm_silu_reference", "kernel_for", "SUPPORTED_DTYPES"]

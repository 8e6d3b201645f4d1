"""Run a denoising network for sampling: autocast precision and memory format chosen once."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

import torch

from mcfast.errors import InputError

PRECISIONS = ("fp32", "bf16", "fp16")


def make_model_fn(model: torch.nn.Module, device: torch.device, precision: str,
                  channels_last: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap ``model`` as ``fn(x, t)`` running under the requested autocast precision and memory format.

    The output is float32 and contiguous whatever the precision and memory format, so the samplers'
    arithmetic (and the fused guided-step op) sees plain float32 tensors.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise InputError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        precision = "fp16"  # CUDA devices without bf16
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with ctx:
            return model(x, t).float().contiguous()
    return fn

"""Run a denoising network for sampling: autocast precision, memory format and fused norms chosen once."""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Callable

import torch

from mcfast.errors import InputError
from mcfast.models.unet import use_fused_norm

PRECISIONS = ("fp32", "bf16", "fp16")
FUSED_NORM_DEVICES = ("cpu", "cuda")

log = logging.getLogger("mcfast.models")
_logged_plain = False


def _auto_fused_norm(device: torch.device) -> bool:
    """Fused norms when the op library is loaded and serves ``device``; says once why not when it is missing."""
    global _logged_plain
    if device.type not in FUSED_NORM_DEVICES:
        return False
    from mcfast import ops

    if ops.available():
        return True
    if not _logged_plain:
        _logged_plain = True
        log.info("mcfast's op library is not built: the U-Net uses plain GroupNorm + SiLU (build it with "
                 "`pip install -e .` for the fused op)")
    return False


def fastest_precision(device: torch.device | str) -> str:
    """The autocast precision that runs the U-Net fastest on ``device``: "bf16" on CUDA (make_model_fn
    falls back to fp16 where a GPU lacks bf16) and on CPUs with native bf16 instructions (AVX-512 BF16 or
    AMX), else "fp32".

    Why not bf16 on every AVX-512 CPU: without the BF16 instructions oneDNN converts in software, and
    bf16 becomes the slow choice (measured on a 2-core Intel Xeon without AVX-512 BF16, 1 thread: a 512²
    call of the crop U-Net took 10.6 s under bf16 autocast against 4.3 s in fp32 channels_last; on the
    2-core AMD EPYC with AVX-512 BF16, bf16 + channels_last took 2.0 s per 256² step against 4.5 s in
    fp32, benchmarks/bench_unet.py).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return "bf16"
    return "fp32"


def make_model_fn(model: torch.nn.Module, device: torch.device, precision: str,
                  channels_last: bool, fused_norm: bool | None = None,
                  per_item: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap ``model`` as ``fn(x, t)`` running under the requested autocast precision and memory format.

    The output is float32 and contiguous whatever the precision and memory format, so the samplers'
    arithmetic (and the fused guided-step op) sees plain float32 tensors.

    ``fused_norm``: run the U-Net's norm + scale-shift + SiLU as one op (``models.unet.use_fused_norm``,
    set on ``model`` in place); None = when the op library is loaded and ``device`` is a CPU or CUDA device.
    With it on, ``fn`` runs without autograd (the op has no backward; sampling needs none).

    ``per_item``: call the network on one image at a time. Convolution kernels pick their algorithm
    (and so their rounding) by batch size, so only this makes an image bit-identical whatever batch
    it is sampled in; on CPU it costs nothing measurable (docs/architecture.md, "Randomness").
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
    fused = _auto_fused_norm(device) if fused_norm is None else bool(fused_norm)
    use_fused_norm(model, fused)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with ctx, (torch.no_grad() if fused else nullcontext()):
            if per_item and x.shape[0] > 1:
                return torch.cat([model(x[k:k + 1], t[k:k + 1]).float() for k in range(x.shape[0])]).contiguous()
            return model(x, t).float().contiguous()
    return fn

"""U-Net forward and one full DDPM sampling step at 64², 128², 256²: fp32, bf16, channels_last, compile.

Model: the "small" preset (learned-range output). Batch: MCFAST_BENCH_BATCH (default 1).
torch.compile at 256² takes minutes on a small CPU: opt in with MCFAST_BENCH_COMPILE_256=1.
Run: ``.venv/bin/python -m pytest benchmarks/bench_unet.py --benchmark-only``.
"""
from __future__ import annotations

import os
import warnings
from contextlib import nullcontext

import pytest
import torch

from mcfast.diffusion.gaussian import create_diffusion
from mcfast.diffusion.samplers import ddpm_step
from mcfast.models.unet import UNetModel, preset_config

SIZES = (64, 128, 256)
CONFIGS = ("fp32", "bf16", "channels_last", "bf16_channels_last", "compile")
BATCH = int(os.environ.get("MCFAST_BENCH_BATCH", "1"))
ROUNDS = {64: 3, 128: 2, 256: 1}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_MODELS: dict[tuple[int, str], object] = {}


def _model_fn(size: int, config: str):
    """A callable fn(x, t) for this size/configuration (compiled models are cached across tests)."""
    key = (size, config)
    if key in _MODELS:
        return _MODELS[key]
    torch.manual_seed(0)
    model = UNetModel(**preset_config("small", size)).to(DEVICE).eval()
    with torch.no_grad():  # non-zero output layer so the work is representative
        for p in model.parameters():
            p.normal_(0, 0.02)
    channels_last = "channels_last" in config
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = model
    if config == "compile":
        net = torch.compile(model)
    dtype = torch.bfloat16 if config.startswith("bf16") else None

    @torch.no_grad()
    def fn(x, t):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with (torch.autocast(DEVICE.type, dtype=dtype) if dtype else nullcontext()):
            return net(x, t).float()
    fn.params = model.count_parameters()
    _MODELS[key] = fn
    return fn


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _skip_reason(size: int, config: str) -> str | None:
    if config == "compile" and size == 256 and os.environ.get("MCFAST_BENCH_COMPILE_256") != "1":
        return "torch.compile at 256² is opt-in (MCFAST_BENCH_COMPILE_256=1)"
    return None


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("op", ["forward", "ddpm_step"])
def test_unet(benchmark, bench_results, op, size, config):
    reason = _skip_reason(size, config)
    if reason:
        pytest.skip(reason)
    torch.set_num_threads(int(os.environ.get("MCFAST_BENCH_THREADS", str(torch.get_num_threads()))))
    fn = _model_fn(size, config)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 1, size, size, generator=g).to(DEVICE)
    t = torch.full((BATCH,), 500, device=DEVICE, dtype=torch.long)
    diffusion = create_diffusion(1000, "cosine", respacing="100")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn(x, t)  # compile / first-call costs are not part of the measurement
    _sync()

    if op == "forward":
        def run():
            out = fn(x, t)
            _sync()
            return out
    else:
        def run():
            out, _ = ddpm_step(diffusion, fn(x, t), x, 50, True, g)
            _sync()
            return out
    out = benchmark.pedantic(run, rounds=ROUNDS[size], iterations=1, warmup_rounds=1 if size < 256 else 0)
    assert out.shape[0] == BATCH and out.shape[2:] == (size, size) and torch.isfinite(out).all()
    bench_results.record(f"unet_{op}", benchmark, config={
        "op": op, "size": size, "config": config, "batch": BATCH, "device": str(DEVICE),
        "preset": "small", "params": fn.params})

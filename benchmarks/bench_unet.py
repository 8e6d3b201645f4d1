"""U-Net forward and one full DDPM sampling step at 64², 128², 256²: fp32, bf16, channels_last, compile,
bf16 + channels_last with the fused norm op, and diffusers' UNet2DModel of the same shape; and the shipped
"crop" preset at 512², bf16 + channels_last plain vs fused.

Model: the "small" preset (learned-range output). Batch: MCFAST_BENCH_BATCH (default 1).
torch.compile at 256² takes minutes on a small CPU: opt in with MCFAST_BENCH_COMPILE_256=1.
The diffusers rows (a benchmark-only dependency: ``pip install diffusers``) record the ratio
mcfast-fused / diffusers of the same (op, size), measured just before them.
Run: ``.venv/bin/python -m pytest benchmarks/bench_unet.py --benchmark-only``.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from contextlib import nullcontext

import pytest
import torch

from mcfast import ops
from mcfast.diffusion.gaussian import create_diffusion
from mcfast.diffusion.samplers import ddpm_step
from mcfast.models.unet import UNetModel, preset_config, use_fused_norm

SIZES = (64, 128, 256)
FUSED = "bf16_channels_last_fused"
DIFFUSERS = "diffusers_bf16_channels_last"
# FUSED before DIFFUSERS: the diffusers row reports the ratio to the fused row of the same (op, size).
CONFIGS = ("fp32", "bf16", "channels_last", "bf16_channels_last", "compile", FUSED, DIFFUSERS)
CROP_SIZE = 512
CROP_CONFIGS = ("bf16_channels_last", FUSED)
BATCH = int(os.environ.get("MCFAST_BENCH_BATCH", "1"))
ROUNDS = {64: 3, 128: 2, 256: 1, CROP_SIZE: 1}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DIFFUSERS_HEAD_DIM = 64  # diffusers takes one head size for all levels (mcfast: 4 heads); 64 divides every width
_MODELS: dict[tuple[str, int, str], object] = {}
_MEDIANS: dict[tuple[str, str, int, str], float] = {}


def _diffusers_unet(config: dict) -> torch.nn.Module:
    """diffusers' UNet2DModel with the architecture of mcfast's ``UNetModel(**config)``: same widths per level,
    res blocks per level, attention levels and middle attention, GroupNorm(32), scale-shift time conditioning."""
    from diffusers import UNet2DModel

    mult = config["channel_mult"]
    attention = [2 ** level in config["attention_resolutions"] for level in range(len(mult))]
    return UNet2DModel(
        sample_size=config["image_size"], in_channels=config["in_channels"], out_channels=config["out_channels"],
        block_out_channels=tuple(config["model_channels"] * m for m in mult),
        layers_per_block=config["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        add_attention=config["mid_attention"], attention_head_dim=DIFFUSERS_HEAD_DIM, norm_num_groups=32,
        resnet_time_scale_shift="scale_shift", dropout=config["dropout"])


def _model_fn(size: int, config: str, preset: str = "small"):
    """A callable fn(x, t) for this size/configuration (compiled models are cached across tests)."""
    key = (preset, size, config)
    if key in _MODELS:
        return _MODELS[key]
    torch.manual_seed(0)
    model_config = preset_config(preset, size)
    if config == DIFFUSERS:
        model = _diffusers_unet(model_config).to(DEVICE).eval()
    else:
        model = UNetModel(**model_config).to(DEVICE).eval()
        use_fused_norm(model, config == FUSED)
    with torch.no_grad():  # non-zero output layer so the work is representative
        for p in model.parameters():
            p.normal_(0, 0.02)
    channels_last = "channels_last" in config
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = model
    if config == "compile":
        net = torch.compile(model)
    dtype = torch.bfloat16 if "bf16" in config else None

    @torch.no_grad()
    def fn(x, t):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with (torch.autocast(DEVICE.type, dtype=dtype) if dtype else nullcontext()):
            out = net(x, t)
            return (out.sample if config == DIFFUSERS else out).float()
    fn.params = sum(p.numel() for p in model.parameters())
    _MODELS[key] = fn
    return fn


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _skip_reason(size: int, config: str) -> str | None:
    if config == "compile" and size == 256 and os.environ.get("MCFAST_BENCH_COMPILE_256") != "1":
        return "torch.compile at 256² is opt-in (MCFAST_BENCH_COMPILE_256=1)"
    if config == FUSED and not ops.available():
        return "mcfast's op library is not built (pip install -e .): no fused norm op"
    if config == DIFFUSERS and importlib.util.find_spec("diffusers") is None:
        return "diffusers is not installed (benchmark-only dependency: pip install diffusers)"
    return None


def _measure(benchmark, op: str, size: int, config: str, preset: str = "small"):
    """Time fn (forward, or forward + DDPM step) on a fixed input; returns (output, fn)."""
    torch.set_num_threads(int(os.environ.get("MCFAST_BENCH_THREADS", str(torch.get_num_threads()))))
    fn = _model_fn(size, config, preset)
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
    return out, fn


def _remember(benchmark, preset: str, op: str, size: int, config: str) -> float:
    """This row's median, kept for the ratios of the rows after it."""
    median = benchmark.stats.stats.median
    _MEDIANS[(preset, op, size, config)] = median
    return median


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("op", ["forward", "ddpm_step"])
def test_unet(benchmark, bench_results, op, size, config):
    reason = _skip_reason(size, config)
    if reason:
        pytest.skip(reason)
    _, fn = _measure(benchmark, op, size, config)
    median = _remember(benchmark, "small", op, size, config)
    fused = _MEDIANS.get(("small", op, size, FUSED))
    extra = {}
    if config == DIFFUSERS and fused is not None:
        extra = {"mcfast_fused_median_s": fused, "mcfast_fused_over_diffusers": fused / median}
    bench_results.record(f"unet_{op}", benchmark, config={
        "op": op, "size": size, "config": config, "batch": BATCH, "device": str(DEVICE),
        "preset": "small", "params": fn.params}, extra=extra)


@pytest.mark.parametrize("config", CROP_CONFIGS)
def test_unet_crop_512(benchmark, bench_results, config):
    """The shipped model (preset "crop") at the size it samples, plain vs fused norms."""
    reason = _skip_reason(CROP_SIZE, config)
    if reason:
        pytest.skip(reason)
    _, fn = _measure(benchmark, "forward", CROP_SIZE, config, preset="crop")
    median = _remember(benchmark, "crop", "forward", CROP_SIZE, config)
    plain = _MEDIANS.get(("crop", "forward", CROP_SIZE, CROP_CONFIGS[0]))
    extra = {}
    if config == FUSED and plain is not None:
        extra = {"plain_median_s": plain, "plain_over_fused": plain / median}
    bench_results.record("unet_forward", benchmark, config={
        "op": "forward", "size": CROP_SIZE, "config": config, "batch": BATCH, "device": str(DEVICE),
        "preset": "crop", "params": fn.params}, extra=extra)

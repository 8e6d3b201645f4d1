"""Per-step time of the exported sampler: eager mcfast, TorchScript, AOTInductor package.

One process, one configuration (``MCFAST_BENCH_EXPORT_SIZE`` default 64², batch 2, 2 conditions per image,
``tiny`` U-Net preset, 10 DDPM steps, learned variance), same explicit noise for every path:
- ``eager``: ``mcfast.diffusion.samplers.sample`` with ``ILVRGuidance`` (backend ``auto``: the fused op when
  built, as a service running mcfast in Python would);
- ``torchscript``: the scripted sampler from ``mcfast export`` (loop + U-Net + ``torch.ops.mcfast.guided_step``),
  seeded (in-kernel noise, as eager draws it) and ``torchscript_noise_given`` (all noise passed in);
- ``aoti``: the ``.pt2`` package of one guided step driven by :class:`mcfast.export.aoti.AOTISampler`
  (compiling takes minutes on a 2-core CPU; ``MCFAST_BENCH_AOTI=0`` skips it).
Runs of the paths are interleaved so background load on a shared machine hits all alike.
Reported: seconds per step (median of whole runs / steps) and the ratios to eager; the target is
TorchScript ≤ 1.05 × eager. Threads: ``MCFAST_BENCH_THREADS`` (default 1).
Run: ``.venv/bin/python -m pytest benchmarks/bench_export.py -s``; results go to
``benchmarks/results/bench_export.json``.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mcfast.diffusion import create_diffusion, sample
from mcfast.export import build_sampler, pack_conditions, script_sampler
from mcfast.export.aoti import AOTISampler, export_sampler_pt2
from mcfast.export.runtime import load_ops_library
from mcfast.guidance.conditions import Condition
from mcfast.guidance.ilvr import ILVRGuidance
from mcfast.models.unet import UNetModel, preset_config

SIZE = int(os.environ.get("MCFAST_BENCH_EXPORT_SIZE", "64"))
BATCH, STEPS = 2, 10
THREADS = int(os.environ.get("MCFAST_BENCH_THREADS", "1"))
WITH_AOTI = os.environ.get("MCFAST_BENCH_AOTI", "1") == "1"


def _interleaved_medians(fns: dict, runs: int = 7) -> dict:
    """Median seconds per whole run of each fn, runs interleaved so background load hits every path alike."""
    for fn in fns.values():  # warm-up (TorchScript's profiling executor optimises on the first calls)
        fn()
        fn()
    times: dict = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def test_export_per_step_time(bench_results):
    torch.set_num_threads(THREADS)
    ops = load_ops_library()
    torch.manual_seed(0)
    cfg = preset_config("tiny", SIZE, learn_sigma=True)
    model = UNetModel(**cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    diffusion_kwargs = dict(T=1000, schedule="cosine", model_var_type="learned_range", respacing=str(STEPS))
    diffusion = create_diffusion(**diffusion_kwargs)
    g = torch.Generator().manual_seed(1)
    anatomy, lesion = torch.rand(SIZE, SIZE, generator=g) * 2 - 1, torch.rand(SIZE, SIZE, generator=g) * 2 - 1
    conds = [Condition.full(anatomy, 8), Condition.on_canvas(lesion, (SIZE // 4, SIZE // 4, SIZE // 4, SIZE // 4),
                                                              4, 300)]
    inputs = pack_conditions(conds, BATCH, SIZE)
    slots = inputs["refs"].shape[1]
    x_T = torch.randn(BATCH, 1, SIZE, SIZE, generator=g)
    inputs.update(noise=x_T, step_noise=torch.randn(STEPS, BATCH, 1, SIZE, SIZE, generator=g),
                  cond_noise=torch.randn(STEPS, BATCH, slots, SIZE, SIZE, generator=g))

    def eager():
        guidance = ILVRGuidance(conds, diffusion, 0, backend="auto")
        return sample(model, diffusion, (BATCH, 1, SIZE, SIZE), noise=x_T, generator=torch.Generator().manual_seed(2),
                      guidance=guidance, progress=False)

    sampler = build_sampler(model, diffusion, "ddpm")
    scripted = script_sampler(sampler)
    conditions_only = {k: v for k, v in inputs.items() if not k.endswith("noise")}
    fns = {"eager": eager,
           "torchscript": lambda: scripted(**conditions_only, seed=0),          # in-kernel noise, like eager
           "torchscript_noise_given": lambda: scripted(**inputs)}
    compile_s = None
    tmp = tempfile.TemporaryDirectory()
    if WITH_AOTI:
        t0 = time.perf_counter()
        path = export_sampler_pt2(sampler, diffusion_kwargs, Path(tmp.name) / "sampler.pt2", batch=BATCH,
                                  slots=slots)
        compile_s = time.perf_counter() - t0
        aoti = AOTISampler(path)
        fns["aoti"] = lambda: aoti(**inputs)
        diff = (aoti(**inputs) - scripted(**inputs)).abs().max().item()
    with torch.no_grad():
        times = {k: v / STEPS for k, v in _interleaved_medians(fns).items()}
    tmp.cleanup()
    ratios = {k: v / times["eager"] for k, v in times.items()}
    config = {"size": SIZE, "batch": BATCH, "steps": STEPS, "conditions": slots, "unet": "tiny",
              "threads": THREADS, "ops": ops}
    for name, sec in times.items():
        bench_results.record(name, config=config, extra={"s_per_step": sec, "ratio_to_eager": ratios[name]})
    if compile_s is not None:
        bench_results.record("aoti_compile", config=config, extra={"compile_s": compile_s, "max_abs_diff": diff})
    print(f"\nper-step time ({SIZE}x{SIZE}, B={BATCH}, {slots} conditions, {THREADS} thread(s), ops={ops}):",
          file=sys.stderr)
    for name, sec in times.items():
        print(f"  {name:24s} {sec * 1e3:8.2f} ms/step   x{ratios[name]:.3f} of eager", file=sys.stderr)
    if compile_s is not None:
        print(f"  AOTInductor compile {compile_s:.0f} s", file=sys.stderr)
    assert all(t > 0 for t in times.values())

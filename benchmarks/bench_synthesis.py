"""End-to-end synthesis: seconds per finished, annotated image and peak memory, mcfast against the paper's way.

Per image size (256², 512²) and thread count (2, 1), three configurations, each in its own process
(benchmarks/synthesis_case.py says exactly what each one runs): ``paper`` (ADM small-shape U-Net with
attention, fp32, 250 ancestral steps, eager ILVR; extrapolated from two timed chain lengths),
``default`` (the shipped crop-trained model and recipe sampler) and ``fast`` (``--fast``).
Results (with the speed-ups over ``paper`` from the same run) go to benchmarks/results/bench_synthesis.json.

    .venv/bin/python -m pytest benchmarks/bench_synthesis.py --benchmark-only
    MCFAST_BENCH_SYNTH_SIZES=256 MCFAST_BENCH_SYNTH_THREADS=2 ...   # a subset

A run rewrites the JSON with its own rows only. The committed file joins two runs, each row naming its
own in ``run``: the 2-thread rows (2026-12-03, quiet machine) and the 1-thread rows (2026-12-02, the
other core busy); the paper baseline and the speed-ups of a row come from the same run as the row.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASE = Path(__file__).resolve().with_name("synthesis_case.py")
SIZES = tuple(int(s) for s in os.environ.get("MCFAST_BENCH_SYNTH_SIZES", "256,512").split(","))
THREADS = tuple(int(t) for t in os.environ.get("MCFAST_BENCH_SYNTH_THREADS", "2,1").split(","))
N_IMAGES = int(os.environ.get("MCFAST_BENCH_SYNTH_N", "2"))
CONFIGS = ("paper", "default", "fast")
_paper: dict[tuple[int, int], float] = {}


def run_case(config: str, size: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    args = json.dumps({"config": config, "size": size, "threads": threads, "n": N_IMAGES})
    proc = subprocess.run([sys.executable, str(CASE), args], capture_output=True, text=True, env=env,
                          cwd=CASE.parent.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"{config} {size}² {threads} thread(s) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("config", CONFIGS)  # outermost: "paper" of every size runs before the others
def test_synthesis_end_to_end(benchmark, bench_results, config, size, threads):
    out = {}

    def once():
        out.update(run_case(config, size, threads))

    benchmark.pedantic(once, rounds=1, iterations=1)
    extra = dict(out)
    if config == "paper":
        _paper[(size, threads)] = out["seconds_per_image"]
    elif (size, threads) in _paper:
        extra["speedup_vs_paper"] = _paper[(size, threads)] / out["seconds_per_image"]
    bench_results.record(f"synthesis_{config}_{size}_{threads}t", benchmark,
                         config={"config": config, "size": size, "threads": threads}, extra=extra)

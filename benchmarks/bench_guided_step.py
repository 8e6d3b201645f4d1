"""The fused guided step against the PyTorch reference, torch.compile of it, and the copy roofline.

Per configuration (batch B, size S², M conditions per image) one process measures:
- ``reference``: the eager path ILVR takes — sampler DDPM step (torch.randn z) + ``guided_correction`` (a
  full-resolution torch.randn ε per condition, filters at full resolution);
- ``compiled``: ``torch.compile`` of the same math (noise drawn inside the graph);
- ``fused``: ``torch.ops.mcfast.guided_step`` with in-kernel Philox noise;
- ``fused_passed``: the same op with z and the low-res reference noise passed in (pre-drawn, not timed);
- ``copy``: ``Tensor.copy_`` of as many bytes as the fused step must move (the bandwidth roofline);
plus the generator's throughput against torch.randn, and the guidance share of a full sampling step
(U-Net forward + guided update) at 256². With a CUDA device, ``test_guided_step_cuda`` adds the GPU grid:
the CUDA op (noise in-kernel / passed) and the Triton op against the GPU's own copy bandwidth.

Bytes that must move: read x_t and the model output (ε̂, v), write x_{t−1}: 16 B/pixel (+4 B with z passed in).
Quick mode (default): B ∈ {1, 8} at 256² with M ∈ {1, 3}. ``MCFAST_BENCH_FULL=1``: B ∈ {1, 8} ×
S ∈ {256, 512, 1024} × M ∈ {1, 3, 8}. Threads: ``MCFAST_BENCH_THREADS`` (default 1, for stable numbers on
a shared machine). Run: ``.venv/bin/python -m pytest benchmarks/bench_guided_step.py -s``; results go to
``benchmarks/results/bench_guided_step.json`` and a table is printed.
"""
from __future__ import annotations

import os
import statistics
import time
import warnings

import pytest
import torch
import torch.nn.functional as F

from mcfast import ops

pytestmark = pytest.mark.skipif(not ops.available(), reason="mcfast._C is not built")

from mcfast.diffusion.gaussian import create_diffusion  # noqa: E402
from mcfast.diffusion.samplers import ddpm_step  # noqa: E402
from mcfast.guidance.conditions import Condition  # noqa: E402
from mcfast.guidance.oracle import guided_correction  # noqa: E402
from mcfast.ops.guided import FusedGuidedStep, pack_op_tables, passed_noise, step_coefficients  # noqa: E402

FULL = os.environ.get("MCFAST_BENCH_FULL", "0") == "1"
THREADS = int(os.environ.get("MCFAST_BENCH_THREADS", "1"))
if FULL:
    GRID = [(b, s, m) for b in (1, 8) for s in (256, 512, 1024) for m in (1, 3, 8)]
else:
    GRID = [(1, 256, 1), (8, 256, 1), (8, 256, 3)]
STEP = 500  # chain index of the measured step (T = 1000): every condition active, noise on
_TABLE: list[str] = []

_fused_steps: dict = {}


def try_fused_step(x, model_out, diffusion, i, conds, method, eta, clip, generator, force=False, seed=None):
    """One fused step from a FusedGuidedStep kept per (diffusion, seed), as a guidance object keeps its own."""
    step = _fused_steps.setdefault((id(diffusion), seed), FusedGuidedStep(diffusion, force=force, seed=seed))
    return step(x, model_out, i, conds, method, eta, clip, generator)


def _timeit(fn, min_time=0.4, max_runs=30, warmup=1) -> float:
    """Median seconds of fn() over repeated runs (at least 3, up to ``max_runs`` or ``min_time``)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (len(times) < max_runs and time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _conditions(B: int, size: int, M: int, seed: int = 0) -> list[list[Condition]]:
    """M conditions per image: a full-image anatomy condition, then Gaussian patch conditions (factors 4..16)."""
    g = torch.Generator().manual_seed(seed)
    anatomy = torch.rand(size, size, generator=g) * 2 - 1
    per_image = []
    for b in range(B):
        conds = [Condition.full(anatomy, 8, name="anatomy")]
        for m in range(1, M):
            w = size // 4
            x0 = (37 * (b + 1) * m) % (size - w)
            y0 = (53 * (b + 2) * m) % (size - w)
            canvas = torch.rand(size, size, generator=g) * 2 - 1
            conds.append(Condition.on_canvas(canvas, (x0, y0, w, w), (4, 8, 16)[m % 3], name=f"lesion{m}"))
        per_image.append(conds)
    return per_image


def _compiled_reference(diffusion, i: int, factors_kinds):
    """torch.compile of the reference math (one condition list shared by shape; noise drawn in-graph)."""
    c = {k: float(getattr(diffusion, k)[i]) for k in (
        "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_mean_coef1", "posterior_mean_coef2",
        "posterior_log_variance_clipped", "alphas_cumprod_prev")}
    log_beta = float(diffusion.log_betas[i])

    def step(x, mo, refs, weights):
        eps, v = mo[:, :1], mo[:, 1:2]
        x0 = (c["sqrt_recip_alphas_cumprod"] * x - c["sqrt_recipm1_alphas_cumprod"] * eps).clamp(-1, 1)
        mean = c["posterior_mean_coef1"] * x0 + c["posterior_mean_coef2"] * x
        frac = (v + 1) / 2
        log_var = frac * log_beta + (1 - frac) * c["posterior_log_variance_clipped"]
        xp = mean + torch.exp(0.5 * log_var) * torch.randn_like(x)
        out = xp
        a = c["alphas_cumprod_prev"]
        for (n, _), ref, w in zip(factors_kinds, refs, weights):
            y = a ** 0.5 * ref + (1 - a) ** 0.5 * torch.randn_like(x)
            r = F.interpolate(F.avg_pool2d(y, n) - F.avg_pool2d(xp, n), scale_factor=n, mode="nearest")
            out = out + w * r
        return out
    return torch.compile(step, fullgraph=True)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(old)
    if _TABLE:
        print("\n" + "\n".join(_TABLE))


@pytest.mark.parametrize("B,size,M", GRID, ids=[f"B{b}-{s}px-M{m}" for b, s, m in GRID])
@torch.no_grad()
def test_guided_step(benchmark, bench_results, B, size, M):
    diffusion = create_diffusion(T=1000, schedule="linear", model_var_type="learned_range")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 1, size, size, generator=g)
    mo = torch.randn(B, 2, size, size, generator=g) * 0.5
    conds = _conditions(B, size, M)
    gens = [[torch.Generator().manual_seed(10 * b + s) for s in range(M)] for b in range(B)]
    step_gen = torch.Generator().manual_seed(1)

    def reference():
        x_prev, _ = ddpm_step(diffusion, mo, x, STEP, True, step_gen)
        return guided_correction(x_prev, conds, diffusion, STEP, gens)

    def fused():
        return try_fused_step(x, mo, diffusion, STEP, conds, "ddpm", 0.0, True, None, force=True, seed=7)

    # passed-in noise: the op alone on pre-drawn noise (drawing it costs what the reference's randn costs)
    packed = pack_op_tables(conds, size, size, x.device)
    coefs, learned = step_coefficients(diffusion, STEP, "ddpm", 0.0, B)
    active = torch.ones(B, M, dtype=torch.bool)
    z, ref_noise = passed_noise(x, packed, [[True] * M] * B, coefs[0], step_gen, None)
    op_args = (x, mo, coefs, z, ref_noise, packed.refs, packed.ref_offsets, packed.factors, active,
               packed.weight_kind, packed.patch, packed.weight_maps, packed.weight_offsets, 0, STEP, learned, True)

    def fused_passed():
        return torch.ops.mcfast.guided_step(*op_args)

    nbytes = B * size * size * 4 * 4  # x_t, ε̂, v read; x_{t−1} written
    src = torch.randn(nbytes // 8)
    dst = torch.empty_like(src)
    t_copy = _timeit(lambda: dst.copy_(src))
    copy_bw = 2 * src.numel() * 4 / t_copy

    t_ref = _timeit(reference, min_time=1.0, max_runs=10)
    benchmark.pedantic(fused, rounds=max(3, min(50, int(0.5 / max(1e-4, t_ref / 8)))), warmup_rounds=1)
    t_fused = benchmark.stats.stats.median
    t_passed = _timeit(fused_passed)
    t_comp = None
    if size <= 512 or FULL:
        refs = [c.reference().unsqueeze(0) for c in conds[0]]
        weights = [c.weight_map() for c in conds[0]]
        # one shared condition list keeps the graph small; the work per image is the same as the reference's
        torch._dynamo.reset()  # a fresh graph per configuration (the recompile limit is per code object)
        comp = _compiled_reference(diffusion, STEP, [(c.factor, c.is_full) for c in conds[0]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comp(x, mo, refs, weights)
            t_comp = _timeit(lambda: comp(x, mo, refs, weights), min_time=0.5)

    res = {
        "t_reference_s": t_ref, "t_compiled_s": t_comp, "t_fused_s": t_fused, "t_fused_passed_s": t_passed,
        "t_copy_s": t_copy, "bytes": nbytes, "copy_GBps": copy_bw / 1e9,
        "fused_GBps": nbytes / t_fused / 1e9, "fused_passed_GBps": (nbytes + B * size * size * 4) / t_passed / 1e9,
        "speedup_vs_reference": t_ref / t_fused,
        "speedup_vs_compiled": (t_comp / t_fused) if t_comp else None,
        "passed_fraction_of_copy_bw": (nbytes + B * size * size * 4) / t_passed / copy_bw,
    }
    bench_results.record("guided_step", benchmark, config={"B": B, "size": size, "M": M, "threads": THREADS},
                         extra=res)
    comp_txt = f"{t_comp * 1e3:8.2f}" if t_comp else "     n/a"
    sp_comp = f"{t_comp / t_fused:6.1f}x" if t_comp else "    n/a"
    if not _TABLE:
        _TABLE.append("  B  size  M |  ref ms  comp ms fused ms pass ms | vs ref vs comp | fused GB/s pass/copy")
    _TABLE.append(f"{B:3d} {size:5d} {M:2d} | {t_ref * 1e3:7.2f} {comp_txt} {t_fused * 1e3:8.2f} {t_passed * 1e3:7.2f} "
                  f"| {t_ref / t_fused:5.1f}x {sp_comp} | {nbytes / t_fused / 1e9:9.2f} "
                  f"{res['passed_fraction_of_copy_bw'] * 100:8.0f}%")


def _cuda_time(fn, reps: int = 50) -> float:
    """Median seconds per call of fn() on the GPU (CUDA events around each call, after a warm-up)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


GPU_GRID = [(b, s, m) for b in (1, 8) for s in (256, 512, 1024) for m in (1, 3, 8)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the GPU rows of the grid)")
@pytest.mark.parametrize("B,size,M", GPU_GRID, ids=[f"cuda-B{b}-{s}px-M{m}" for b, s, m in GPU_GRID])
@torch.no_grad()
def test_guided_step_cuda(benchmark, bench_results, B, size, M):
    """CUDA op (in-kernel noise, and noise passed in) and the Triton op against the GPU's copy bandwidth."""
    from mcfast.ops.triton_kernels import guided_step_triton

    dev = torch.device("cuda")
    diffusion = create_diffusion(T=1000, schedule="linear", model_var_type="learned_range")
    x = torch.randn(B, 1, size, size, device=dev)
    mo = torch.randn(B, 2, size, size, device=dev) * 0.5
    conds = _conditions(B, size, M)
    packed = pack_op_tables(conds, size, size, dev)
    coefs, learned = step_coefficients(diffusion, STEP, "ddpm", 0.0, B)
    active = torch.ones(B, M, dtype=torch.bool)
    z = torch.randn(B, 1, size, size, device=dev)
    ref_noise = torch.randn(packed.refs.numel(), device=dev) * 0.1
    host = (packed.ref_offsets, packed.factors, active, packed.weight_kind, packed.patch)
    op = torch.ops.mcfast.guided_step

    def fused():  # what FusedGuidedStep sends: small tables on the host, noise drawn in-kernel
        return op(x, mo, coefs, None, None, packed.refs, host[0], host[1], host[2], host[3], host[4],
                  packed.weight_maps, packed.weight_offsets, 7, STEP, learned, True)

    def fused_passed():
        return op(x, mo, coefs, z, ref_noise, packed.refs, host[0], host[1], host[2], host[3], host[4],
                  packed.weight_maps, packed.weight_offsets, 7, STEP, learned, True)

    def triton_passed():  # the same host tables: the Triton op copies them to the device itself
        return guided_step_triton(x, mo, coefs, z, ref_noise, packed.refs, host[0], host[1], host[2], host[3],
                                  host[4], packed.weight_maps, packed.weight_offsets, 7, STEP, learned, True)

    nbytes = B * size * size * 4 * 4
    src = torch.randn(nbytes // 8, device=dev)
    dst = torch.empty_like(src)
    copy_bw = 2 * src.numel() * 4 / _cuda_time(lambda: dst.copy_(src))
    benchmark.pedantic(lambda: (fused(), torch.cuda.synchronize()), rounds=20, warmup_rounds=2)
    t_fused, t_passed, t_triton = _cuda_time(fused), _cuda_time(fused_passed), _cuda_time(triton_passed)
    passed_bytes = nbytes + B * size * size * 4
    res = {"t_cuda_fused_s": t_fused, "t_cuda_passed_s": t_passed, "t_triton_passed_s": t_triton,
           "copy_GBps": copy_bw / 1e9, "cuda_fused_GBps": nbytes / t_fused / 1e9,
           "cuda_passed_fraction_of_copy_bw": passed_bytes / t_passed / copy_bw,
           "triton_passed_fraction_of_copy_bw": passed_bytes / t_triton / copy_bw,
           "gpu": torch.cuda.get_device_name(0)}
    bench_results.record("guided_step_cuda", benchmark, config={"B": B, "size": size, "M": M}, extra=res)
    _TABLE.append(f"cuda B{B} {size}² M{M}: fused {t_fused * 1e6:.1f} us, passed {t_passed * 1e6:.1f} us "
                  f"({res['cuda_passed_fraction_of_copy_bw'] * 100:.0f}% of copy {copy_bw / 1e9:.0f} GB/s), "
                  f"triton {t_triton * 1e6:.1f} us ({res['triton_passed_fraction_of_copy_bw'] * 100:.0f}%)")


@torch.no_grad()
def test_generator_throughput(benchmark, bench_results):
    """Philox normals vs torch.randn, at THREADS and at every core (the in-kernel generator is parallel,
    torch.randn's CPU generator is sequential)."""
    n = 1 << 22
    out = torch.empty(n)
    benchmark.pedantic(lambda: torch.ops.mcfast.philox_normal_(out, 1, 2, 0, 0), rounds=10, warmup_rounds=1)
    res = {}
    for threads in sorted({THREADS, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        t_randn = _timeit(lambda: torch.randn(n, out=out))
        t_philox = _timeit(lambda: torch.ops.mcfast.philox_normal_(out, 1, 2, 0, 0))
        res[f"philox_Msamples_per_s_{threads}t"] = n / t_philox / 1e6
        res[f"randn_Msamples_per_s_{threads}t"] = n / t_randn / 1e6
        res[f"ratio_{threads}t"] = t_randn / t_philox
        _TABLE.append(f"generator, {threads} thread(s): philox {n / t_philox / 1e6:.0f} M/s, torch.randn "
                      f"{n / t_randn / 1e6:.0f} M/s ({t_randn / t_philox:.2f}x)")
    torch.set_num_threads(THREADS)
    bench_results.record("philox_normal", benchmark, config={"n": n}, extra=res)


@torch.no_grad()
def test_guidance_share_of_sampling_step(benchmark, bench_results):
    from mcfast.models.unet import UNetModel, preset_config

    size, B, M = 256, 1, 3
    torch.manual_seed(0)
    model = UNetModel(**preset_config("small", size)).eval()
    diffusion = create_diffusion(T=1000, schedule="linear", model_var_type="learned_range")
    x = torch.randn(B, 1, size, size)
    conds = _conditions(B, size, M)
    t = torch.full((B,), STEP)

    def plain_step():
        mo = model(x, t)
        return ddpm_step(diffusion, mo, x, STEP, True, None)[0]

    def guided_step():
        mo = model(x, t)
        return try_fused_step(x, mo, diffusion, STEP, conds, "ddpm", 0.0, True, None, force=True, seed=3)

    mo = model(x, t)
    t_update = _timeit(lambda: try_fused_step(x, mo, diffusion, STEP, conds, "ddpm", 0.0, True, None, force=True,
                                              seed=3))
    benchmark.pedantic(guided_step, rounds=3, warmup_rounds=1)
    t_guided = benchmark.stats.stats.median
    t_plain = _timeit(plain_step, min_time=0, max_runs=3)
    res = {"t_step_guided_s": t_guided, "t_step_plain_s": t_plain, "t_fused_update_s": t_update,
           "fused_update_share": t_update / t_guided}
    bench_results.record("sampling_step_256", benchmark, config={"B": B, "size": size, "M": M, "threads": THREADS},
                         extra=res)
    _TABLE.append(f"sampling step 256² (U-Net small + update): {t_guided * 1e3:.0f} ms; fused guided update "
                  f"{t_update * 1e3:.2f} ms = {100 * t_update / t_guided:.2f}% (plain-step total {t_plain * 1e3:.0f} ms)")

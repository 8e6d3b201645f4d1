"""FusedGuidedStep: equals the guidance reference path (sampler step + guided_correction) with the same generators."""
import logging

import pytest
import torch

from mcfast import ops

pytestmark = pytest.mark.skipif(not ops.available(), reason="mcfast._C is not built")

from mcfast.diffusion.gaussian import create_diffusion  # noqa: E402
from mcfast.diffusion.samplers import ddim_step, ddpm_step  # noqa: E402
from mcfast.errors import InputError  # noqa: E402
from mcfast.guidance.conditions import Condition  # noqa: E402
from mcfast.guidance.oracle import guided_correction  # noqa: E402
from mcfast.ops.guided import FusedGuidedStep  # noqa: E402

H = W = 32


def try_fused_step(x_t, model_output, diffusion, i, conds, method, eta, clip, generator, force=False,
                   condition_generators=None, seed=None):
    """One fused step from a fresh FusedGuidedStep (so the tables are packed for this call)."""
    step = FusedGuidedStep(diffusion, force=force, seed=seed)
    return step(x_t, model_output, i, conds, method, eta, clip, generator, condition_generators=condition_generators)


def _setup(var_type="learned_range", seed=0):
    g = torch.Generator().manual_seed(seed)
    diffusion = create_diffusion(T=100, schedule="linear", model_var_type=var_type)
    x = torch.randn(3, 1, H, W, generator=g)
    model_out = torch.randn(3, 2 if var_type == "learned_range" else 1, H, W, generator=g) * 0.5
    anatomy = torch.rand(H, W, generator=g) * 2 - 1
    lesion = torch.rand(H, W, generator=g) * 2 - 1
    soft = torch.rand(H, W, generator=g)
    conds = [
        [Condition.full(anatomy, 4), Condition.on_canvas(lesion, (4, 6, 12, 10), 2, stop_step=30),
         Condition(anatomy, 8, 0, soft)],
        [Condition.full(lesion, 16, stop_step=50)],
        [],
    ]
    return diffusion, x, model_out, conds


def _generators(conds):
    return (torch.Generator().manual_seed(5),
            [[torch.Generator().manual_seed(100 + 10 * b + s) for s in range(len(c))] for b, c in enumerate(conds)])


@pytest.mark.parametrize("var_type,method,eta,i", [
    ("learned_range", "ddpm", 0.0, 60), ("learned_range", "ddpm", 0.0, 0), ("fixed_small", "ddpm", 0.0, 40),
    ("fixed_large", "ddpm", 0.0, 99), ("learned_range", "ddim", 0.0, 60), ("fixed_small", "ddim", 0.5, 20),
])
def test_fused_equals_reference_path(var_type, method, eta, i):
    diffusion, x, model_out, conds = _setup(var_type)
    gen, cgens = _generators(conds)
    if method == "ddpm":
        x_prev, _ = ddpm_step(diffusion, model_out, x, i, True, gen)
    else:
        x_prev, _ = ddim_step(diffusion, model_out, x, i, True, eta, gen)
    want = guided_correction(x_prev, conds, diffusion, i, cgens)
    gen, cgens = _generators(conds)
    got = try_fused_step(x, model_out, diffusion, i, conds, method, eta, True, gen, force=True, condition_generators=cgens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", ["reference", "fused-philox"])
def test_guided_block_means_have_the_noisy_reference_statistics(path):
    # With one full-image box condition, φ_n(x_{t−1}) = √ᾱ·φ_n(y) + √(1−ᾱ)·φ_n(ε): the block means minus the
    # reference term are N(0, (1−ᾱ_prev)/n²). This checks the in-kernel low-resolution noise's scale.
    g = torch.Generator().manual_seed(1)
    diffusion = create_diffusion(T=100, schedule="linear", model_var_type="learned_range")
    n, i, size = 2, 50, 64
    x = torch.randn(4, 1, size, size, generator=g)
    model_out = torch.randn(4, 2, size, size, generator=g) * 0.5
    ref = torch.rand(size, size, generator=g) * 2 - 1
    conds = [[Condition.full(ref, n)] for _ in range(4)]
    if path == "reference":
        gen, cgens = _generators(conds + [[]])
        out = guided_correction(ddpm_step(diffusion, model_out, x, i, True, gen)[0], conds, diffusion, i, cgens[:4])
    else:
        out = try_fused_step(x, model_out, diffusion, i, conds, "ddpm", 0.0, True, None, force=True, seed=77)
    a = float(diffusion.alphas_cumprod_prev[i])
    resid = torch.nn.functional.avg_pool2d(out, n) - a ** 0.5 * torch.nn.functional.avg_pool2d(ref[None, None], n)
    var = resid.var().item()
    assert abs(resid.mean().item()) < 0.05 * (1 - a) ** 0.5
    assert 0.9 < var / ((1 - a) / n ** 2) < 1.1


def test_bfloat16_samples():
    diffusion, x, model_out, conds = _setup()
    gen, cgens = _generators(conds)
    x_prev, _ = ddpm_step(diffusion, model_out, x, 60, True, gen)
    want = guided_correction(x_prev, conds, diffusion, 60, cgens)
    gen, cgens = _generators(conds)
    got = try_fused_step(x.bfloat16(), model_out.bfloat16(), diffusion, 60, conds, "ddpm", 0.0, True, gen, force=True,
                         condition_generators=cgens)
    assert got.dtype == torch.bfloat16
    # inputs rounded to bf16 (x_t, ε̂, v) and the output once more: a few bf16 ulps of |x| ≈ 4
    torch.testing.assert_close(got.float(), want, rtol=3e-2, atol=6e-2)


def test_unsupported_returns_none_logs_once_and_force_raises(caplog):
    diffusion, x, model_out, _ = _setup()
    ref = torch.zeros(H, W)
    cases = [[[Condition.full(ref, 4, filter="bicubic")]] * 3, [[Condition(torch.zeros(24, 24), 3)]] * 3]
    xs = [x, torch.zeros(3, 1, 24, 24)]
    mos = [model_out, torch.zeros(3, 2, 24, 24)]
    for conds, xx, mm in zip(cases, xs, mos):
        with caplog.at_level(logging.INFO, logger="mcfast.ops"):
            caplog.clear()
            assert try_fused_step(xx, mm, diffusion, 5, conds, "ddpm", 0.0, True, None) is None
            assert try_fused_step(xx, mm, diffusion, 4, conds, "ddpm", 0.0, True, None) is None
        assert len([r for r in caplog.records if "fused guided step not used" in r.message]) <= 1
        with pytest.raises(InputError, match="fused guided step cannot serve"):
            try_fused_step(xx, mm, diffusion, 5, conds, "ddpm", 0.0, True, None, force=True)
    with pytest.raises(InputError, match="dtype"):
        try_fused_step(x.double(), model_out.double(), diffusion, 5, [[]] * 3, "ddpm", 0.0, True, None, force=True)
    with pytest.raises(InputError, match="device meta"):
        try_fused_step(x.to("meta"), model_out.to("meta"), diffusion, 5, [[]] * 3, "ddpm", 0.0, True, None, force=True)


def test_tables_are_packed_once_per_conditions_and_released():
    diffusion, x, model_out, conds = _setup()
    gen, cgens = _generators(conds)
    step = FusedGuidedStep(diffusion, force=True)
    step(x, model_out, 60, conds, "ddpm", 0.0, True, gen, condition_generators=cgens)
    tables = step.tables(conds, H, W, x.device)
    step(x, model_out, 59, conds, "ddpm", 0.0, True, gen, condition_generators=cgens)
    assert step.tables(conds, H, W, x.device) is tables  # same conditions: reused
    other = [list(c) for c in reversed(conds)]
    assert step.tables(other, H, W, x.device) is not tables
    step.release()
    assert step._tables is None

"""Guided sampling end to end with analytic models (tests/analytic_models.py)."""
import math

import pytest
import torch

from analytic_models import ExactEpsModel, ZeroEpsModel
from mcfast.diffusion import create_diffusion, sample
from mcfast.errors import InputError
from mcfast.guidance import Condition, ILVRGuidance, downsample, lowpass

S = 32


def _diffusion(respacing, var="fixed_small", T=1000):
    return create_diffusion(T=T, schedule="linear", respacing=respacing, model_var_type=var, loss_type="simple")


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _run(model, d, guidance, batch=1, method="ddpm", seed=0, clip=True, eta=0.0, intermediates=False, size=S):
    return sample(model, d, (batch, 1, size, size), method=method, eta=eta, clip_denoised=clip,
                  generator=torch.Generator().manual_seed(seed), guidance=guidance, progress=False,
                  return_intermediates=intermediates)


@pytest.mark.parametrize("method,respacing,var", [("ddpm", "50", "fixed_small"), ("ddim", "ddim25", "fixed_small"),
                                                  ("ddpm", "ddim25", "learned_range")])
@pytest.mark.parametrize("kind", ["box", "bicubic"])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_full_condition_replaces_the_low_frequencies(method, respacing, var, kind, backend):
    d = _diffusion(respacing, var)
    A, B = _rand(1, 1, S, S, seed=1), _rand(1, 1, S, S, seed=2)
    guidance = ILVRGuidance([Condition(B[0], 4, filter=kind)], d, generator=3, backend=backend)
    x = _run(ExactEpsModel(A, d), d, guidance, batch=2, method=method)
    # The model keeps its own details; the last correction (y = clean reference) sets φ(x) = φ(B).
    torch.testing.assert_close(x, (A + lowpass(B, 4, kind) - lowpass(A, 4, kind)).expand(2, 1, S, S),
                               atol=2e-5, rtol=0)
    gap = (lowpass(x, 4, kind) - lowpass(B, 4, kind)).abs().max()
    before = (lowpass(A, 4, kind) - lowpass(B, 4, kind)).abs().max()
    if kind == "box":
        assert gap < 1e-5
    else:  # bicubic φ is not idempotent: close, not exact
        assert gap < 0.3 * before
    assert guidance.correction_counts == [[d.num_timesteps], [d.num_timesteps]]


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_every_step_pins_low_frequencies_to_the_noisy_reference(method):
    # ε̂ = 0 keeps the step linear and pixel-wise, so after each correction the block means of x
    # are exactly those of y_{t−1} = √ᾱ_prev·ref + √(1−ᾱ_prev)·ε: standardised they are N(0, 1/n²).
    d = _diffusion("ddim25")
    n, size = 2, 64
    B = _rand(1, 1, size, size, seed=2)
    guidance = ILVRGuidance([Condition(B[0], n)], d, generator=5, backend="reference")
    _, steps = _run(ZeroEpsModel(d), d, guidance, method=method, clip=False, intermediates=True, size=size)
    for i in range(d.num_timesteps - 1, 0, -1):
        x_prev = steps[d.num_timesteps - i]
        abar_prev = d.alphas_cumprod_prev[i]
        z = (downsample(x_prev, n) - math.sqrt(abar_prev) * downsample(B, n)) / math.sqrt(1 - abar_prev)
        assert (z * n).std().item() == pytest.approx(1.0, abs=0.1), i
        assert abs(z.mean().item() * n) < 0.15, i
    torch.testing.assert_close(lowpass(steps[-1], n), lowpass(B, n), atol=1e-4, rtol=0)


def test_each_condition_matches_at_its_own_factor():
    # Anatomy at factor 8 outside the lesion box, lesion at factor 2 inside it (complementary weights).
    d = _diffusion("ddim25")
    A = _rand(1, 1, S, S, seed=1)
    anatomy, lesion = _rand(S, S, seed=2), 0.7 + 0.2 * _rand(S, S, seed=3)  # a bright lesion
    inside = torch.zeros(S, S)
    inside[8:24, 16:32] = 1.0
    conds = [Condition(anatomy, 8, weight=1 - inside, name="anatomy"),
             Condition(lesion, 2, weight=inside, filter="box", name="lesion")]
    x = _run(ExactEpsModel(A, d), d, ILVRGuidance(conds, d, generator=0, backend="reference"), method="ddim")
    outside_blocks = downsample(1 - inside, 8) == 1
    assert outside_blocks.sum() == 12
    gap8 = (downsample(x[0, 0], 8) - downsample(anatomy, 8))[outside_blocks].abs().max()
    gap2 = (downsample(x[0, 0], 2) - downsample(lesion, 2))[downsample(inside, 2) == 1].abs().max()
    assert gap8 < 1e-5 and gap2 < 1e-5
    assert (downsample(x[0, 0], 8) - downsample(anatomy, 8))[~outside_blocks].abs().min() > 0.3


def test_gaussian_patch_blends_by_its_weight():
    d = _diffusion("ddim25")
    A = _rand(1, 1, S, S, seed=1)
    patch = Condition.from_patch(torch.full((10, 10), 0.9), (12, 6), S, factor=2, name="nodule")
    x = _run(ExactEpsModel(A, d), d, ILVRGuidance([patch], d, generator=0, backend="reference"), method="ddim")
    expected = A[0, 0] + patch.weight_map() * (lowpass(patch.ref[0], 2) - lowpass(A[0, 0], 2))
    torch.testing.assert_close(x[0, 0], expected, atol=1e-5, rtol=0)


def test_pathology_condition_changes_nothing_outside_its_patch():
    # A pixel-wise model (ε̂ = 0) and the same seeds: adding the patch condition may only change the
    # pixels of the box and those sharing a factor-4 block with it (through the anatomy's φ_4).
    d = _diffusion("50")
    anatomy = Condition(_rand(S, S, seed=2), 4, name="anatomy")
    lesion = Condition.on_canvas(_rand(S, S, seed=3), (9, 13, 7, 6), 2, stop_step=300, name="lesion")
    model = ZeroEpsModel(d)
    with_patch = _run(model, d, ILVRGuidance([anatomy, lesion], d, generator=11, backend="reference"), clip=False)
    without = _run(model, d, ILVRGuidance([anatomy], d, generator=11, backend="reference"), clip=False)
    touched = torch.zeros(S, S, dtype=torch.bool)
    touched[12:20, 8:16] = True  # box rows 13..18, columns 9..15, grown to the 4×4 grid
    diff = (with_patch - without)[0, 0].abs()
    assert diff[~touched].max() == 0
    assert diff[13:19, 9:16].min() > 0


def test_stop_steps_are_honoured_under_respacing():
    d = _diffusion("ddim25")  # t = 0, 40, ..., 960
    A, B = _rand(1, 1, S, S, seed=1), _rand(S, S, seed=2)
    conds = [Condition(B, 4, stop_step=0), Condition(B, 2, stop_step=520), Condition(B, 8, stop_step=521),
             Condition(B, 4, stop_step=1000)]
    guidance = ILVRGuidance(conds, d, generator=0, backend="reference")
    _run(ExactEpsModel(A, d), d, guidance, method="ddim")
    assert guidance.correction_counts == [[25, 12, 11, 0]]
    assert guidance.applied_timesteps[0][1] == list(range(960, 519, -40))
    assert guidance.applied_timesteps[0][2] == list(range(960, 559, -40))
    # "50" spreads 50 steps over 1000: the count follows the kept original timesteps
    d50 = _diffusion("50")
    guidance = ILVRGuidance([Condition(B, 4, stop_step=250)], d50, backend="reference")
    _run(ExactEpsModel(A, d50), d50, guidance)
    assert guidance.correction_counts == [[int((d50.timestep_map >= 250).sum())]]
    assert min(guidance.applied_timesteps[0][0]) >= 250 and guidance.correction_counts[0][0] < 50


def test_stop_steps_on_a_shorter_original_chain():
    d = _diffusion("ddim10", T=100)  # t = 0, 10, ..., 90
    guidance = ILVRGuidance([Condition(_rand(S, S), 4, stop_step=45)], d, backend="reference")
    _run(ZeroEpsModel(d), d, guidance, method="ddim")
    assert guidance.applied_timesteps == [[list(range(90, 49, -10))]]


def test_late_stop_lets_the_model_finish():
    # After the last correction the exact model pulls x back to its own x0 over the remaining steps.
    d = _diffusion("ddim25")
    A, B = _rand(1, 1, S, S, seed=1), _rand(S, S, seed=2)
    x = _run(ExactEpsModel(A, d), d, ILVRGuidance([Condition(B, 4, stop_step=400)], d, backend="reference"),
             method="ddim")
    torch.testing.assert_close(x, A, atol=1e-5, rtol=0)


def test_same_seed_same_image():
    d = _diffusion("50")
    B = _rand(S, S, seed=2)
    make = lambda seed: ILVRGuidance([Condition(B, 4, stop_step=200)], d, generator=torch.Generator().manual_seed(seed),
                                     backend="reference")
    model = ZeroEpsModel(d)
    g = make(1)
    a = _run(model, d, g, batch=2, seed=4)
    again = _run(model, d, g, batch=2, seed=4)  # the same object restarts its streams
    b = _run(model, d, make(1), batch=2, seed=4)
    c = _run(model, d, make(2), batch=2, seed=4)
    assert torch.equal(a, again) and torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    assert g.correction_counts == [[int((d.timestep_map >= 200).sum())]] * 2


def test_mixed_conditions_in_a_batch():
    d = _diffusion("ddim25")
    A = _rand(3, 1, S, S, seed=1)
    b0, b1 = _rand(S, S, seed=2), _rand(S, S, seed=3)
    lesion = Condition.on_canvas(_rand(S, S, seed=4), (4, 4, 12, 12), 2, stop_step=600)
    per_image = [[Condition(b0, 4)], [Condition(b1, 8, filter="bicubic"), lesion], []]
    guidance = ILVRGuidance(per_image, d, generator=0, backend="reference")
    model = ExactEpsModel(A, d)
    x = _run(model, d, guidance, batch=3, method="ddpm")
    torch.testing.assert_close(x[0], A[0] + lowpass(b0, 4) - lowpass(A[0], 4), atol=2e-5, rtol=0)
    torch.testing.assert_close(x[1], A[1] + lowpass(b1, 8, "bicubic") - lowpass(A[1], 8, "bicubic"),
                               atol=2e-5, rtol=0)
    torch.testing.assert_close(x[2], A[2], atol=1e-5, rtol=0)
    assert guidance.correction_counts == [[25], [25, 10], []]  # t = 960..600
    with pytest.raises(InputError, match="conditions for 3 images but the batch has 2"):
        _run(ZeroEpsModel(d), d, guidance, batch=2)


def test_lowpassed_references_for_the_fused_op():
    d = _diffusion("ddim25")
    a, b = Condition(_rand(S, S, seed=1), 4), Condition(_rand(S, S, seed=2), 8, filter="bicubic")
    shared = ILVRGuidance([a, b], d).lowpassed_references(batch_size=2)
    assert [[r.shape for r in row] for row in shared] == [[(1, 8, 8), (1, 4, 4)]] * 2
    torch.testing.assert_close(shared[1][1], downsample(b.ref, 8, "bicubic"))
    per = ILVRGuidance([[a], [b, a]], d).lowpassed_references()
    assert [[r.shape for r in row] for row in per] == [[(1, 8, 8)], [(1, 4, 4), (1, 8, 8)]]


# -- the fused path: protocol with a stand-in ops module -------------------------------------------
def _fake_ops(monkeypatch, result):
    calls = []

    class FakeFusedGuidedStep:
        def __init__(self, diffusion, force=False):
            self.force = force

        def __call__(self, x_t, model_output, i, conditions_per_image, method, eta, clip_denoised, generator,
                     condition_generators=None):
            calls.append(dict(i=i, method=method, eta=eta, clip=clip_denoised, force=self.force,
                              n=[len(c) for c in conditions_per_image],
                              gens=[len(g) for g in condition_generators]))
            return result(x_t, i) if result is not None else None

    import mcfast.ops.guided
    monkeypatch.setattr(mcfast.ops.guided, "FusedGuidedStep", FakeFusedGuidedStep)
    return calls


def test_auto_falls_back_to_the_reference_when_the_fused_op_declines(monkeypatch):
    calls = _fake_ops(monkeypatch, None)
    d = _diffusion("ddim25")
    A, B = _rand(1, 1, S, S, seed=1), _rand(S, S, seed=2)
    auto = ILVRGuidance([Condition(B, 4, stop_step=300)], d, generator=0, backend="auto")
    ref = ILVRGuidance([Condition(B, 4, stop_step=300)], d, generator=0, backend="reference")
    x_auto = _run(ZeroEpsModel(d), d, auto, method="ddim", eta=0.5)
    n_calls = len(calls)
    x_ref = _run(ZeroEpsModel(d), d, ref, method="ddim", eta=0.5)
    assert torch.equal(x_auto, x_ref) and auto.correction_counts == ref.correction_counts
    assert n_calls == 25 and len(calls) == 25  # the reference backend never asks the fused op
    assert calls[0] == dict(i=24, method="ddim", eta=0.5, clip=True, force=False, n=[1], gens=[1])


def test_fused_result_is_used_and_counted(monkeypatch):
    calls = _fake_ops(monkeypatch, lambda x_t, i: torch.full_like(x_t, float(i)))
    d = _diffusion("ddim25")
    guidance = ILVRGuidance([Condition(_rand(S, S), 4, stop_step=520)], d, backend="fused")
    x = _run(ZeroEpsModel(d), d, guidance)
    assert torch.equal(x, torch.zeros(1, 1, S, S)) and len(calls) == 25 and calls[-1]["force"] is True
    assert guidance.correction_counts == [[12]]


def test_fused_backend_errors_clearly_when_it_cannot_serve(monkeypatch):
    d = _diffusion("ddim25")
    cond = Condition(_rand(S, S), 4)
    _fake_ops(monkeypatch, None)
    with pytest.raises(InputError, match="backend 'fused' was requested but the fused guided step cannot serve"):
        _run(ZeroEpsModel(d), d, ILVRGuidance([cond], d, backend="fused"))
    auto = ILVRGuidance([cond], d, generator=0, backend="auto")
    reference = ILVRGuidance([cond], d, generator=0, backend="reference")
    assert torch.equal(_run(ZeroEpsModel(d), d, auto), _run(ZeroEpsModel(d), d, reference))


def test_unknown_backend_and_bad_seed_are_rejected():
    with pytest.raises(InputError, match="unknown guidance backend 'cuda'"):
        ILVRGuidance([], _diffusion("10"), backend="cuda")
    with pytest.raises(InputError, match="a seed >= 0, got -3"):
        ILVRGuidance([], _diffusion("10"), generator=-3)


def _fused_op_or_skip():
    try:
        from mcfast import ops
        from mcfast.ops.guided import FusedGuidedStep  # noqa: F401
        ops.load()
    except Exception as exc:  # not built here, or built for another torch
        pytest.skip(f"fused guided op unavailable: {exc}")


@pytest.mark.parametrize("method,var", [("ddpm", "fixed_small"), ("ddpm", "learned_range"), ("ddim", "fixed_small")])
def test_fused_backend_matches_the_reference(method, var):
    # With a sampler generator the fused op takes the same noise as the reference path, so the
    # whole guided run must agree up to float rounding.
    _fused_op_or_skip()
    d = _diffusion("ddim25", var)
    A = _rand(2, 1, S, S, seed=1)
    conds = [[Condition(_rand(S, S, seed=2), 4), Condition.on_canvas(_rand(S, S, seed=3), (6, 9, 12, 10), 2,
                                                                     stop_step=400)],
             [Condition(_rand(S, S, seed=4), 8, stop_step=200)]]
    model = ExactEpsModel(0.5 * A, d, v=0.3)
    runs = {}
    for backend in ("reference", "fused"):
        guidance = ILVRGuidance(conds, d, generator=9, backend=backend)
        runs[backend] = _run(model, d, guidance, batch=2, method=method, eta=0.7, seed=3)
        assert guidance.correction_counts == [[25, 15], [20]]
    torch.testing.assert_close(runs["fused"], runs["reference"], atol=1e-4, rtol=1e-4)

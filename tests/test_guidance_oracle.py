import math

import pytest
import torch

from mcfast.diffusion import create_diffusion
from mcfast.errors import InputError
from mcfast.guidance.conditions import Condition
from mcfast.guidance.filters import downsample, lowpass
from mcfast.guidance.oracle import active_conditions, guided_correction


@pytest.fixture(scope="module")
def diffusion():
    return create_diffusion(T=1000, schedule="linear", respacing="ddim25", model_var_type="fixed_small",
                            loss_type="simple")


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_two_conditions_follow_the_formula_from_the_same_x(diffusion):
    i = 10  # original t = 400
    x = _rand(1, 1, 32, 32, seed=1)
    full = Condition(_rand(32, 32, seed=2), 4, filter="box")
    patch = Condition.on_canvas(_rand(32, 32, seed=3), (8, 12, 12, 10), 2, filter="bicubic")
    eps1, eps2 = _randn(1, 32, 32, seed=4), _randn(1, 32, 32, seed=5)
    out = guided_correction(x, [[full, patch]], diffusion, i, noise=[[eps1, eps2]])

    abar_prev = diffusion.alphas_cumprod_prev[i]
    assert diffusion.timestep_map[i] == 400
    y1 = math.sqrt(abar_prev) * full.ref + math.sqrt(1 - abar_prev) * eps1
    y2 = math.sqrt(abar_prev) * patch.ref + math.sqrt(1 - abar_prev) * eps2
    r1 = lowpass(y1, 4, "box") - lowpass(x[0], 4, "box")
    r2 = lowpass(y2, 2, "bicubic") - lowpass(x[0], 2, "bicubic")
    expected = x[0] + r1 + patch.weight_map() * r2
    torch.testing.assert_close(out[0], expected, atol=1e-6, rtol=1e-6)
    # applying them one after the other (each from the updated x) would be a different answer
    sequential = guided_correction(guided_correction(x, [[full]], diffusion, i, noise=[[eps1]]),
                                   [[patch]], diffusion, i, noise=[[eps2]])
    assert (sequential - out).abs().max() > 1e-2


def test_last_step_uses_the_clean_reference_and_draws_nothing(diffusion):
    x = _rand(2, 1, 32, 32, seed=1)
    ref = _rand(32, 32, seed=2)
    gen = torch.Generator().manual_seed(7)
    state = gen.get_state()
    out = guided_correction(x, [[Condition(ref, 8)]] * 2, diffusion, 0, gen)
    assert torch.equal(gen.get_state(), state)
    torch.testing.assert_close(lowpass(out, 8), lowpass(ref, 8).expand(2, 1, 32, 32), atol=1e-6, rtol=0)
    torch.testing.assert_close(out - lowpass(out, 8), x - lowpass(x, 8), atol=1e-6, rtol=0)


def test_noisy_reference_has_the_forward_process_statistics(diffusion):
    # x = 0, ref = 0: the output is φ(√(1−ᾱ_prev)·ε), whose block means have std √(1−ᾱ_prev)/n.
    i, n = 3, 2
    x = torch.zeros(1, 1, 64, 64)
    out = guided_correction(x, [[Condition(torch.zeros(64, 64), n)]], diffusion, i, torch.Generator().manual_seed(0))
    blocks = downsample(out[0, 0], n)
    expected = math.sqrt(1 - diffusion.alphas_cumprod_prev[i]) / n
    assert blocks.std().item() == pytest.approx(expected, rel=0.1)
    assert abs(blocks.mean().item()) < 4 * expected / 32


def test_low_resolution_noise_matches_full_resolution_noise(diffusion):
    x = _rand(1, 1, 32, 32, seed=1)
    cond = Condition(_rand(32, 32, seed=2), 4)
    eps = _randn(1, 32, 32, seed=3)
    full = guided_correction(x, [[cond]], diffusion, 12, noise=[[eps]])
    low = guided_correction(x, [[cond]], diffusion, 12, noise=[[downsample(eps, 4)]])
    torch.testing.assert_close(full, low, atol=1e-6, rtol=0)
    with pytest.raises(InputError, match="noise for image 0 condition 0 has shape"):
        guided_correction(x, [[cond]], diffusion, 12, noise=[[torch.zeros(1, 5, 5)]])


def test_stop_step_is_inclusive_on_the_original_scale(diffusion):
    # ddim25 keeps t = 0, 40, ..., 960; index 13 is t = 520
    assert diffusion.timestep_map[13] == 520
    x = _rand(1, 1, 32, 32, seed=1)
    at = Condition(_rand(32, 32, seed=2), 4, stop_step=520)
    above = Condition(_rand(32, 32, seed=2), 4, stop_step=521)
    gen = torch.Generator().manual_seed(0)
    assert not torch.equal(guided_correction(x, [[at]], diffusion, 13, gen), x)
    assert torch.equal(guided_correction(x, [[above]], diffusion, 13, gen), x)
    assert active_conditions([[at, above], [above]], 520) == [(0, 0)]
    assert active_conditions([[at, above], [above]], 560) == [(0, 0), (0, 1), (1, 0)]


def test_each_image_gets_its_own_conditions(diffusion):
    x = _rand(3, 1, 32, 32, seed=1)
    a = Condition(_rand(32, 32, seed=2), 4)
    b = Condition(_rand(32, 32, seed=3), 8, filter="bicubic")
    out = guided_correction(x, [[a], [], [b]], diffusion, 0)
    torch.testing.assert_close(out[0], x[0] + lowpass(a.ref, 4) - lowpass(x[0], 4))
    assert torch.equal(out[1], x[1])
    torch.testing.assert_close(out[2], x[2] + lowpass(b.ref, 8, "bicubic") - lowpass(x[2], 8, "bicubic"))


def test_weight_is_zero_outside_the_patch(diffusion):
    x = _rand(1, 1, 32, 32, seed=1)
    cond = Condition.on_canvas(_rand(32, 32, seed=2), (10, 4, 9, 7), 2)
    out = guided_correction(x, [[cond]], diffusion, 20, torch.Generator().manual_seed(0))
    changed = (out - x)[0, 0].abs() > 0
    assert changed[4:11, 10:19].all() and not changed[:4].any() and not changed[11:].any()
    assert not changed[:, :10].any() and not changed[:, 19:].any()


def test_per_condition_generators_are_used(diffusion):
    x = torch.zeros(2, 1, 16, 16)
    cond = Condition(torch.zeros(16, 16), 1)
    gens = [[torch.Generator().manual_seed(1)], [torch.Generator().manual_seed(1)]]
    out = guided_correction(x, [[cond], [cond]], diffusion, 5, gens)
    torch.testing.assert_close(out[0], out[1])
    single = guided_correction(x, [[cond], [cond]], diffusion, 5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(single[0], out[0])
    assert not torch.allclose(single[1], single[0])


def test_bad_shapes_are_rejected(diffusion):
    cond = Condition(torch.zeros(16, 16), 2)
    with pytest.raises(InputError, match=r"expects samples of shape \(B, 1, H, W\)"):
        guided_correction(torch.zeros(1, 16, 16), [[cond]], diffusion, 0)
    with pytest.raises(InputError, match="conditions for 1 images but the batch has 2"):
        guided_correction(torch.zeros(2, 1, 16, 16), [[cond]], diffusion, 0)

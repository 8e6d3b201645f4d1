import math

import numpy as np
import pytest

from mcfast.diffusion.gaussian import create_diffusion
from mcfast.diffusion.schedule import get_named_beta_schedule, respaced_betas, space_timesteps
from mcfast.errors import InputError


def test_linear_schedule_scales_with_T():
    b = get_named_beta_schedule("linear", 1000)
    assert b.dtype == np.float64 and len(b) == 1000
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    b250 = get_named_beta_schedule("linear", 250)
    assert b250[0] == pytest.approx(4e-4) and b250[-1] == pytest.approx(0.08)


def test_cosine_schedule_matches_closed_form_alpha_bar():
    T = 1000
    b = get_named_beta_schedule("cosine", T)
    abar = np.cumprod(1 - b)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 10, 500, 900):
        assert abar[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert b.max() <= 0.999 and b.min() > 0


def test_unknown_schedule_names_value():
    with pytest.raises(InputError, match="quadratic"):
        get_named_beta_schedule("quadratic", 10)


@pytest.mark.parametrize("spec,count", [("1000", 1000), ("250", 250), ("ddim50", 50), ("10,20,30", 60), ("", 1000)])
def test_space_timesteps_counts(spec, count):
    kept = space_timesteps(1000, spec)
    assert len(kept) == count and min(kept) == 0 and max(kept) <= 999


def test_space_timesteps_sections_match_improved_diffusion():
    # Example from improved-diffusion's respace.py docstring: 300 steps, "10,15,20".
    kept = sorted(space_timesteps(300, "10,15,20"))
    assert len(kept) == 45
    assert kept[:10] == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    assert sorted(space_timesteps(1000, "ddim4")) == [0, 250, 500, 750]


@pytest.mark.parametrize("bad", ["fast", "ddimX", "10,,20", "2000", "ddim0", "0"])
def test_space_timesteps_rejects_bad_strings(bad):
    with pytest.raises(InputError, match=repr(bad).replace("(", r"\(")):
        space_timesteps(1000, bad)


def test_create_diffusion_rejects_unknown_respacing():
    with pytest.raises(InputError, match="'every-other'"):
        create_diffusion(100, respacing="every-other")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_respaced_alpha_bar_equals_original_at_kept_steps(schedule):
    base = get_named_beta_schedule(schedule, 1000)
    kept = space_timesteps(1000, "10,20,30")
    betas, tmap = respaced_betas(base, kept)
    np.testing.assert_allclose(np.cumprod(1 - betas), np.cumprod(1 - base)[tmap], rtol=1e-10)
    d = create_diffusion(1000, schedule, respacing="ddim25")
    full = create_diffusion(1000, schedule)
    np.testing.assert_allclose(d.alphas_cumprod, full.alphas_cumprod[d.timestep_map], rtol=1e-10)
    assert d.timestep_map.dtype == np.int64 and list(d.timestep_map) == sorted(d.timestep_map)


def test_tail_adds_evenly_spaced_steps_below_the_lowest_kept_step():
    base = space_timesteps(1000, "50")
    tailed = space_timesteps(1000, "50+tail9")
    assert base <= tailed and len(tailed) == len(base) + 9
    assert sorted(tailed - base) == [2, 4, 6, 8, 10, 12, 14, 16, 18]
    assert space_timesteps(1000, "50+tail19") == base | set(range(1, 20))


@pytest.mark.parametrize("gap", range(2, 41))
def test_tail_steps_are_distinct_and_inside_the_gap(gap):
    from mcfast.diffusion.schedule import tail_timesteps
    for count in range(1, gap):
        tail = tail_timesteps({0, gap, 2 * gap}, count)
        assert len(tail) == count and min(tail) > 0 and max(tail) < gap


@pytest.mark.parametrize("bad", ["50+tail0", "50+tail20", "50+", "50+x9", "50+tail", "ddim1000+tail1"])
def test_tail_rejects_what_does_not_fit_naming_the_value(bad):
    with pytest.raises(InputError, match="tail"):
        space_timesteps(1000, bad)


def test_tail_makes_a_chain_the_samplers_can_walk():
    from mcfast.diffusion.samplers import network_calls
    d = create_diffusion(1000, "cosine", respacing="50+tail9")
    assert d.num_timesteps == 59 and list(d.timestep_map[:3]) == [0, 2, 4]
    assert network_calls("50+tail9", 500) == network_calls("50", 500) + 9

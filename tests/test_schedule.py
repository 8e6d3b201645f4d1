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

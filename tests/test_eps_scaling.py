"""Epsilon scaling: the wrapper, its validation, its effect on a chain, recipes and the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mcfast.diffusion.eps_scaling import check_eps_scale, scale_eps
from mcfast.diffusion.gaussian import create_diffusion
from mcfast.diffusion.samplers import randn, sample
from mcfast.errors import InputError
from mcfast.synthesis.recipe import load_recipe, recipe_from_dict
from synthesis_helpers import make_tiny_run
from test_fast_samplers import SD, GaussianDataModel

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "mcfast" / "configs"


def test_scale_one_is_the_model_itself_and_other_scales_divide_only_eps():
    def fn(x, t):
        return torch.cat([x * 2.0, x + 5.0], 1)

    assert scale_eps(fn, 1.0) is fn
    x, t = torch.randn(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    out = scale_eps(fn, 1.25)(x, t)
    assert torch.allclose(out[:, :1], x * 2.0 / 1.25) and torch.equal(out[:, 1:], x + 5.0)
    eps_only = scale_eps(lambda x, t: x * 3.0, 2.0)(x, t)  # a model without variance channels
    assert eps_only.shape == x.shape and torch.allclose(eps_only, x * 1.5)


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf])
def test_bad_scales_are_refused_by_name(bad):
    with pytest.raises(InputError, match="eps_scale"):
        check_eps_scale(bad)
    with pytest.raises(InputError, match="sampler.eps_scale"):
        recipe_from_dict({"recipe": {"modality": "ct", "image_size": 64}, "sampler": {"eps_scale": bad}})


def test_a_larger_scale_removes_less_noise_along_the_chain():
    # With the exact predictor of Gaussian data the chain ends at the data's spread; dividing ε by λ > 1
    # leaves noise in every step, so the samples spread wider, more so for a larger λ.
    d = create_diffusion(respacing="25")
    model = GaussianDataModel(d)
    spreads = []
    for scale in (1.0, 1.02, 1.05):
        gens = [torch.Generator().manual_seed(k) for k in range(4)]
        x_top = randn((4, 1, 16, 16), gens, "cpu")
        out = sample(scale_eps(model, scale), d, x_top.shape, noise=x_top, clip_denoised=False, progress=False,
                     generator=[torch.Generator().manual_seed(10 + k) for k in range(4)])
        spreads.append(float(out.std()))
    assert abs(spreads[0] - SD) < 0.03
    assert spreads[0] < spreads[1] < spreads[2]


def test_recipe_cli_and_meta_carry_the_scale(tmp_path):
    from mcfast.cli import main
    from mcfast.synthesis.recipe import use_fast_sampler

    r = recipe_from_dict({"recipe": {"modality": "ct", "image_size": 64}, "sampler": {"eps_scale": 1.04}})
    assert r.sampler.eps_scale == 1.04
    assert use_fast_sampler(r).sampler.eps_scale == 1.0  # the fast mode was picked without it
    run = make_tiny_run(tmp_path / "run", 64, "ct", live_output=True)
    args = ["synthesize", "--ckpt", str(run), "--recipe", str(CONFIGS / "demo_ct.toml"), "--n", "1",
            "--steps", "4", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--out", str(tmp_path / "scaled"), "--eps-scale", "1.05"]) == 0
    plain, scaled = (json.loads((tmp_path / f / "000000" / "meta.json").read_text()) for f in ("plain", "scaled"))
    assert plain["eps_scale"] == 1.0 and scaled["eps_scale"] == 1.05
    a, b = (np.load(tmp_path / f / "000000" / "image.npy") for f in ("plain", "scaled"))
    assert np.abs(a - b).max() > 1e-4  # the scale reaches the sampler
    assert main([*args, "--out", str(tmp_path / "bad"), "--eps-scale", "0"]) != 0


@pytest.mark.parametrize("study_name, recipes", [
    ("eps_scale_ct", ("lung_ct_real512.toml", "lung_ct_phantom512.toml")),
    ("eps_scale_mg", ("mammo_mias512.toml", "mammo_phantom512.toml")),
])
def test_recipes_carry_the_calibrated_scale_unless_the_study_withholds_it(study_name, recipes):
    import tomllib

    study = json.loads((REPO / "docs" / "results" / f"{study_name}.json").read_text())
    config = tomllib.loads((REPO / "configs" / f"{study_name}.toml").read_text())
    assert study["applied"] == config["calibration"].get("apply", True)
    assert study["config"]["report"]["name"] == study_name and study["modality"] == config["data"]["modality"]
    expected = study["pick"] if study["applied"] else 1.0
    assert study["applied"] or study["not_applied_because"]
    for recipe in recipes:
        assert load_recipe(REPO / "configs" / recipe).sampler.eps_scale == pytest.approx(expected), recipe

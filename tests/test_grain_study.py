"""The grain study's rule (scripts/grain_study.py) and the mammography recipes carrying its pick."""
from __future__ import annotations

import importlib.util
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from mcfast.synthesis.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
MG_RECIPES = ("mammo_mias512.toml", "mammo_phantom512.toml")


def _grain_study():
    spec = importlib.util.spec_from_file_location("grain_study", REPO / "scripts" / "grain_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _study(name: str) -> tuple[dict, dict, list[dict]]:
    """A study's results, its config and its grid rows (row 0, the real-vs-real floor, left out), after
    checking that the recorded pick is the one the config's rule makes from those rows."""
    study = json.loads((REPO / "docs" / "results" / f"{name}.json").read_text())
    config = tomllib.loads((REPO / "configs" / f"{name}.toml").read_text())
    rows = study["rows"][1:]
    assert study["pick"] == _grain_study().pick(rows, config["synthesis"])
    return study, config, rows


def _row(below: int, auc: float) -> dict:
    return {"deterministic_below": below, "eps_scale": 1.0, "hand_feature_auc": auc}


def _two_tests(below: int, hand: float, cnn: float) -> dict:
    return {"deterministic_below": below, "eps_scale": 1.0, "hand_feature_auc": hand, "patch_cnn_auc": cnn}


def test_pick_is_the_smallest_auc_rounded_ties_to_the_earlier_entry():
    def pick(rows):
        return _grain_study().pick(rows, {"pick_by": "hand_feature_auc"})

    assert pick([_row(0, 0.91), _row(100, 0.84), _row(200, 0.88)])["deterministic_below"] == 100
    # 0.8449 and 0.8401 both round to 0.84: the earlier grid entry wins
    assert pick([_row(0, 0.90), _row(100, 0.8449), _row(200, 0.8401)])["deterministic_below"] == 100
    assert pick([_row(0, 0.70), _row(100, 0.71)]) == {"deterministic_below": 0, "eps_scale": 1.0}


def test_patch_cnn_rule_and_unknown_rules():
    pick, row = _grain_study().pick, _two_tests
    rows = [row(0, 0.81, 0.89), row(250, 0.87, 0.58), row(300, 0.84, 0.65)]
    assert pick(rows, {"pick_by": "patch_cnn_auc"})["deterministic_below"] == 250
    assert pick(rows, {"pick_by": "hand_feature_auc"})["deterministic_below"] == 0
    with pytest.raises(SystemExit, match="pick_by"):
        pick(rows, {"pick_by": "fid"})


def test_worse_auc_rule_brings_down_the_larger_of_the_two_tests():
    pick, row = _grain_study().pick, _two_tests
    # 250 has the best patch CNN but the worst hand test; 150 is the best on the worse of its two
    rows = [row(0, 0.82, 0.60), row(150, 0.66, 0.64), row(250, 0.80, 0.52)]
    assert pick(rows, {"pick_by": "worse_auc"})["deterministic_below"] == 150
    assert pick(rows, {"pick_by": "patch_cnn_auc"})["deterministic_below"] == 250
    # worse AUCs 0.6649 and 0.6551 both round to 0.66: the earlier grid entry wins
    rows = [row(0, 0.6649, 0.50), row(150, 0.50, 0.6551)]
    assert pick(rows, {"pick_by": "worse_auc"})["deterministic_below"] == 0


@pytest.mark.parametrize("study_name, recipes", [
    ("grain_mg", MG_RECIPES),
    ("grain_ct", ("lung_ct_real512.toml",)),  # the phantom recipe's tail: phantom_noise_ct
])
def test_the_recipes_carry_the_study_pick(study_name, recipes):
    study, config, rows = _study(study_name)
    grid = [tuple(pair) for pair in config["synthesis"]["grid"]]
    assert [(r["deterministic_below"], r["eps_scale"]) for r in rows] == grid
    for recipe in recipes:
        sampler = load_recipe(REPO / "configs" / recipe).sampler
        assert sampler.deterministic_below == study["pick"]["deterministic_below"], recipe
        assert sampler.eps_scale == pytest.approx(study["pick"]["eps_scale"]), recipe


def test_the_real_slice_ct_recipe_carries_the_tail_study_pick():
    study, config, rows = _study("tail_ct")
    assert [{"steps": r["steps"]} for r in rows] == config["synthesis"]["grid"]
    sampler = load_recipe(REPO / "configs" / "lung_ct_real512.toml").sampler
    assert sampler.steps == study["pick"]["steps"]
    assert (sampler.deterministic_below, sampler.eps_scale) == (study["pick"]["deterministic_below"],
                                                                study["pick"]["eps_scale"])


def test_the_phantom_ct_recipe_carries_the_phantom_guidance_pick():
    study, config, rows = _study("phantom_guidance_ct")
    anatomy = load_recipe(REPO / "configs" / "lung_ct_phantom512.toml").anatomy
    # a silent entry is the recipe's own: every row states the factor and stop step it ran with
    assert [(r["factor"], r["stop_step"]) for r in rows] == [
        (entry.get("factor", anatomy.factor), entry.get("stop_step", anatomy.stop_step))
        for entry in config["synthesis"]["grid"]]
    assert (anatomy.factor, anatomy.stop_step) == (study["pick"]["factor"], study["pick"]["stop_step"])


def test_the_phantom_ct_recipe_carries_the_phantom_air_steps_pick():
    study, config, rows = _study("phantom_air_steps_ct")
    assert [(r["steps"], r["outside_factor"], r["outside_stop_step"]) for r in rows] == [
        ("50", 0, 0), ("50", 2, 20), ("100", 2, 20)]
    assert len(config["synthesis"]["grid"]) == len(rows) and config["synthesis"]["grid"][0] == {}
    recipe = load_recipe(REPO / "configs" / "lung_ct_phantom512.toml")
    assert (recipe.sampler.steps, recipe.anatomy.outside_factor, recipe.anatomy.outside_stop_step) == (
        study["pick"]["steps"], study["pick"]["outside_factor"], study["pick"]["outside_stop_step"])
    assert "reverted" in study["config"]["report"]["title"]  # its rows measured a phantom no longer drawn


def test_the_phantom_ct_recipe_carries_the_phantom_fine_pick():
    study, config, rows = _study("phantom_fine_ct")
    assert [(r["factor"], r["outside_factor"], r["outside_stop_step"]) for r in rows] == [
        (entry["factor"], entry["outside_factor"], entry["outside_stop_step"]) for entry in config["synthesis"]["grid"]]
    anatomy = load_recipe(REPO / "configs" / "lung_ct_phantom512.toml").anatomy
    assert (anatomy.factor, anatomy.outside_factor, anatomy.outside_stop_step) == (
        study["pick"]["factor"], study["pick"]["outside_factor"], study["pick"]["outside_stop_step"])


def test_the_phantom_ct_recipes_carry_the_phantom_body_pick():
    study, config, rows = _study("phantom_body_ct")
    assert [(r["phantom_wall"], r["phantom_blood_hu"]) for r in rows] == [
        (entry["phantom_wall"], entry["phantom_blood_hu"]) for entry in config["synthesis"]["grid"]]
    for recipe in (REPO / "configs" / "lung_ct_phantom512.toml", REPO / "mcfast" / "configs" / "demo_ct_real.toml"):
        anatomy = load_recipe(recipe).anatomy
        assert (anatomy.phantom_wall, list(anatomy.phantom_blood_hu)) == (
            study["pick"]["phantom_wall"], study["pick"]["phantom_blood_hu"])


def test_the_phantom_ct_recipes_carry_the_phantom_start_pick():
    study, config, rows = _study("phantom_start_ct")
    assert [r["start_step"] for r in rows] == [entry["start_step"] for entry in config["synthesis"]["grid"]]
    for recipe in (REPO / "configs" / "lung_ct_phantom512.toml", REPO / "mcfast" / "configs" / "demo_ct_real.toml"):
        assert load_recipe(recipe).sampler.start_step == study["pick"]["start_step"], recipe


def test_the_phantom_ct_study_pick_is_withheld_with_its_reason():
    study, config, rows = _study("grain_ct_phantom")
    assert [[r["deterministic_below"], r["eps_scale"]] for r in rows] == config["synthesis"]["grid"]
    assert config["synthesis"]["apply"] is False and config["synthesis"]["not_applied_because"]
    assert "Not applied" in (REPO / "docs" / "results" / "grain_ct_phantom.md").read_text()


def test_the_phantom_ct_recipes_carry_the_phantom_noise_pick():
    """The phantom recipes' sampler tail follows phantom_noise_ct (fat and muscle pixel noise), not grain_ct."""
    study, config, rows = _study("phantom_noise_ct")
    assert [[r["deterministic_below"], r["eps_scale"]] for r in rows] == config["synthesis"]["grid"]
    assert config["synthesis"]["pick_by"] == "tissue_noise" and "noise_hu" in rows[0]
    for recipe in (REPO / "configs" / "lung_ct_phantom512.toml", REPO / "mcfast" / "configs" / "demo_ct_real.toml"):
        sampler = load_recipe(recipe).sampler
        assert (sampler.deterministic_below, sampler.eps_scale) == (
            study["pick"]["deterministic_below"], study["pick"]["eps_scale"]), recipe


@pytest.mark.parametrize("study_name, recipe_name", [("real_guidance_ct", "lung_ct_real512.toml"),
                                                     ("real_guidance_mg", "mammo_mias512.toml")])
def test_the_real_anatomy_recipes_carry_the_real_guidance_pick(study_name, recipe_name):
    """The anatomy's factor, stop step and filter and the tail's fresh noise are the study's pick (every row
    states the settings it ran with, the recipe's own where its grid entry is silent)."""
    study, config, rows = _study(study_name)
    recipe = load_recipe(REPO / "configs" / recipe_name)
    a = recipe.anatomy
    keys = ("factor", "stop_step", "filter", "deterministic_below")
    own = {"factor": a.factor, "stop_step": a.stop_step, "filter": a.filter,
           "deterministic_below": recipe.sampler.deterministic_below}
    assert [tuple(r[k] for k in keys) for r in rows] == [
        tuple(entry.get(k, own[k]) for k in keys) for entry in config["synthesis"]["grid"]]
    assert tuple(own[k] for k in keys) == tuple(study["pick"][k] for k in keys)


def test_the_ct_recipe_carries_the_outside_study_pick():
    study, config, rows = _study("outside_ct")
    assert [(r["outside_factor"], r["outside_stop_step"]) for r in rows] == [
        (entry["outside_factor"], entry["outside_stop_step"]) for entry in config["synthesis"]["grid"]]
    assert config["synthesis"]["apply"] is True and "not_applied_because" not in study["config"]["synthesis"]
    anatomy = load_recipe(REPO / "configs" / "lung_ct_real512.toml").anatomy
    assert (anatomy.outside_factor, anatomy.outside_stop_step) == (study["pick"]["outside_factor"],
                                                                   study["pick"]["outside_stop_step"])
    assert "Not applied" not in (REPO / "docs" / "results" / "outside_ct.md").read_text()


def test_the_film_recipe_carries_the_edge_study_pick():
    study, config, rows = _study("edge_mg")
    assert [[r["deterministic_below"], r["eps_scale"], r["padding_band"]] for r in rows] == config["synthesis"]["grid"]
    assert config["synthesis"]["apply"] is True and "not_applied_because" not in study["config"]["synthesis"]
    # the condition fixed before the re-run: the pick's grain inside the breast within 1.25x the recipe's
    picked = next(r for r in rows if r["padding_band"] == study["pick"]["padding_band"])
    assert picked["interior_high"] <= 1.25 * rows[0]["interior_high"]
    anatomy = load_recipe(REPO / "configs" / "mammo_mias512.toml").anatomy
    assert anatomy.padding_band == study["pick"]["padding_band"] and anatomy.keep_padding
    assert "Not applied" not in (REPO / "docs" / "results" / "edge_mg.md").read_text()


def test_grid_tables_take_the_recipes_own_settings_where_they_are_silent(tmp_path):
    study = _grain_study()
    cfg = {"data": {"recipe": "configs/lung_ct_real512.toml"},
           "synthesis": {"grid": [{}, {"steps": "50+tail9"}, [0, 1.02], {"deterministic_below": 0, "padding_band": 3},
                                  {"factor": 16, "stop_step": 400}, {"checkpoint": "mcfast/assets/ct_asinh"}]}}
    recipe = load_recipe(REPO / "configs" / "lung_ct_real512.toml").sampler
    entries = study.grid_entries(cfg)
    assert entries[0] == {"deterministic_below": recipe.deterministic_below, "eps_scale": recipe.eps_scale,
                          "padding_band": None, "steps": None, "start_step": None, "factor": None, "stop_step": None,
                          "filter": None, "outside_factor": None, "outside_stop_step": None, "phantom_wall": None,
                          "phantom_blood_hu": None, "sigma_scale": None, "checkpoint": None}
    assert entries[1]["steps"] == "50+tail9" and entries[2]["eps_scale"] == 1.02
    assert entries[3]["deterministic_below"] == 0 and entries[3]["padding_band"] == 3
    folders = [study.set_folder(tmp_path, e).name for e in entries]
    assert entries[4]["factor"] == 16 and entries[4]["stop_step"] == 400
    assert len(set(folders)) == 6  # every entry its own set
    assert folders[5].endswith("_model_ct_asinh")  # an entry's weights: the folder's name, not its path
    assert folders[2] == "below_0_eps_1.02"  # the list form keeps the folders of earlier studies
    cfg["synthesis"]["grid"] = [{"stepz": "50"}]
    with pytest.raises(SystemExit, match="stepz"):
        study.grid_entries(cfg)


def test_the_pick_names_the_respacing_when_the_grid_varies_it():
    rows = [dict(_two_tests(250, 0.9, 0.6), steps="50"), dict(_two_tests(250, 0.7, 0.6), steps="50+tail9")]
    assert _grain_study().pick(rows, {"pick_by": "worse_auc"}) == {"deterministic_below": 250, "eps_scale": 1.0,
                                                                   "steps": "50+tail9"}


def test_the_1024_film_recipe_is_the_512_recipe_scaled():
    """configs/mammo_mias1024.toml is the 512² film recipe with every pixel setting doubled (what the realism
    reports' scaled_recipe does), reading the same split prepared at 1024²; only the batch size differs."""
    from mcfast.evaluate.realism_sets import scaled_recipe

    native = load_recipe(REPO / "configs" / "mammo_mias1024.toml")
    scaled = scaled_recipe(REPO / "configs" / "mammo_mias512.toml", 1024)
    assert native.anatomy.path == scaled.anatomy.path.replace("mg_mias/", "mg_mias1024/")
    assert [p.path for p in native.pathology] == [p.path.replace("mg_mias/", "mg_mias1024/") for p in scaled.pathology]
    native.anatomy.path = scaled.anatomy.path
    for a, b in zip(native.pathology, scaled.pathology):
        a.path = b.path
    assert native.sampler.batch_size == 1
    native.sampler.batch_size = scaled.sampler.batch_size
    native.source = scaled.source
    assert native == scaled


def test_grid_tables_take_phantom_settings():
    """A study can vary the CT phantom's wall and blood pool; each entry gets its own set folder."""
    study = _grain_study()
    cfg = {"data": {"recipe": "configs/lung_ct_phantom512.toml"},
           "synthesis": {"grid": [{"phantom_wall": "ring", "phantom_blood_hu": [40, 40]},
                                  {"phantom_wall": "muscles", "phantom_blood_hu": [40, 250]}]}}
    entries = study.grid_entries(cfg)
    assert entries[1]["phantom_wall"] == "muscles" and entries[1]["phantom_blood_hu"] == [40, 250]
    below = load_recipe(REPO / "configs" / "lung_ct_phantom512.toml").sampler.deterministic_below  # the recipe's
    assert [study.set_folder(Path("x"), e).name for e in entries] == [
        f"below_{below}_eps_1.00_wall_ring_blood_40_40", f"below_{below}_eps_1.00_wall_muscles_blood_40_250"]


def test_pick_respects_the_seam_and_contrast_conditions():
    """max_seam / min_contrast_fraction take entries out of the pick; with none left, the first entry stays."""
    pick = _grain_study().pick

    def row(scale, hand, cnn, seam, contrast):
        return {"deterministic_below": 250, "eps_scale": 1.0, "sigma_scale": scale, "hand_feature_auc": hand,
                "patch_cnn_auc": cnn, "seam": seam, "mass_contrast": contrast}

    rows = [row(0.5, 0.80, 0.70, 1.45, 0.07), row(0.4, 0.78, 0.69, 1.15, 0.05), row(0.3, 0.70, 0.66, 1.02, 0.03)]
    rule = {"pick_by": "worse_auc", "max_seam": 1.2, "min_contrast_fraction": 0.5}
    assert pick(rows, {"pick_by": "worse_auc"})["sigma_scale"] == 0.3
    assert pick(rows, rule)["sigma_scale"] == 0.4  # 0.3 keeps 0.03 / 0.07 of the masses' contrast: too faint
    assert pick(rows, {**rule, "max_seam": 1.1})["sigma_scale"] == 0.5  # no entry qualifies: the recipe stays


def test_tissue_noise_rule_ranks_by_the_fat_and_muscle_noise_within_an_auc_rise():
    """When both tests are saturated the "tissue_noise" rule ranks entries by how far their fat and muscle
    pixel noise is from the reference's (the larger |log ratio|); max_auc_rise keeps out an entry whose
    worse AUC rose more than that above the recipe's."""
    study = _grain_study()
    reference = {"lung": 20.0, "fat": 10.0, "soft_tissue": 10.0}

    def row(below, hand, cnn, fat, soft):
        # what noise_scores computes from a set's images, here from given noise levels
        ratio = max(abs(math.log(fat / reference["fat"])), abs(math.log(soft / reference["soft_tissue"])))
        return {"deterministic_below": below, "eps_scale": 1.0, "hand_feature_auc": hand, "patch_cnn_auc": cnn,
                "noise_log_ratio": ratio}

    rows = [row(250, 1.0, 0.80, 5.0, 5.0), row(150, 1.0, 0.85, 7.0, 12.0), row(0, 1.0, 0.90, 9.0, 11.0)]
    assert study.pick(rows, {"pick_by": "worse_auc"})["deterministic_below"] == 250  # saturated: the tie keeps it
    assert study.pick(rows, {"pick_by": "tissue_noise"})["deterministic_below"] == 0
    rows[2]["patch_cnn_auc"] = 0.70  # the AUC guard only matters when the hand test is below 1
    for r in rows:
        r["hand_feature_auc"] = 0.75
    rows[2]["hand_feature_auc"] = 0.95  # 0.15 above the recipe entry's worse AUC (0.80)
    assert study.pick(rows, {"pick_by": "tissue_noise", "max_auc_rise": 0.10})["deterministic_below"] == 150
    assert study.pick(rows, {"pick_by": "tissue_noise", "max_auc_rise": 0.15})["deterministic_below"] == 0


def test_noise_scores_measure_a_set_against_the_reference_noise():
    from mcfast.io.windows import hu_to_model

    study = _grain_study()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256] / 256 - 0.5
    hu = np.full((256, 256), -1000.0)
    hu[(xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1] = -100.0
    hu[(xx / 0.30) ** 2 + (yy / 0.22) ** 2 < 1] = 40.0
    hu[((np.abs(xx) - 0.12) / 0.08) ** 2 + (yy / 0.12) ** 2 < 1] = -800.0
    body = hu > -500
    images = np.stack([hu_to_model(hu + np.where(body, std * rng.normal(size=hu.shape), 0.0)) for std in (10, 10)])
    reference = study.tissue_noise_hu(images.astype(np.float32))["noise_hu"]
    half = study.noise_scores(np.stack([hu_to_model(hu + np.where(body, 5 * rng.normal(size=hu.shape), 0.0))])
                              .astype(np.float32), reference)
    assert set(half["noise_hu"]) == {"lung", "fat", "soft_tissue"}
    assert half["noise_log_ratio"] == pytest.approx(np.log(2), abs=0.1)


def test_the_film_recipe_carries_the_seam_study_pick():
    study, config, rows = _study("seam_mg")
    assert [r["sigma_scale"] for r in rows] == [e["sigma_scale"] for e in config["synthesis"]["grid"]]
    picked = next(r for r in rows if r["sigma_scale"] == study["pick"]["sigma_scale"])
    # the conditions the rule states: no seam, and the masses keep half their contrast
    assert picked["seam"] <= config["synthesis"]["max_seam"]
    assert picked["mass_contrast"] >= config["synthesis"]["min_contrast_fraction"] * rows[0]["mass_contrast"]
    for name in ("mammo_mias512.toml", "mammo_mias1024.toml"):
        assert all(p.sigma_scale == study["pick"]["sigma_scale"] for p in load_recipe(REPO / "configs" / name).pathology)

"""Mammography realism pieces: one framing for real and synthetic images, the breast-intensity distance,
the shared report helpers (downsampled sets, targets), the woman split of the prepared MIAS data."""
import json
from pathlib import Path

import numpy as np
import pytest

from mcfast.anatomy.breast_phantom import breast_phantom
from mcfast.evaluate.realism_sets import downsampled_sets, floor_subset, resize_masks, scaled_recipe, two_sample_targets
from mcfast.evaluate.two_sample import breast_intensity_distance
from mcfast.io.mammo import frame_model_images, prepare_mammogram

pytestmark = pytest.mark.usefixtures("one_thread")
MG_DATA = Path(__file__).resolve().parents[1] / "data" / "mg_mias"


def _framed_phantom(seed: int, size: int = 128) -> np.ndarray:
    framed, _, _ = prepare_mammogram(breast_phantom(size, seed), size)
    return 2.0 * framed - 1.0


def test_framing_a_framed_image_changes_almost_nothing_and_blanks_outside():
    film = _framed_phantom(1)
    noisy = film.copy()
    outside = film <= -1.0 + 1e-6
    rng = np.random.default_rng(0)
    noisy[outside] = -1.0 + rng.uniform(0, 0.02, outside.sum())  # what a model leaves in the padding
    mask = np.zeros(film.shape, bool)
    mask[60:70, 30:40] = True
    framed, framed_mask = frame_model_images(noisy[None], mask[None])
    inside = ~outside
    assert np.abs(framed[0][inside] - film[inside]).mean() < 0.02
    assert (framed[0][outside] <= -1.0 + 1e-6).mean() > 0.97       # the padding is background again
    assert abs(int(framed_mask[0].sum()) - int(mask.sum())) <= 0.1 * mask.sum()


def test_real_and_synthetic_go_through_the_same_function():
    # A film from the loader's framing and the same image reframed for scoring agree: one framing.
    film = _framed_phantom(2)
    again, _ = frame_model_images(film[None])
    assert np.abs(again[0] - film).mean() < 0.01


def test_breast_intensity_distance_is_zero_for_one_set_and_sees_a_shift():
    films = np.stack([_framed_phantom(s) for s in range(3)])
    same = breast_intensity_distance(films, films)
    assert same["wasserstein"] < 1e-9
    brighter = np.where(films > -1.0 + 1e-6, np.clip(films + 0.2, -1, 1), films)  # +0.1 in [0, 1] units
    shifted = breast_intensity_distance(films, brighter)
    assert 0.07 < shifted["wasserstein"] < 0.11
    assert shifted["median_other"] > shifted["median_real"]


def test_downsampled_sets_and_masks():
    cfg = {"synthesis": {"sizes": [256, 512], "downsample_from": 512,
                         "recipes": {"real": "a.toml", "phantom": "b.toml"}}}
    assert downsampled_sets(cfg) == {"real_512to256": ("real_512", 256), "phantom_512to256": ("phantom_512", 256)}
    assert downsampled_sets({"synthesis": {"sizes": [256], "recipes": {}}}) == {}
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 2:6, 2:6] = True
    small = resize_masks(masks, 4)
    assert small.shape == (1, 4, 4) and small[0].sum() == 4 and small[0, 1:3, 1:3].all()


def test_scaled_recipe_scales_pixel_settings_with_the_image(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[recipe]\nmodality = "mg"\nimage_size = 512\n[anatomy]\nfactor = 8\nkeep_padding = true\n'
                      'padding_band = 4\n[[pathology]]\nsize = [40, 60]\nfactor = 2\n')
    r = scaled_recipe(recipe, 256)
    assert (r.image_size, r.anatomy.factor, r.anatomy.padding_band) == (256, 4, 2)
    assert (r.pathology[0].size, r.pathology[0].factor) == ((20, 30), 1)
    assert scaled_recipe(recipe, 512).anatomy.padding_band == 4


def test_targets_use_the_anatomy_margin():
    floor = {"patch_cnn": {"auc": 0.5}, "hand_features": {"auc": 0.5}}
    r = {"patch_cnn": {"auc": 0.62}, "hand_features": {"auc": 0.55}, "spectrum_ratio": {"mid": 1.1, "high": 0.7},
         "memorization": {"threshold": 0.95, "rate_above_threshold": 0.0}}
    real, phantom = two_sample_targets(floor, r, "real"), two_sample_targets(floor, r, "phantom")
    assert real["patch-CNN AUC <= floor + 0.10"] is False and phantom["patch-CNN AUC <= floor + 0.15"] is True
    assert real["spectrum mid/high within 20 %"] is False and real["<= 2 % NCC > 0.95"] is True


def test_floor_subset_spreads_over_women():
    women = ["w1"] * 5 + ["w2"] * 5 + ["w3"]
    picked = floor_subset(women, 3, seed=0)
    assert sorted(women[i] for i in picked) == ["w1", "w2", "w3"]


@pytest.mark.data
@pytest.mark.skipif(not (MG_DATA / "val" / "manifest.json").is_file(),
                    reason="data/mg_mias absent (python scripts/prepare_real.py --config configs/mg_mias_data.toml)")
def test_prepared_mias_split_keeps_each_woman_on_one_side():
    sides = {}
    for split in ("train", "val"):
        items = json.loads((MG_DATA / split / "manifest.json").read_text())["items"]
        for it in items:
            number = int(Path(it["source"]).stem[3:])
            assert it["patient"] == f"woman{(number + 1) // 2:03d}"  # mdb2k-1 and mdb2k are one woman
            sides.setdefault(it["patient"], set()).add(split)
    assert all(len(s) == 1 for s in sides.values())
    val_women = [w for w, s in sides.items() if s == {"val"}]
    assert len(val_women) >= 0.2 * len(sides)


def test_edge_profile_tells_a_step_from_a_ramp():
    from mcfast.evaluate.tissue import edge_profile

    img = np.full((64, 64), -1.0, np.float32)
    img[:, 20:] = 0.2  # a step: tissue at full level from the first pixel beside the background
    ramp = img.copy()
    for k, v in enumerate((-0.8, -0.5, -0.2, 0.0)):
        ramp[:, 20 + k] = v  # a 4-pixel ramp up to the same level
    assert edge_profile(img[None], depth=5) == pytest.approx([0.2] * 5)
    assert edge_profile(ramp[None], depth=5) == pytest.approx([-0.8, -0.5, -0.2, 0.0, 0.2])
    # pooled over a set, NaN where no image reaches (no background at all)
    tissue_only = np.zeros((1, 64, 64), np.float32)
    assert np.isnan(edge_profile(tissue_only, depth=2)).all()
    with pytest.raises(Exception, match="depth"):
        edge_profile(img[None], depth=0)

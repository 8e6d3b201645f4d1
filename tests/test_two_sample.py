"""Two-sample realism tests (patch CNN, hand features), spectra and CT tissue HU medians."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from mcfast.errors import InputError
from mcfast.evaluate import two_sample as ts
from mcfast.io.windows import hu_to_model

FAST_CNN = dict(crop=24, crops_per_image=32, folds=3, epochs=3, n_boot=200)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread


def _fields(seed: int, n: int = 24, size: int = 64, noise: float = 0.0) -> np.ndarray:
    """Smooth random fields (Gaussian-blurred white noise, std ~0.3), optionally plus white noise."""
    rng = np.random.default_rng(seed)
    x = np.stack([gaussian_filter(v, 2.0, mode="wrap") for v in rng.normal(size=(n, size, size))])
    x = x / x.std() * 0.3
    if noise:
        x = x + rng.normal(size=x.shape) * noise
    return np.clip(x, -1, 1).astype(np.float32)


# --------------------------------------------------------------------------- (a), (b), (d)
def test_same_process_gives_chance_auc():
    a, b = _fields(0), _fields(1)
    cnn = ts.patch_cnn_test(a, b, **FAST_CNN)
    hand = ts.hand_feature_test(a, b, folds=3, n_boot=200)
    for res in (cnn, hand):
        assert 0.2 <= res["auc"] <= 0.8, res["auc"]
        assert res["auc_lo"] <= res["auc"] <= res["auc_hi"]
        assert res["n_a"] == 24 and res["n_b"] == 24 and res["folds"] == 3
    assert {"crop", "crops_per_image", "epochs"} <= cnn.keys() and cnn["crop"] == 24


def test_high_frequency_noise_is_detected():
    a, b = _fields(0), _fields(1, noise=0.05)
    cnn = ts.patch_cnn_test(a, b, **FAST_CNN)
    hand = ts.hand_feature_test(a, b, folds=3, n_boot=200)
    assert cnn["auc"] > 0.9, cnn["auc"]
    assert hand["auc"] > 0.9, hand["auc"]
    # the noisy set is b (label 1): its out-of-fold scores are the higher ones
    assert np.mean(cnn["scores_b"]) > np.mean(cnn["scores_a"])


def test_group_aucs_name_the_family_that_differs():
    """A brightness offset changes the intensity histogram and nothing the gradient sees; added white
    noise changes the spectrum's high bands. Each shows up in its own family's AUC."""
    a = _fields(0)
    brighter = np.clip(_fields(1) * 0.5 + 0.15, -1, 1)  # scaled down so the offset never clips
    res = ts.hand_feature_test(a * 0.5, brighter, folds=3, n_boot=50)
    assert set(res["group_auc"]) == {"intensity", "spectrum", "gradient"}
    assert res["group_auc"]["intensity"] > 0.9, res["group_auc"]
    assert res["group_auc"]["gradient"] < 0.8, res["group_auc"]
    noisy = ts.hand_feature_test(a, _fields(1, noise=0.05), folds=3, n_boot=50)
    assert noisy["group_auc"]["spectrum"] > 0.9, noisy["group_auc"]


def test_same_seed_same_result_and_seed_matters():
    a, b = _fields(2, n=12), _fields(3, n=12, noise=0.02)
    kw = dict(FAST_CNN, folds=2, epochs=1, crops_per_image=8)
    r1, r2 = ts.patch_cnn_test(a, b, seed=5, **kw), ts.patch_cnn_test(a, b, seed=5, **kw)
    assert r1["auc"] == r2["auc"] and r1["scores_a"] == r2["scores_a"]
    assert ts.patch_cnn_test(a, b, seed=6, **kw)["scores_a"] != r1["scores_a"]
    h1, h2 = ts.hand_feature_test(a, b, folds=2, seed=5), ts.hand_feature_test(a, b, folds=2, seed=5)
    assert h1["auc"] == h2["auc"] and h1["auc_lo"] == h2["auc_lo"]


def test_constant_background_crops_are_skipped():
    img = np.full((2, 32, 32), -1.0, np.float32)
    img[:, 20:, 20:] = np.random.default_rng(0).normal(size=(2, 12, 12)) * 0.1  # texture in one corner only
    valid = ts._valid_positions(img, 8, 1e-3)
    crops = ts._sample_crops(img, valid, np.arange(2), 50, 8, np.random.default_rng(0))
    assert crops.shape == (100, 8, 8)
    assert (crops.reshape(100, -1).std(1) >= 1e-3).all()
    flat = np.full((1, 32, 32), 0.5, np.float32)  # nothing but background: fall back to any position
    assert ts._sample_crops(flat, ts._valid_positions(flat, 8, 1e-3), np.arange(1), 4, 8,
                            np.random.default_rng(0)).shape == (4, 8, 8)


# --------------------------------------------------------------------------- (c) folds
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_grouped_folds_keep_groups_on_one_side(seed):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(30, int), np.ones(26, int)]
    groups = np.r_[rng.integers(0, 9, 30), 100 + rng.integers(0, 8, 26)].astype(object)
    groups[:3] = 200  # one patient in both sets
    groups[30:32] = 200
    folds = ts.grouped_folds(labels, groups, 4, seed)
    assert len(folds) == 4
    tested = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(tested), np.arange(labels.size))  # every item tested exactly once
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert set(labels[test]) == {0, 1} and set(labels[train]) == {0, 1}


def test_grouped_folds_by_image_are_balanced_and_too_few_groups_raise():
    labels = np.r_[np.zeros(10, int), np.ones(10, int)]
    folds = ts.grouped_folds(labels, np.arange(20), 5, 0)
    for _, test in folds:
        assert np.bincount(labels[test]).tolist() == [2, 2]
    with pytest.raises(InputError, match="at least 5 groups with label 1"):
        ts.grouped_folds(labels, np.r_[np.arange(10), np.full(10, 99)], 5, 0)


def test_patient_groups_are_passed_through():
    a, b = _fields(4, n=12), _fields(5, n=12)
    res = ts.hand_feature_test(a, b, folds=3, groups_a=np.repeat(np.arange(6), 2),
                               groups_b=np.repeat(np.arange(10, 16), 2))
    assert 0 <= res["auc"] <= 1
    with pytest.raises(InputError, match="groups_b has 3 entries"):
        ts.hand_feature_test(a, b, folds=3, groups_a=np.arange(12), groups_b=[1, 2, 3])


# --------------------------------------------------------------------------- (e) spectra
def test_white_noise_spectrum_is_flat_and_smooth_field_decreases():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(16, 256, 256)).astype(np.float32) * 0.1
    freqs, power = ts.radial_power_spectrum(noise, 24)
    assert freqs.shape == (24,) and power.shape == (16, 24)
    assert freqs[0] > 1 / 256 and freqs[-1] < 0.5 and np.all(np.diff(freqs) > 0)
    mean = power.mean(0)
    assert mean.max() / mean.min() < 1.5
    assert mean.mean() == pytest.approx(0.01, rel=0.05)  # size-normalised: power = variance
    _, p512 = ts.radial_power_spectrum(rng.normal(size=(2, 512, 512)).astype(np.float32) * 0.1, 24)
    assert p512.mean() == pytest.approx(0.01, rel=0.05)
    _, smooth = ts.radial_power_spectrum(_fields(0, n=4, size=128), 12)
    m = smooth.mean(0)
    assert np.all(np.diff(m[2:]) < 0) and m[0] > 100 * m[-1]


def test_spectrum_bands_and_ratios():
    real, noisy = _fields(0, n=6), _fields(0, n=6, noise=0.05)
    bands = ts.spectrum_bands(real)
    assert set(bands) == {"low", "mid", "high"} and bands["low"] > bands["mid"] > bands["high"] > 0
    assert ts.spectrum_band_ratios(real, real) == {"low": 1.0, "mid": 1.0, "high": 1.0}
    ratios = ts.spectrum_band_ratios(real, noisy)
    assert ratios["high"] > 10 and ratios["low"] == pytest.approx(1.0, abs=0.2)
    with pytest.raises(InputError, match="band 'x'"):
        ts.spectrum_bands(real, {"x": (0.3, 0.2)})


def test_hand_feature_families_are_normalised():
    x = _fields(0, n=3, size=64)
    for h in (ts.intensity_histogram(x, 32), ts.gradient_histogram(x, 16)):
        assert np.allclose(h.sum(1), 1.0)
    assert ts.hand_features(x).shape == (3, 32 + 24 + 16)
    assert np.isfinite(ts.hand_features(np.zeros((2, 32, 32), np.float32))).all()  # constant images


# --------------------------------------------------------------------------- (f) tissue HU
def _phantom_hu(size: int = 128) -> np.ndarray:
    """Air around an elliptical body of soft tissue (40 HU) with a fat rim (-100), two lungs
    (-800) and a spine (700)."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    hu = np.full((size, size), -1000.0)
    body = (xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1
    hu[body] = -100.0
    hu[(xx / 0.40) ** 2 + (yy / 0.30) ** 2 < 1] = 40.0
    hu[((np.abs(xx) - 0.18) / 0.12) ** 2 + (yy / 0.2) ** 2 < 1] = -800.0
    hu[xx ** 2 + (yy - 0.2) ** 2 < 0.05 ** 2] = 700.0
    return hu


def test_tissue_hu_medians_recover_known_regions():
    imgs = np.stack([hu_to_model(_phantom_hu()), hu_to_model(_phantom_hu())]).astype(np.float32)
    res = ts.tissue_hu_medians(imgs)
    expected = {"lung": -800.0, "fat": -100.0, "soft_tissue": 40.0, "bone": 700.0}
    for tissue, hu in expected.items():
        assert res["median_hu"][tissue] == pytest.approx(hu, abs=0.5), tissue
        assert res["per_image_median_hu"][tissue] == pytest.approx([hu, hu], abs=0.5)
        assert 0 < res["tissue_fraction"][tissue] < 1
    assert sum(res["tissue_fraction"].values()) == pytest.approx(1.0)  # the phantom has nothing else
    assert res["tissue_fraction"]["lung"] > res["tissue_fraction"]["bone"]
    # the body mask fills the lungs but leaves the outside air out
    body = ts.body_mask(_phantom_hu())
    assert body[64, 64 - 23] and not body[2, 2]
    # a given (here empty) mask replaces the automatic one: nothing selected gives NaN
    res_masked = ts.tissue_hu_medians(imgs[:1], masks=np.zeros((1, 128, 128), bool))
    assert np.isnan(res_masked["median_hu"]["lung"])


def test_tissue_noise_hu_measures_the_pixel_noise_of_each_tissue():
    clean = _phantom_hu(384)  # a fat rim wide enough to keep 200 px after the erosion
    rng = np.random.default_rng(0)
    noise = rng.normal(size=clean.shape)
    soft = (clean > -200) & (clean < 200)  # fat and muscle get noise, the lungs stay clean
    results = {}
    for std in (0.0, 10.0, 20.0):
        hu = clean + np.where(soft, std * noise, 0.0)
        results[std] = ts.tissue_noise_hu(hu_to_model(hu)[None].astype(np.float32))["noise_hu"]
    for tissue in ("fat", "soft_tissue"):
        assert results[0.0][tissue] < 0.5, results[0.0]
        # white noise minus its sigma-1 blur keeps about 0.87 of its std
        assert 0.75 * 10 < results[10.0][tissue] < 0.95 * 10, results[10.0]
        assert results[20.0][tissue] == pytest.approx(2 * results[10.0][tissue], rel=0.05)
    assert results[20.0]["lung"] < 0.5  # the lungs' own region does not see the muscle's noise
    assert set(results[0.0]) == {"lung", "fat", "soft_tissue"}
    empty = ts.tissue_noise_hu(hu_to_model(np.full((64, 64), -1000.0))[None].astype(np.float32))
    assert all(np.isnan(v) for v in empty["noise_hu"].values())  # no body: NaN, not an error


def test_tissue_mottle_hu_sees_swirls_that_the_pixel_noise_misses():
    """Smooth blobs of ±30 HU (σ 3 px) in fat and muscle raise the 2-8 px mottle by far more than white
    noise of 10 HU does, and the pixel noise by far less."""
    from mcfast.evaluate.tissue import tissue_mottle_hu

    clean = _phantom_hu(384)
    rng = np.random.default_rng(1)
    soft = (clean > -200) & (clean < 200)
    blobs = gaussian_filter(rng.normal(size=clean.shape), 3.0)
    images = {"clean": clean, "swirls": clean + np.where(soft, 30.0 * blobs / blobs.std(), 0.0),
              "grain": clean + np.where(soft, 10.0 * rng.normal(size=clean.shape), 0.0)}
    mottle, noise = {}, {}
    for name, hu in images.items():
        x = hu_to_model(hu)[None].astype(np.float32)
        mottle[name] = tissue_mottle_hu(x)["noise_hu"]["soft_tissue"]
        noise[name] = ts.tissue_noise_hu(x)["noise_hu"]["soft_tissue"]
    assert mottle["swirls"] - mottle["clean"] > 4 * (mottle["grain"] - mottle["clean"]) > 0, mottle
    assert noise["grain"] > 2 * noise["swirls"], noise


# --------------------------------------------------------------------------- (g) bad input
@pytest.mark.parametrize("fn", [ts.patch_cnn_test, ts.hand_feature_test])
def test_bad_input_raises_input_error(fn):
    a = _fields(0, n=10, size=32)
    with pytest.raises(InputError, match="a is 32x32, b is 40x40"):
        fn(a, np.zeros((10, 40, 40), np.float32), folds=2)
    bad = a.copy()
    bad[3, 1, 1] = np.nan
    with pytest.raises(InputError, match="set b: 1 pixel"):
        fn(a, bad, folds=2)
    with pytest.raises(InputError, match="set a has 9 images; a 5-fold test needs at least 10"):
        fn(a[:9], a, folds=5)
    with pytest.raises(InputError, match="folds must be an integer >= 2, got 1"):
        fn(a, a, folds=1)
    with pytest.raises(InputError, match=r"shape \(32, 32\)"):
        fn(a[0], a, folds=2)


def test_patch_cnn_runs_on_its_own_thread_count_whatever_the_callers():
    """The CNN's training is sensitive to float rounding, which depends on the thread count: the test
    pins it (default 1), records it, and gives the caller back its own count."""
    import torch
    a, b = _fields(2, n=12), _fields(3, n=12, noise=0.02)
    kw = dict(FAST_CNN, folds=2, epochs=1, crops_per_image=8)
    results = {}
    for caller in (1, 2):
        torch.set_num_threads(caller)
        results[caller] = ts.patch_cnn_test(a, b, **kw)
        assert torch.get_num_threads() == caller
        assert results[caller]["threads"] == 1
    assert results[1]["scores_a"] == results[2]["scores_a"] and results[1]["auc"] == results[2]["auc"]
    torch.set_num_threads(2)
    assert ts.patch_cnn_test(a, b, threads=None, **kw)["threads"] == 2
    assert ts.patch_cnn_test(a, b, threads=2, **kw)["threads"] == 2
    torch.set_num_threads(1)
    for bad in (0, 1.5, "2"):
        with pytest.raises(InputError, match="threads must be an integer >= 1 or None"):
            ts.patch_cnn_test(a, b, threads=bad, **kw)


def test_patch_cnn_repeats_average_retrained_cnns_and_keep_the_first_run():
    a, b = _fields(2, n=12), _fields(3, n=12, noise=0.02)
    kw = dict(FAST_CNN, folds=2, epochs=1, crops_per_image=8)
    single = ts.patch_cnn_test(a, b, **kw)
    triple = ts.patch_cnn_test(a, b, repeats=3, **kw)
    assert single["repeats"] == 1 and single["repeat_aucs"] == []
    assert triple["repeats"] == 3 and len(triple["repeat_aucs"]) == 3
    assert triple["repeat_aucs"][0] == round(single["auc"], 4)  # repeat 0 is the single-run test
    assert triple["scores_a"] != single["scores_a"]  # the others retrain from other weights and crops
    assert triple == ts.patch_cnn_test(a, b, repeats=3, **kw) | {"seconds": triple["seconds"]}
    with pytest.raises(InputError, match="repeats must be an integer >= 1"):
        ts.patch_cnn_test(a, b, repeats=0, **kw)


def test_bad_crop_raises_input_error():
    a = _fields(0, n=4, size=32)
    with pytest.raises(InputError, match="crop 64"):
        ts.patch_cnn_test(a, a, folds=2, crop=64)


def test_interior_crops_measure_the_texture_without_the_edge():
    from mcfast.evaluate.spectrum import foreground_crops, interior_band_ratios

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    inside = (yy - 48) ** 2 + (xx - 10) ** 2 < 60 ** 2  # a "breast" against the left edge, blank elsewhere
    smooth = np.where(inside, 0.2 + rng.normal(0, 0.01, (4, 96, 96)), -1.0).astype(np.float32)
    grainy = np.where(inside, 0.2 + rng.normal(0, 0.03, (4, 96, 96)), -1.0).astype(np.float32)
    crops = foreground_crops(smooth, 32, 5, seed=1)
    assert crops.shape == (20, 32, 32) and (crops > -1 + 1e-3).all()  # never a padding pixel
    assert np.array_equal(crops, foreground_crops(smooth, 32, 5, seed=1))  # seeded
    ratios = interior_band_ratios(smooth, grainy, size=32, per_image=8)
    assert ratios["high"] == pytest.approx(9.0, rel=0.25)  # noise std 3x: power 9x, edge or no edge
    with pytest.raises(InputError, match="no 16x16 crop"):
        foreground_crops(np.full((2, 32, 32), -1.0, np.float32), 16, 4)
    with pytest.raises(InputError, match="crop size"):
        foreground_crops(smooth, 200, 4)


def test_patch_cnn_region_tells_an_edge_difference_from_a_texture_one():
    from mcfast.evaluate.patch_cnn import patch_cnn_test

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    inside = ((yy - 32) ** 2 + xx ** 2 < 44 ** 2).astype(np.float32)  # a breast against the left side

    def films(n, soft_edge):
        edge = gaussian_filter(inside, 3.0) if soft_edge else inside
        tissue = 0.2 + rng.normal(0, 0.02, (n, 64, 64))
        return np.where(inside > 0, -1 + edge * (tissue + 1), -1.0).astype(np.float32)

    sharp, soft = films(12, False), films(12, True)  # same tissue texture; only the skin line differs
    kwargs = dict(crop=16, crops_per_image=32, folds=3, epochs=5, n_boot=50)
    edge = patch_cnn_test(sharp, soft, region="edge", **kwargs)
    interior = patch_cnn_test(sharp, soft, region="interior", **kwargs)
    assert edge["region"] == "edge" and edge["auc"] > 0.9
    assert interior["auc"] < 0.8  # wholly inside the breast only the ramp's inner tail differs
    with pytest.raises(InputError, match="region 'middle'"):
        patch_cnn_test(sharp, soft, region="middle", **kwargs)

"""Memorization audit: shifted copies are found, random images are not."""
from __future__ import annotations

import numpy as np
import pytest

from mcfast.errors import InputError
from mcfast.evaluate.memorization import highpass, max_ncc, memorization_report


def _textures(rng, n, size=48):
    x = rng.normal(size=(n, size, size))
    x = (x + np.roll(x, 1, 1) + np.roll(x, 1, 2)) / 3  # a little spatial correlation
    return x.astype(np.float32)


@pytest.mark.parametrize("highpass_sigma", [0.0, 1.5])
def test_shifted_copy_is_flagged_random_images_are_not(highpass_sigma):
    rng = np.random.default_rng(0)
    training = _textures(rng, 30)
    randoms = _textures(rng, 10)
    copy = np.roll(training[7], (4, -3), axis=(0, 1))
    copy[:4] = rng.normal(size=(4, 48))  # the shift exposes a strip that is not in the original
    scaled = 0.5 * training[12] + 0.2  # brightness/contrast change: NCC is invariant
    synthetic = np.concatenate([randoms, copy[None], scaled[None]])
    rep = memorization_report(synthetic, training, threshold=0.9, max_shift=6, top_k=3,
                              reference=_textures(rng, 5), highpass_sigma=highpass_sigma)
    flagged = {p["synthetic_index"]: p for p in rep["flagged"]}
    assert set(flagged) == {10, 11}
    assert flagged[10]["training_index"] == 7 and flagged[10]["shift"] == [-4, 3]
    assert flagged[10]["ncc"] > 0.97  # the high-pass blurs the exposed strip into the overlap a little
    assert flagged[11]["training_index"] == 12 and flagged[11]["ncc"] == pytest.approx(1.0, abs=1e-9)
    assert rep["rate"] == pytest.approx(2 / 12)
    assert max(rep["ncc"][:10]) < 0.3
    assert rep["reference_rate"] == 0.0
    assert {p["synthetic_index"] for p in rep["top"][:2]} == {10, 11}  # both NCC 1 over the overlap
    assert len(rep["top"]) == 3


def test_ncc_matches_direct_computation_for_a_shift():
    rng = np.random.default_rng(1)
    a, b = _textures(rng, 1, 24), _textures(rng, 1, 24)
    res = max_ncc(a, b, max_shift=2)
    best = -2.0
    for dy in range(-2, 3):
        for dx in range(-2, 3):  # synthetic[y, x] vs training[y + dy, x + dx] over the overlap
            ys, xs = slice(max(0, -dy), 24 - max(0, dy)), slice(max(0, -dx), 24 - max(0, dx))
            yt, xt = slice(max(0, dy), 24 - max(0, -dy)), slice(max(0, dx), 24 - max(0, -dx))
            best = max(best, np.corrcoef(a[0][ys, xs].ravel(), b[0][yt, xt].ravel())[0, 1])
    assert res["ncc"][0] == pytest.approx(best, abs=1e-9)


def test_an_excluded_training_image_is_never_the_nearest():
    """A synthetic image guided by a training image is that image's near-copy by design; excluding it
    per item, the nearest is another training image (and an item with nothing excluded is unchanged)."""
    rng = np.random.default_rng(3)
    train = _textures(rng, 5, 24)
    synthetic = np.stack([train[2], train[3], train[2]])
    for chunk in (1, None):  # the exclusion follows each item across chunks
        res = max_ncc(synthetic, train, max_shift=2, chunk=chunk, exclude=[2, -1, -1])
        assert res["index"][0] != 2 and res["ncc"][0] < 0.5
        assert res["index"][1] == 3 and res["ncc"][1] == pytest.approx(1.0, abs=1e-9)
        assert res["index"][2] == 2 and res["ncc"][2] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(InputError, match="exclude needs one training index"):
        max_ncc(synthetic, train, max_shift=2, exclude=[2, 5, -1])
    with pytest.raises(InputError, match="exclude needs one training index"):
        max_ncc(synthetic, train, max_shift=2, exclude=[2])
    with pytest.raises(InputError, match="no training image"):
        max_ncc(synthetic[:1], train[:1], max_shift=2, exclude=[0])


def test_bad_shapes_rejected():
    with pytest.raises(InputError, match="one size"):
        max_ncc(np.zeros((2, 16, 16)), np.zeros((2, 8, 8)))
    with pytest.raises(InputError, match="max_shift"):
        max_ncc(np.zeros((2, 16, 16)), np.zeros((2, 16, 16)), max_shift=8)


def test_highpass_removes_smooth_shading():
    yy = np.linspace(-1, 1, 32)[None, :, None] * np.ones((1, 32, 32))
    assert np.abs(highpass(yy, 2.0)[:, 8:-8, 8:-8]).max() < 1e-9  # a linear ramp has no high frequencies
    assert np.array_equal(highpass(yy, 0.0), yy)


def test_realism_audit_counts_guided_images_against_other_training_images():
    """An image guided by a training image is a near copy of it by design: the realism audit (and the target)
    count it against the *other* training images, and still report the share against all of them."""
    from mcfast.evaluate.realism_sets import anatomy_groups, anatomy_training_index, fmt_memorization, two_sample_targets
    from mcfast.evaluate.realism_suite import SuiteSettings, memorization, memorization_rate

    rng = np.random.default_rng(3)
    training = _textures(rng, 12)
    guided = training[[2, 5]] + 0.05 * _textures(rng, 2)   # each close to its own reference only
    copy_of_other = training[9] + 0.05 * _textures(rng, 1)[0]  # guided by 4, but a copy of 9
    phantom = _textures(rng, 1)[0]
    candidates = np.stack([*guided, copy_of_other, phantom])
    files = [f"ct_{k:06d}.npy" for k in range(12)]
    anatomy = [f"sha256:0123456789ab/{files[2]}", f"sha256:0123456789ab/{files[5]}",
               f"sha256:0123456789ab/{files[4]}", "phantom:lung:17"]
    own = anatomy_training_index(anatomy, files)
    assert own == [2, 5, 4, -1]
    patients = [f"p{k // 2}" for k in range(12)]
    assert anatomy_groups(anatomy, files, patients) == ["p1", "p2", "p2", "phantom:lung:17"]

    settings = SuiteSettings(memorization_highpass_sigma=0.0, memorization_max_shift=2)
    audit = memorization(candidates, training, settings, own_reference=own)
    assert audit["rate_above_threshold"] == 0.75                  # three of four above 0.95 against all
    assert audit["other"]["rate_above_threshold"] == 0.25         # only the copy of someone else
    assert audit["nearest_is_own_reference"] == pytest.approx(2 / 3)
    assert memorization_rate(audit) == 0.25
    assert fmt_memorization(audit) == "25% (all: 75%; nearest is own reference: 67%)"
    floor = {"patch_cnn": {"auc": 0.5}, "hand_features": {"auc": 0.5}}
    r = {"patch_cnn": {"auc": 0.5}, "hand_features": {"auc": 0.5}, "spectrum_ratio": {"mid": 1.0, "high": 1.0},
         "memorization": audit}
    assert two_sample_targets(floor, r, "real")["<= 2 % NCC > 0.95"] is False
    audit["other"]["rate_above_threshold"] = 0.0
    assert two_sample_targets(floor, r, "real")["<= 2 % NCC > 0.95"] is True

    unguided = memorization(candidates, training, settings, own_reference=[-1] * 4)
    assert "other" not in unguided and memorization_rate(unguided) == 0.75 and fmt_memorization(unguided) == "75%"

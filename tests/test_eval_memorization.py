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

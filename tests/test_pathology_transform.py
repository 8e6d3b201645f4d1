"""Mammography patch matching (range, fall-off) and geometric augmentation."""
import numpy as np
import pytest

from mcfast.errors import InputError
from mcfast.pathology import Patch, augment, ct_transform, gaussian_falloff, mammo_transform, prepare_patch
from mcfast.pathology.synthetic import ct_nodule_patch, mg_mass_patch
from mcfast.pathology.transform import Q_RANGE, equalize01, match_to_reference, reference_range


def _mg_patch(seed=0, size=33):
    return mg_mass_patch(size, np.random.default_rng(seed))


def test_match_range_endpoints_equal_reference_min_and_quantile():
    rng = np.random.default_rng(0)
    ref = rng.gamma(2.0, 0.1, (64, 64)).astype(np.float32)
    for seed in range(5):
        q = float(np.random.default_rng(seed).uniform(*Q_RANGE))
        out = match_to_reference(_mg_patch(seed).image, ref, q)
        assert out.min() == pytest.approx(ref.min(), abs=1e-6)
        assert out.max() == pytest.approx(np.quantile(ref, q), abs=1e-6)


def test_equalisation_flattens_the_histogram():
    x = np.random.default_rng(1).exponential(1.0, (40, 40))
    eq = equalize01(x)
    assert eq.min() == 0.0 and eq.max() == 1.0
    hist = np.histogram(eq, bins=4, range=(0, 1))[0] / eq.size
    assert np.abs(hist - 0.25).max() < 0.05
    assert (equalize01(np.full((5, 5), 3.0)) == 0).all()


def test_mirror_low_end_is_the_quantile_one_minus_q_and_ignores_a_few_dark_pixels():
    """``low = "mirror"``: the range's low end is the quantile 1 - q, so a handful of near-black pixels (a skin
    line, a streak) no longer set it, while the minimum follows them down."""
    ref = np.random.default_rng(0).uniform(0.4, 0.8, (40, 40)).astype(np.float32)
    ref[0, :3] = 0.01
    lo_min, hi_min = reference_range(ref, 0.98)
    lo_mirror, hi_mirror = reference_range(ref, 0.98, low="mirror")
    assert lo_min == pytest.approx(0.01) and hi_mirror == hi_min
    assert lo_mirror == pytest.approx(np.quantile(ref, 0.02)) and lo_mirror > 0.4
    with pytest.raises(InputError, match="'lowest'"):
        reference_range(ref, 0.98, low="lowest")


def test_reference_mask_restricts_the_range():
    ref = np.zeros((10, 10), dtype=np.float32)
    ref[2:8, 2:8] = np.linspace(0.3, 0.9, 36).reshape(6, 6)
    m = ref > 0
    lo, hi = reference_range(ref, 0.99, m)
    assert lo == pytest.approx(0.3) and hi == pytest.approx(np.quantile(ref[m], 0.99))
    with pytest.raises(InputError, match="no pixels"):
        reference_range(ref, 0.99, np.zeros_like(m))
    with pytest.raises(InputError, match="quantile"):
        reference_range(ref, 1.5)


def test_falloff_is_monotone_along_the_radius():
    w = gaussian_falloff((31, 31), 0.5)
    assert w[15, 15] == 1.0
    for ray in (w[15, 15:], w[15:, 15], np.diag(w)[15:], w[15, :16][::-1]):
        assert (np.diff(ray) < 0).all()
    # the full transform = lo + (matched - lo) * w: without fall-off the same q gives the matched patch
    p = _mg_patch(2, 31)
    ref = np.linspace(0.2, 0.8, 400).reshape(20, 20)
    flat = mammo_transform(p, ref, np.random.default_rng(0), q=0.98, falloff=False)
    out = mammo_transform(p, ref, np.random.default_rng(0), q=0.98)
    lo = out.meta["lo"]
    np.testing.assert_allclose(out.image - lo, (flat.image - lo) * w, atol=1e-6)
    assert flat.image.min() == pytest.approx(lo) and flat.image.max() == pytest.approx(np.quantile(ref, 0.98))
    # the largest possible value at radius r decays monotonically
    hi = out.meta["hi"]
    envelope = lo + (hi - lo) * w[15, 15:]
    assert (out.image[15, 15:] <= envelope + 1e-6).all() and (np.diff(envelope) < 0).all()


def test_mammo_transform_draws_q_and_keeps_mask():
    ref = np.random.default_rng(3).random((50, 50))
    qs = []
    for seed in range(20):
        p = _mg_patch(seed)
        out = mammo_transform(p, ref, np.random.default_rng(seed))
        qs.append(out.meta["q"])
        assert Q_RANGE[0] <= out.meta["q"] <= Q_RANGE[1]
        np.testing.assert_array_equal(out.mask, p.mask)
        assert out.image.min() >= out.meta["lo"] - 1e-6 and out.image.max() <= out.meta["hi"] + 1e-6
    assert len(set(qs)) == 20
    with pytest.raises(InputError, match="'mg' patch"):
        mammo_transform(ct_nodule_patch(16, np.random.default_rng(0)), ref, np.random.default_rng(0))


def test_ct_transform_stays_in_hu():
    p = ct_nodule_patch(24, np.random.default_rng(2))
    same = ct_transform(p)
    np.testing.assert_array_equal(same.image, p.image)
    eq = ct_transform(p, equalize=True)
    assert eq.image.min() == pytest.approx(p.image.min()) and eq.image.max() == pytest.approx(p.image.max())


def test_augment_is_reproducible_and_keeps_the_lesion():
    p = _mg_patch(4, 41)
    a = augment(p, np.random.default_rng(11))
    b = augment(p, np.random.default_rng(11))
    np.testing.assert_array_equal(a.image, b.image)
    assert a.meta["angle"] == b.meta["angle"]
    angles = []
    for seed in range(30):
        out = augment(p, np.random.default_rng(seed))
        angles.append(out.meta["angle"])
        assert out.image.shape == out.mask.shape and out.image.shape[0] >= 41
        assert abs(int(out.mask.sum()) - int(p.mask.sum())) <= 0.1 * p.mask.sum()  # rotation ~ preserves area
        assert np.isfinite(out.image).all()
    assert max(angles) - min(angles) > 180  # any angle


def test_augment_flip_only_is_exact():
    img = np.arange(20, dtype=np.float32).reshape(4, 5)
    mask = np.zeros((4, 5))
    mask[1, 1] = 1
    p = Patch(img, mask, "tiny", "ct")
    for seed in range(8):
        out = augment(p, np.random.default_rng(seed), rotate=False, max_shift=0.0)
        expect = img[:, ::-1] if out.meta["flip_lr"] else img
        expect = expect[::-1] if out.meta["flip_ud"] else expect
        np.testing.assert_array_equal(out.image, expect)


def test_augment_shift_keeps_mask_inside():
    mask = np.zeros((20, 20))
    mask[0:3, 17:20] = 1  # lesion in the corner: it may only move down/left
    p = Patch(np.random.default_rng(0).random((20, 20)), mask, "corner", "ct")
    for seed in range(20):
        out = augment(p, np.random.default_rng(seed), rotate=False, flip=False, max_shift=0.25)
        dr, dc = out.meta["shift_rc"]
        assert dr >= 0 and dc <= 0 and out.mask.sum() == 9


def test_prepare_patch_needs_reference_for_mg():
    with pytest.raises(InputError, match="reference"):
        prepare_patch(_mg_patch(), np.random.default_rng(0))
    out = prepare_patch(_mg_patch(), np.random.default_rng(0), reference=np.random.default_rng(1).random((30, 30)))
    assert "q" in out.meta and "angle" in out.meta

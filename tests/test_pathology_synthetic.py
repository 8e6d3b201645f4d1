"""Procedural lesion patches: values, masks, determinism."""
import numpy as np
import pytest

from mcfast.errors import InputError
from mcfast.pathology.synthetic import ct_nodule_patch, lesion_profile, mg_mass_patch


def test_ct_nodule_values_in_hu():
    for seed in range(10):
        p = ct_nodule_patch(32, np.random.default_rng(seed))
        assert p.kind == "ct" and p.image.shape == (32, 32) and p.image.dtype == np.float32
        core = p.image[p.mask > 0]
        bg = p.image[p.mask == 0]
        assert -150 < np.median(core) < 120  # solid nodule around 0-60 HU
        assert -950 < np.median(bg) < -750  # lung parenchyma
        assert p.mask[16, 16] == 1 and p.mask[0, 0] == 0


def test_mg_mass_brighter_than_tissue():
    for seed in range(10):
        p = mg_mass_patch(48, np.random.default_rng(seed))
        assert p.kind == "mg" and p.label in ("CIRC", "SPIC")
        assert 0.0 <= p.image.min() and p.image.max() <= 1.0
        assert p.image[p.mask > 0].mean() > p.image[p.mask == 0].mean() + 0.08


def test_deterministic_per_generator_and_options():
    a = ct_nodule_patch(24, np.random.default_rng(3))
    b = ct_nodule_patch(24, np.random.default_rng(3))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    s = mg_mass_patch(40, np.random.default_rng(1), spiculated=True, radius=8)
    c = mg_mass_patch(40, np.random.default_rng(1), spiculated=False, radius=8)
    assert s.label == "SPIC" and c.label == "CIRC"
    assert s.mask.sum() > c.mask.sum()  # spicules extend the lesion


def test_lesion_profile_lobulation_zero_is_round():
    body, spic, mask = lesion_profile(41, np.random.default_rng(0), radius=10, lobulation=0.0)
    yy, xx = np.mgrid[:41, :41]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 < 100
    assert (mask != disc).sum() <= 8 and not spic.any()


def test_bad_sizes():
    with pytest.raises(InputError):
        ct_nodule_patch(4)
    with pytest.raises(InputError, match="radius"):
        mg_mass_patch(20, np.random.default_rng(0), radius=15)

"""Lung and breast masks on phantoms, synthetic images and (when present) the real CT."""
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from mcfast.anatomy import breast_mask, breast_phantom_with_mask, lung_mask, lung_phantom_with_masks
from mcfast.anatomy.masks import components
from mcfast.errors import InputError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CT_DIR = DATA / "lung-pet-ct-dx" / "A0001" / "dicom"


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("seed", range(6))
def test_lung_mask_finds_both_phantom_lungs(seed):
    hu, truth = lung_phantom_with_masks(128, seed=seed)
    m = lung_mask(hu)
    assert m.dtype == bool and components(m) == 2
    assert _iou(m, truth) > 0.9


def _disc(shape, cy, cx, r):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def test_lung_mask_drops_outside_air_and_small_pockets_and_fills_vessels():
    hu = np.full((96, 96), -1000.0, dtype=np.float32)
    hu[_disc(hu.shape, 48, 48, 44)] = 40.0  # body
    left, right = _disc(hu.shape, 48, 28, 12), _disc(hu.shape, 48, 68, 12)
    hu[left | right] = -850.0
    hu[_disc(hu.shape, 48, 28, 2)] = 30.0  # a vessel inside the left lung
    hu[_disc(hu.shape, 20, 48, 1.5)] = -900.0  # trachea-sized air pocket
    m = lung_mask(hu)
    assert components(m) == 2
    np.testing.assert_array_equal(m, left | right)


def test_lung_mask_min_second_fraction():
    hu = np.full((80, 80), -1000.0, dtype=np.float32)
    hu[_disc(hu.shape, 40, 40, 36)] = 40.0
    big, small = _disc(hu.shape, 40, 30, 15), _disc(hu.shape, 40, 60, 4)  # 49 vs 709 px
    hu[big | small] = -850.0
    assert components(lung_mask(hu)) == 2
    assert components(lung_mask(hu, min_second_fraction=0.2)) == 1


def test_lung_mask_empty_and_errors():
    assert not lung_mask(np.full((32, 32), -1000.0)).any()
    assert not lung_mask(np.full((32, 32), 40.0)).any()
    with pytest.raises(InputError, match="2-D"):
        lung_mask(np.zeros((2, 8, 8)))
    bad = np.zeros((8, 8))
    bad[2, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        lung_mask(bad)


def test_breast_mask_on_phantom_and_label_removed():
    img, truth = breast_phantom_with_mask(128, seed=4)
    img = img.copy()
    img[5:15, 110:124] = 1.0  # a bright film label outside the breast
    m = breast_mask(img)
    assert not m[5:15, 110:124].any()
    assert (m & ~truth).sum() <= 0.01 * m.sum()  # inside the breast
    assert _iou(m, truth) > 0.95
    assert components(m) == 1 and not ndimage.binary_fill_holes(m)[~m].any()


def test_breast_mask_keeps_the_fatty_periphery():
    # dense phantoms: a threshold between fatty and dense tissue (Otsu's, IoU down to 0.6) cuts the skin line off
    ious = [_iou(breast_mask(img), truth) for img, truth in (breast_phantom_with_mask(128, seed=s) for s in range(12))]
    assert min(ious) > 0.95, ious


def test_breast_mask_errors():
    with pytest.raises(InputError):
        breast_mask(np.zeros((3, 4, 5)))


@pytest.mark.data
def test_lung_mask_on_real_ct():
    if not CT_DIR.is_dir():
        pytest.skip(f"real CT not found at {CT_DIR}")
    from mcfast.io.dicom import read_ct_tree

    for vol in read_ct_tree(CT_DIR):
        n = len(vol)
        counts = []
        for i in range(n // 4, 3 * n // 4, 2):
            m = lung_mask(vol.slice(i).hu)
            counts.append(components(m))
            assert 0.03 < m.mean() < 0.5  # lungs, not the outside air or nothing
        # the lungs can touch near the carina; most mid-chest slices show two separate lungs
        assert np.mean(np.array(counts) == 2) >= 0.6, counts

"""Placement inside tissue: overlap guarantee over many seeds, exact mask/box, clear errors."""
import numpy as np
import pytest

from mcfast.anatomy import breast_phantom_labels, lung_phantom_with_masks
from mcfast.errors import InputError
from mcfast.pathology import Patch, mask_box, place_patch, place_patch_at
from mcfast.pathology.placement import overlap_map
from mcfast.pathology.synthetic import ct_nodule_patch, mg_mass_patch


def _check(placement, shape, patch, tissue, min_overlap):
    canvas, mask, box, center = placement  # unpacks as the documented 4-tuple
    assert canvas.shape == shape and canvas.dtype == np.float32
    assert mask.shape == shape and mask.dtype == np.uint8
    assert mask.sum() == patch.mask.sum()  # the whole lesion is in the image
    assert box == mask_box(mask)
    x, y, w, h = box
    rows, cols = np.nonzero(mask)
    assert (x, y, w, h) == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
    assert x <= center[0] <= x + w - 1 and y <= center[1] <= y + h - 1
    overlap = (mask.astype(bool) & tissue).sum() / mask.sum()
    assert overlap >= min_overlap
    # the canvas holds exactly the patch values under the lesion
    np.testing.assert_array_equal(np.sort(canvas[mask > 0]), np.sort(patch.image[patch.mask > 0]))


@pytest.mark.parametrize("min_overlap", [0.9, 1.0])
def test_ct_placement_inside_lungs_over_many_seeds(min_overlap):
    hu, lung = lung_phantom_with_masks(96, seed=1)
    for seed in range(40):
        rng = np.random.default_rng(seed)
        patch = ct_nodule_patch(int(rng.integers(10, 20)), rng)
        _check(place_patch(hu.shape, lung, patch, rng, min_overlap=min_overlap), hu.shape, patch, lung, min_overlap)


def test_mg_placement_inside_breast_over_many_seeds():
    img, lab = breast_phantom_labels(96, seed=2)
    breast = lab["tissue"]  # lesions go into breast tissue, not into the pectoral muscle
    for seed in range(40):
        rng = np.random.default_rng(seed)
        patch = mg_mass_patch(int(rng.integers(12, 30)), rng)
        _check(place_patch(img.shape, breast, patch, rng), img.shape, patch, breast, 0.9)


def test_placement_is_reproducible_and_varies():
    hu, lung = lung_phantom_with_masks(96, seed=0)
    patch = ct_nodule_patch(12, np.random.default_rng(0))
    a = place_patch(hu.shape, lung, patch, np.random.default_rng(5))
    b = place_patch(hu.shape, lung, patch, np.random.default_rng(5))
    assert a.box == b.box and np.array_equal(a.canvas, b.canvas)
    boxes = {place_patch(hu.shape, lung, patch, np.random.default_rng(s)).box for s in range(20)}
    assert len(boxes) > 10


def test_overlap_map_matches_brute_force():
    rng = np.random.default_rng(0)
    tissue = rng.random((23, 19)) > 0.4
    lesion = rng.random((5, 7)) > 0.5
    fast = overlap_map(tissue, lesion)
    assert fast.shape == (23 - 5 + 1, 19 - 7 + 1)
    for r in range(fast.shape[0]):
        for c in range(fast.shape[1]):
            assert fast[r, c] == (lesion & tissue[r:r + 5, c:c + 7]).sum() / lesion.sum()


def test_exact_overlap_boundary():
    tissue = np.zeros((10, 10), dtype=bool)
    tissue[:, :5] = True
    mask = np.zeros((4, 4))
    mask[:, :] = 1
    patch = Patch(np.ones((4, 4)), mask, "square", "ct")
    for seed in range(20):
        pl = place_patch(tissue.shape, tissue, patch, np.random.default_rng(seed), min_overlap=0.75)
        assert pl.box[0] <= 2  # at most one of four columns off tissue
    pl = place_patch(tissue.shape, tissue, patch, np.random.default_rng(0), min_overlap=1.0)
    assert pl.box[0] + pl.box[2] <= 5


def test_errors_are_clear():
    tissue = np.zeros((20, 20), dtype=bool)
    tissue[8:11, 8:11] = True
    patch = Patch(np.ones((6, 6)), np.ones((6, 6)), "big-lesion", "ct")
    with pytest.raises(InputError, match="no position .*big-lesion|big-lesion.*no position"):
        place_patch(tissue.shape, tissue, patch, np.random.default_rng(0))
    huge = Patch(np.ones((25, 5)), np.ones((25, 5)), "tall", "ct")
    with pytest.raises(InputError, match="bigger than the 20x20 image"):
        place_patch(tissue.shape, tissue, huge, np.random.default_rng(0))
    with pytest.raises(InputError, match="differs"):
        place_patch((20, 21), tissue, patch, np.random.default_rng(0))
    with pytest.raises(InputError, match="min_overlap"):
        place_patch(tissue.shape, tissue, patch, np.random.default_rng(0), min_overlap=1.5)
    with pytest.raises(InputError, match="does not fit"):
        place_patch_at(tissue.shape, patch, (16, 0))


def test_place_patch_at_fill_value():
    patch = Patch(np.full((3, 3), 5.0), np.eye(3), "diag", "ct")
    pl = place_patch_at((8, 8), patch, (2, 4), fill=-1000.0)
    assert pl.canvas[0, 0] == -1000.0 and pl.canvas[2, 4] == 5.0
    assert pl.box == (4, 2, 3, 3) and pl.center == (5.0, 3.0)


@pytest.mark.parametrize("image_shape, kernel_shape", [((64, 64), (5, 7)), ((31, 40), (31, 1)), ((20, 20), (1, 1))])
def test_valid_correlation_matches_scipy_signal(image_shape, kernel_shape):
    from scipy.signal import fftconvolve

    from mcfast.pathology.placement import valid_correlation
    rng = np.random.default_rng(0)
    image = (rng.random(image_shape) > 0.5).astype(float)
    kernel = (rng.random(kernel_shape) > 0.3).astype(float)
    expected = fftconvolve(image, kernel[::-1, ::-1], mode="valid")
    got = valid_correlation(image, kernel)
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-9

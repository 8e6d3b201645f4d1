import numpy as np
import pytest

from mcfast.errors import InputError
from mcfast.io.mammo import (MammoTransform, breast_mask, chest_wall_side, normalise_laterality, prepare_mammogram,
                             resize_keep_aspect)


def synthetic_mammogram(h=64, w=48, side="left", seed=0):
    """Half-disc breast against the ``side`` edge, a dark hole inside it and a bright label blob."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:h, :w]
    x = cc if side == "left" else (w - 1 - cc)
    breast = ((rr - h / 2) ** 2 + (x * 1.4) ** 2) < (h * 0.42) ** 2
    img = np.where(breast, 0.6 + 0.1 * rng.random((h, w)), 0.02 * rng.random((h, w)))
    img[h // 2 - 2:h // 2 + 2, (4 if side == "left" else w - 8):(8 if side == "left" else w - 4)] = 0.0  # hole
    label = (slice(2, 6), slice(w - 8, w - 3) if side == "left" else slice(3, 8))
    img[label] = 1.0
    return img.astype(np.float32), breast, label


def test_breast_mask_keeps_largest_component_and_fills_holes():
    img, breast, label = synthetic_mammogram()
    m = breast_mask(img)
    assert m.dtype == bool
    assert not m[label].any()  # the label is a separate, smaller component
    assert (m == breast).mean() > 0.98  # the dark hole inside is filled
    assert not breast_mask(np.zeros((8, 8))).any()
    with pytest.raises(InputError):
        breast_mask(np.zeros((2, 2, 3)))


def test_laterality_is_normalised_and_recorded():
    img, _, _ = synthetic_mammogram(side="right")
    assert chest_wall_side(img) == "right"
    out, t = normalise_laterality(img, "left")
    assert t.flipped and chest_wall_side(out) == "left"
    np.testing.assert_array_equal(out, img[:, ::-1])
    same, t2 = normalise_laterality(out, "left")
    assert not t2.flipped and same is out
    # pixel (col 3, row 5) lands at col w-1-3
    np.testing.assert_allclose(t.map_pixel_centers([[3, 5]]), [[img.shape[1] - 4, 5]])


def test_resize_keep_aspect_and_transform_round_trip():
    img = np.zeros((100, 50), np.float32)
    img[10:20, 5:15] = 1.0
    out, t = resize_keep_aspect(img, 64, pad_value=-1.0, align="left")
    assert out.shape == (64, 64)
    assert (out[:, 32:] == -1.0).all()  # width 50 * 0.64 = 32, padded on the right
    box = [5, 10, 10, 10]
    fwd = t.map_box(box)
    np.testing.assert_allclose(fwd, [3.2, 6.4, 6.4, 6.4])
    np.testing.assert_allclose(t.map_box(fwd, inverse=True), box)
    m = t.apply_to_mask((img > 0).astype(np.uint8))
    assert m.shape == (64, 64) and abs(int(m.sum()) - 41) <= 10  # 6.4² ≈ 41 pixels
    back = t.apply_to_mask(m, inverse=True)
    assert back.shape == img.shape and (back[12:18, 7:13] == 1).all()
    assert MammoTransform.from_dict(t.to_dict()) == t


def test_prepare_mammogram_maps_annotations_both_ways():
    img, breast, _ = synthetic_mammogram(h=80, w=60, side="right")
    out, t, mask = prepare_mammogram(img, size=32, side="left")
    assert out.shape == (32, 32) and t.flipped and chest_wall_side(mask) == "left"
    pts = np.array([[50.5, 40.5], [30.5, 20.5]])
    np.testing.assert_allclose(t.map_points(t.map_points(pts), inverse=True), pts)
    # a point inside the source breast maps inside the output mask
    (x, y), = t.map_points([[55.5, 40.5]])
    assert mask[int(y), int(x)]


@pytest.mark.data
def test_mias_annotations_land_on_the_breast_after_the_y_flip(shared_data):
    from mcfast.io.annotations import read_mias_info
    from mcfast.io.images import read_image

    records = read_mias_info(shared_data / "mias" / "Info.txt")
    masses = [(r, a) for r in records.values() for a in r.abnormalities
              if a.cls in ("CIRC", "SPIC") and a.has_center][:12]
    inside = 0
    contrast, contrast_unflipped = [], []
    for rec, a in masses:
        img = read_image(shared_data / "mias" / "images" / f"{rec.ref}.png")
        m = breast_mask(img)
        inside += bool(m[a.row, a.col])
        for row, out in ((a.row, contrast), (a.y, contrast_unflipped)):  # a.y: forgetting the flip
            rr, cc = np.ogrid[:img.shape[0], :img.shape[1]]
            disc = (rr - row) ** 2 + (cc - a.col) ** 2 <= a.radius ** 2
            out.append(img[disc].mean() - img[m & ~disc].mean())
        assert chest_wall_side(m) == rec.side  # odd = right breast = chest wall on the right
    assert inside == len(masses)
    # masses are denser (brighter) than the rest of the breast, only where the flipped row puts them
    assert np.median(contrast) > 0.03
    assert np.median(contrast) > np.median(contrast_unflipped) + 0.03

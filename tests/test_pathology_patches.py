"""Patch extraction: MIAS circles (y flip), VOC boxes (CT), MSD masks; unit and data tests."""
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from mcfast.errors import InputError
from mcfast.pathology import Patch, extract_mias_patch, extract_msd_patch, extract_voc_patch, mask_box, mias_row
from mcfast.pathology.patches import ellipse_in_box, voc_lesion_mask

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MIAS = DATA / "mias"
CT = DATA / "lung-pet-ct-dx" / "A0001"
MSD = DATA / "msd-lung-patches" / "val_patches.h5"


def test_patch_validation():
    with pytest.raises(InputError, match="same 2-D shape"):
        Patch(np.zeros((4, 4)), np.ones((4, 5)), "x", "ct")
    with pytest.raises(InputError, match="kind"):
        Patch(np.zeros((4, 4)), np.ones((4, 4)), "x", "xray")
    with pytest.raises(InputError, match="empty"):
        Patch(np.zeros((4, 4)), np.zeros((4, 4)), "x", "mg")
    p = Patch(np.zeros((4, 4), dtype=np.float64), np.full((4, 4), 0.7), "x", "mg")
    assert p.image.dtype == np.float32 and p.mask.dtype == np.uint8 and p.mask.all()


def test_mias_circle_uses_bottom_left_origin():
    h, w = 200, 160
    img = np.zeros((h, w), dtype=np.float32)
    x, y, r = 50, 30, 8  # y from the bottom: row 169
    yy, xx = np.ogrid[:h, :w]
    img[(yy - (h - 1 - y)) ** 2 + (xx - x) ** 2 <= r**2] = 1.0
    p = extract_mias_patch(img, x, y, r, source="synthetic")
    assert mias_row(y, h) == 169
    assert p.kind == "mg" and p.image.shape == (2 * 10 + 1, 2 * 10 + 1)
    np.testing.assert_array_equal(p.image > 0.5, p.mask.astype(bool))  # mask sits exactly on the disc
    r0, c0 = p.meta["offset"]
    assert (r0, c0) == (169 - 10, 50 - 10)


def test_mias_patch_clipped_at_border_and_errors():
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    p = extract_mias_patch(img, 2, 61, 5)  # row 2, col 2: near the top-left corner
    assert p.image.shape == (2 + 7 + 1, 2 + 7 + 1)
    assert p.mask[2, 2] == 1
    with pytest.raises(InputError, match="outside"):
        extract_mias_patch(img, 70, 3, 5)
    with pytest.raises(InputError, match="radius"):
        extract_mias_patch(img, 10, 10, 0)


def test_voc_mask_is_soft_tissue_inside_the_inscribed_ellipse():
    hu = np.full((64, 64), -850.0, dtype=np.float32)
    yy, xx = np.ogrid[:64, :64]
    tumour = (yy - 30) ** 2 + (xx - 30) ** 2 <= 36
    hu[tumour] = 30.0
    hu[:, 40:] = 40.0  # chest wall entering the box's right corners
    box = (22, 22, 41, 38)  # xmin, ymin, xmax, ymax (inclusive), touches the wall at column 40..41
    p = extract_voc_patch(hu, box, source="synthetic")
    r0, c0 = p.meta["offset"]
    full = np.zeros_like(tumour)
    full[r0:r0 + p.image.shape[0], c0:c0 + p.image.shape[1]] = p.mask.astype(bool)
    assert p.kind == "ct" and p.image.min() == -850.0  # still HU
    assert (full & tumour).sum() == tumour.sum()  # the whole tumour
    assert not full[:, 40:].any()  # not the wall (ellipse + largest component)
    x, y, w, h = mask_box(full)
    assert 22 <= x and x + w - 1 <= 41 and 22 <= y and y + h - 1 <= 38  # inside the box


def test_voc_mask_falls_back_to_ellipse_when_nothing_passes_threshold():
    crop = np.full((10, 14), -900.0)
    np.testing.assert_array_equal(voc_lesion_mask(crop), ellipse_in_box((10, 14)))


def test_voc_box_errors():
    hu = np.zeros((32, 32), dtype=np.float32)
    with pytest.raises(InputError, match="outside"):
        extract_voc_patch(hu, (10, 10, 40, 20))
    with pytest.raises(InputError, match="empty"):
        extract_voc_patch(hu, (10, 10, 5, 20))


def test_msd_patch_keeps_given_mask_crop_and_hu_mapping():
    rng = np.random.default_rng(0)
    img = rng.random((1, 48, 48)).astype(np.float32)
    lab = np.zeros((1, 48, 48))
    lab[0, 10:20, 30:36] = 1.0
    p = extract_msd_patch(img, lab, source="msd:0")
    np.testing.assert_array_equal(p.mask, lab[0].astype(np.uint8))
    np.testing.assert_array_equal(p.image, img[0])
    c = extract_msd_patch(img, lab, crop=True, margin=2, hu_range=(-1000.0, 400.0))
    assert c.image.shape == (14, 10) and c.mask.sum() == 60 and c.meta["offset"] == (8, 28)
    np.testing.assert_allclose(c.image, -1000.0 + img[0, 8:22, 28:38] * 1400.0, rtol=1e-6)
    with pytest.raises(InputError, match="empty"):
        extract_msd_patch(img, np.zeros_like(lab))


def test_mask_box():
    m = np.zeros((10, 12), dtype=np.uint8)
    m[2:5, 3:9] = 1
    assert mask_box(m) == (3, 2, 6, 3)
    with pytest.raises(InputError):
        mask_box(np.zeros((3, 3)))


# ----------------------------------------------------------------------------- real data


@pytest.mark.data
def test_mias_masses_are_brighter_inside_circle_after_y_flip():
    if not (MIAS / "Info.txt").is_file():
        pytest.skip(f"MIAS not found at {MIAS}")
    from PIL import Image

    contrast_flip, contrast_noflip = [], []
    for line in (MIAS / "Info.txt").read_text(encoding="latin-1").splitlines():
        parts = line.split()
        if len(parts) != 7 or parts[2] not in ("CIRC", "SPIC", "MISC"):
            continue
        x, y, r = (int(v) for v in parts[4:])
        if r > 60:  # big circles cover most of the breast; small masses give a clear contrast test
            continue
        img = np.asarray(Image.open(MIAS / "images" / f"{parts[0]}.png"), dtype=np.float32)
        p = extract_mias_patch(img, x, y, r, margin=2.0, source=parts[0], label=parts[2])
        inside, ring = p.image[p.mask > 0].mean(), p.image[p.mask == 0].mean()
        contrast_flip.append(inside - ring)
        q = extract_mias_patch(img, x, img.shape[0] - 1 - y, r, margin=2.0)  # the wrong (unflipped) row
        contrast_noflip.append(q.image[q.mask > 0].mean() - q.image[q.mask == 0].mean())
    assert len(contrast_flip) >= 20
    # masses are denser (brighter) than their surroundings when the circle is in the right place
    assert np.mean(np.array(contrast_flip) > 0) > 0.75
    assert np.median(contrast_flip) > np.median(contrast_noflip) + 5


@pytest.mark.data
def test_voc_tumour_patches_on_real_ct():
    if not (CT / "annotations").is_dir():
        pytest.skip(f"Lung-PET-CT-Dx not found at {CT}")
    import pydicom

    uid_to_file = {}
    for f in sorted((CT / "dicom").rglob("*.dcm")):
        uid_to_file[str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)] = f
    n = 0
    for xml in sorted((CT / "annotations").glob("*.xml"))[:6]:
        if xml.stem not in uid_to_file:
            continue
        ds = pydicom.dcmread(uid_to_file[xml.stem])
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        bb = ET.parse(xml).getroot().find("object/bndbox")
        box = tuple(float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        p = extract_voc_patch(hu, box, source=f"voc:{xml.stem}")
        lesion = p.image[p.mask > 0]
        assert lesion.mean() > -300, (xml.stem, lesion.mean())  # soft-tissue tumour in HU, not lung air
        assert p.mask.sum() > 0.2 * (box[2] - box[0]) * (box[3] - box[1])
        n += 1
    assert n >= 3


@pytest.mark.data
def test_msd_patches_from_file():
    if not MSD.is_file():
        pytest.skip(f"MSD patches not found at {MSD}")
    import h5py

    with h5py.File(MSD, "r") as f:
        images, labels = f["images"][:20], f["labels"][:20]
    made = 0
    for i, (img, lab) in enumerate(zip(images, labels)):
        if lab.sum() == 0:
            with pytest.raises(InputError):
                extract_msd_patch(img, lab, source=f"msd:{i}")
            continue
        p = extract_msd_patch(img, lab, source=f"msd:{i}", crop=True)
        assert p.mask.sum() == int((lab > 0.5).sum())
        made += 1
    assert made >= 10

"""CT patches for the classifier study: tumour-present vs tumour-absent patches cut from a Lung-PET-CT-Dx
patient folder (VOC boxes), and the same cut from synthetic slices with COCO boxes.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from mcfast.errors import InputError
from mcfast.evaluate.config import EvalConfig
from mcfast.evaluate.labeled_images import (CT_WINDOWS, LabeledImages, hu_to_display, label_file,
                                            load_labeled_folder, read_image_file, to_model)
from mcfast.io.windows import HU_MIN


def _voc_boxes(path: Path) -> list[tuple[int, int, int, int]]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(f"{path}: invalid VOC XML ({exc})") from None
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            raise InputError(f"{path}: object without bndbox")
        x0, y0, x1, y1 = (int(float(bb.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x0, y0, x1, y1))
    return boxes


def load_ct_patches(root: str | Path, image_size: int, patch_px: int = 96, window: str = "lung",
                    group_slices: int = 2, negatives_per_positive: float = 1.5, positives_per_box: int = 3,
                    seed: int = 0) -> LabeledImages:
    """Tumour-present vs tumour-absent patches from a Lung-PET-CT-Dx patient folder.

    ``root`` holds ``dicom/<series>/*.dcm`` and ``annotations/<SOPInstanceUID>.xml`` (VOC boxes).
    Positives: patches centred on each tumour box plus ``positives_per_box − 1`` jittered crops.
    Negatives: patches of slices without a box, centred where 20–80 % of the patch is lung
    (−950..−500 HU), i.e. lung with chest wall or mediastinum, as around a tumour.
    Groups are blocks of ``group_slices`` consecutive slice positions (both reconstructions of a
    position fall in one group), so neighbouring slices are not split across train and test.
    """
    import pydicom

    root = Path(root)
    files = sorted((root / "dicom").rglob("*.dcm"))
    if not files:
        raise InputError(f"{root / 'dicom'}: no DICOM files found")
    annotations = {p.stem: _voc_boxes(p) for p in sorted((root / "annotations").glob("*.xml"))}
    rng = np.random.default_rng(seed)
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            hu = ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1.0)) \
                + float(getattr(ds, "RescaleIntercept", 0.0))
            z = float(ds.ImagePositionPatient[2])
        except Exception as exc:  # pydicom raises many types for broken files
            raise InputError(f"{f}: cannot read CT slice ({exc})") from None
        slices.append((f, hu, z, annotations.get(str(ds.SOPInstanceUID), [])))
    positions = sorted({round(z, 2) for _, _, z, _ in slices})
    group_of = {z: i // max(group_slices, 1) for i, z in enumerate(positions)}
    images, labels, groups, names = [], [], [], []
    for f, hu, z, boxes in slices:
        for k, patch in enumerate(tumour_patches(hu, boxes, patch_px, positives_per_box, rng)):
            images.append(patch)
            labels.append(1)
            groups.append(group_of[round(z, 2)])
            names.append(f"{f.parent.name}/{f.stem}#tumour{k}")
    n_neg = int(round(len(images) * negatives_per_positive))
    clear = [s for s in slices if not s[3]]
    if not clear:
        raise InputError(f"{root}: every slice is annotated; no tumour-free slices for negatives")
    candidates: dict[int, np.ndarray] = {}
    for k in range(n_neg):
        j = int(rng.integers(len(clear)))
        f, hu, z, _ = clear[j]
        if j not in candidates:
            candidates[j] = mixed_lung_centres(hu, patch_px)
        if candidates[j].size == 0:
            continue  # a slice above or below the lungs
        cy, cx = np.unravel_index(candidates[j][rng.integers(candidates[j].size)], hu.shape)
        images.append(crop_patch(hu, cy, cx, patch_px))
        labels.append(0)
        groups.append(group_of[round(z, 2)])
        names.append(f"{f.parent.name}/{f.stem}#clear{k}")
    if not labels or min(labels) == 1 or max(labels) == 0:
        raise InputError(f"{root}: need both tumour and tumour-free patches (annotations matched {sum(labels)})")
    model = np.stack([to_model(hu_to_display(p, window), image_size) for p in images])
    return LabeledImages(model, np.array(labels, dtype=np.int64), np.array(groups, dtype=object), names)


def crop_patch(hu: np.ndarray, cy: float, cx: float, patch_px: int) -> np.ndarray:
    """A (patch_px, patch_px) crop centred at (cy, cx), padded with air outside the slice."""
    half = patch_px // 2
    padded = np.pad(hu, half, mode="constant", constant_values=HU_MIN)
    cy, cx = int(cy) + half, int(cx) + half
    return padded[cy - half:cy - half + patch_px, cx - half:cx - half + patch_px]


def tumour_patches(hu: np.ndarray, boxes, patch_px: int, per_box: int, rng: np.random.Generator) -> list:
    """Crops centred on each box (x0, y0, x1, y1) plus ``per_box − 1`` crops jittered by ≤ patch/8."""
    out = []
    for x0, y0, x1, y1 in boxes:
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        offsets = [(0, 0)] + [tuple(rng.integers(-patch_px // 8, patch_px // 8 + 1, size=2))
                              for _ in range(max(per_box, 1) - 1)]
        out += [crop_patch(hu, cy + dy, cx + dx, patch_px) for dy, dx in offsets]
    return out


def mixed_lung_centres(hu: np.ndarray, patch_px: int, avoid_boxes=()) -> np.ndarray:
    """Flat indices of centres whose patch is 20–80 % lung (−950..−500 HU) and misses every box.

    Such patches hold lung with chest wall or mediastinum, like the tumour patches; pure
    parenchyma patches would make the task a brightness test.
    """
    from scipy.ndimage import uniform_filter

    half = patch_px // 2
    lung = ((hu > -950) & (hu < -500)).astype(np.float32)
    frac = uniform_filter(lung, size=patch_px, mode="constant")
    ok = np.zeros_like(lung, dtype=bool)
    ok[half:-half, half:-half] = True
    for x0, y0, x1, y1 in avoid_boxes:  # centres whose patch would overlap the box
        ok[max(0, int(y0) - half):int(y1) + half + 1, max(0, int(x0) - half):int(x1) + half + 1] = False
    return np.flatnonzero(((frac > 0.2) & (frac < 0.8) & ok).ravel())


def load_ct_synthetic(folder: str | Path, cfg: "EvalConfig") -> LabeledImages:
    """Synthetic CT for the patch study: class-labelled patches, or whole slices with COCO boxes.

    With a COCO ``labels.json`` whose images are larger than ``ct_patch_px``, patches are cut
    exactly as from the real slices (tumour crops around each box; tumour-free crops away from
    the boxes, ``ct_negatives_per_positive`` per tumour crop, or 2 from a slice with no box).
    Otherwise each image is one patch with its folder/JSON label.
    """
    d = cfg.data
    folder = Path(folder)
    coco_path = label_file(folder)
    meta = None
    if coco_path is not None:
        try:
            meta = json.loads(coco_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{coco_path}: invalid JSON ({exc})") from None
    if not (isinstance(meta, dict) and "annotations" in meta and "images" in meta):
        return load_labeled_folder(folder, d.image_size, "ct", d.ct_window)
    center, width = CT_WINDOWS[d.ct_window]
    rng = np.random.default_rng(d.split_seed)
    boxes_of: dict = {}
    for a in meta["annotations"]:
        x, y, w, h = a["bbox"]
        boxes_of.setdefault(a["image_id"], []).append((x, y, x + w, y + h))
    images, labels, groups, names = [], [], [], []
    for im in meta["images"]:
        f = folder / im["file_name"]
        if not f.is_file():
            raise InputError(f"{coco_path}: listed image {im['file_name']} not found in {folder}")
        display = read_image_file(f, "ct", d.ct_window)
        if min(display.shape) <= d.ct_patch_px:  # already a patch
            patches = [(display, int(im["id"] in boxes_of))]
        else:
            hu = display * width + (center - width / 2)  # inverse window (saturated outside it)
            boxes = boxes_of.get(im["id"], [])
            pos = tumour_patches(hu, boxes, d.ct_patch_px, d.ct_positives_per_box, rng)
            cand = mixed_lung_centres(hu, d.ct_patch_px, boxes)
            n_neg = int(round(len(pos) * d.ct_negatives_per_positive)) if pos else 2
            neg = [] if cand.size == 0 else [
                crop_patch(hu, *np.unravel_index(cand[rng.integers(cand.size)], hu.shape), d.ct_patch_px)
                for _ in range(n_neg)]
            patches = [(hu_to_display(p, d.ct_window), 1) for p in pos] + \
                      [(hu_to_display(p, d.ct_window), 0) for p in neg]
        for k, (patch, label) in enumerate(patches):
            images.append(to_model(patch, d.image_size))
            labels.append(label)
            groups.append(Path(im["file_name"]).stem)
            names.append(f"{im['file_name']}#{k}")
    if not images:
        raise InputError(f"{folder}: no synthetic CT patches could be cut")
    return LabeledImages(np.stack(images), np.array(labels, dtype=np.int64), np.array(groups, dtype=object), names)

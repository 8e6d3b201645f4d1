"""Labelled images for the evaluation studies: MIAS, Lung-PET-CT-Dx patches, labelled folders of PNG / NPY
(what `mcfast synthesize` writes), in model space at the study's size — read one way for the classifier
study, the realism audit and the memorization audit.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mcfast.errors import InputError
from mcfast.evaluate.config import EvalConfig
from mcfast.evaluate.splits import mias_classes, mias_label_of, mias_woman
from mcfast.io.windows import HU_MIN, WINDOWS, apply_window, model_to_hu

CLASS_NAMES = ("normal", "abnormal")  # label 0, label 1
_CLASS_ALIASES = {"normal": 0, "absent": 0, "negative": 0, "0": 0,
                  "abnormal": 1, "present": 1, "positive": 1, "tumour": 1, "tumor": 1, "1": 1}
# CT conventions of docs/architecture.md: model space <-> HU and the display windows of mcfast.io.
CT_WINDOWS = WINDOWS
PROVENANCE_NAMES = ("provenance.json", "recipe.json", "synthesis.json")
# Label files looked for in a folder, in order; coco.json is what `mcfast synthesize` writes.
LABEL_FILES = ("labels.json", "coco.json")


def _label_file(folder: Path) -> Path | None:
    return next((folder / n for n in LABEL_FILES if (folder / n).is_file()), None)


@dataclass
class LabeledImages:
    """Images in model space (N, H, W) float32 in [-1, 1], labels 0/1, split groups, names."""
    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    names: list

    def __len__(self) -> int:
        return int(self.labels.size)

    def subset(self, idx) -> "LabeledImages":
        idx = np.asarray(idx, dtype=np.int64)
        return LabeledImages(self.images[idx], self.labels[idx], self.groups[idx], [self.names[i] for i in idx])


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of a 2-D float array to (size, size)."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    if t.shape[-2:] == (size, size):
        return t[0, 0].numpy().copy()
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()


def _hu_to_display(hu: np.ndarray, window: str) -> np.ndarray:
    center, width = CT_WINDOWS[window]
    return np.asarray(apply_window(np.asarray(hu, np.float64), center, width), dtype=np.float64)


def read_image_file(path: Path, modality: str = "mg", ct_window: str = "lung") -> np.ndarray:
    """One PNG or NPY as a 2-D display image in [0, 1].

    PNG and integer NPY are scaled by their dtype's maximum (they hold display values; CT
    PNGs are expected in the study's CT window). Float NPY are model space [-1, 1]: for MG
    mapped linearly to [0, 1], for CT converted to HU and windowed like the real slices.
    """
    suffix = path.suffix.lower()
    if suffix == ".png":
        from PIL import Image
        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        except OSError as exc:
            raise InputError(f"{path}: cannot read PNG ({exc})") from None
        if arr.ndim == 3:
            if arr.shape[2] in (3, 4) and np.ptp(arr[..., :3].astype(np.int64), axis=2).max() == 0:
                arr = arr[..., 0]  # grey stored as RGB(A)
            else:
                raise InputError(f"{path}: expected a grayscale image, got shape {arr.shape}")
    elif suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read NPY ({exc})") from None
        arr = np.squeeze(arr)
    else:
        raise InputError(f"{path}: unsupported image type {suffix!r} (PNG or NPY)")
    if arr.ndim != 2:
        raise InputError(f"{path}: expected one 2-D image, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float64) / np.iinfo(arr.dtype).max
    if np.issubdtype(arr.dtype, np.bool_):
        return arr.astype(np.float64)
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: contains NaN or infinity")
    if arr.min() < -1.001 or arr.max() > 1.001:
        raise InputError(f"{path}: float NPY must be model space [-1, 1], got range [{arr.min():.3g}, {arr.max():.3g}]")
    arr = np.clip(arr, -1.0, 1.0)
    if modality == "ct":
        return _hu_to_display(model_to_hu(arr), ct_window)
    return (arr + 1) / 2


def _to_model(display: np.ndarray, size: int) -> np.ndarray:
    return (resize(display, size) * 2 - 1).astype(np.float32)


def _parse_label(value, where: str) -> int:
    key = str(value).strip().lower()
    if key not in _CLASS_ALIASES:
        raise InputError(f"{where}: unknown label {value!r} (use abnormal/normal or 1/0)")
    return _CLASS_ALIASES[key]


def _folder_entries(folder: Path) -> list[tuple[Path, int, str]]:
    """(file, label, group) for a labelled folder: labels.json / coco.json (mapping or COCO) or class subfolders."""
    labels_json = _label_file(folder)
    if labels_json is not None:
        try:
            meta = json.loads(labels_json.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{labels_json}: invalid JSON ({exc})") from None
        entries = []
        if isinstance(meta, dict) and "images" in meta and "annotations" in meta:
            # COCO: an image with at least one annotation shows a lesion.
            annotated = {a.get("image_id") for a in meta["annotations"]}
            for im in meta["images"]:
                f = folder / im["file_name"]
                entries.append((f, int(im["id"] in annotated), str(im.get("group", im["file_name"]))))
        elif isinstance(meta, dict) and isinstance(meta.get("images"), list):
            for i, im in enumerate(meta["images"]):
                if not isinstance(im, dict) or "file" not in im or "label" not in im:
                    raise InputError(f"{labels_json}: images[{i}] needs 'file' and 'label'")
                entries.append((folder / im["file"], _parse_label(im["label"], f"{labels_json}: images[{i}]"),
                                str(im.get("group", Path(im["file"]).stem))))
        elif isinstance(meta, dict):
            for name, label in meta.items():
                entries.append((folder / name, _parse_label(label, f"{labels_json}: {name}"), Path(name).stem))
        else:
            raise InputError(f"{labels_json}: expected a {{file: label}} mapping, {{'images': [...]}} or COCO JSON")
        for f, _, _ in entries:
            if not f.is_file():
                raise InputError(f"{labels_json}: listed image {f.name} not found in {folder}")
        return entries
    entries = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name.lower() not in _CLASS_ALIASES:
            continue
        label = _CLASS_ALIASES[sub.name.lower()]
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() in (".png", ".npy"):
                entries.append((f, label, f"{sub.name}/{f.stem}"))
    if not entries:
        raise InputError(f"{folder}: no labelled images (need labels.json, coco.json or subfolders abnormal/ and normal/ "
                         "with PNG or NPY files)")
    return entries


def load_labeled_folder(folder: str | Path, image_size: int, modality: str = "mg",
                        ct_window: str = "lung") -> LabeledImages:
    """Every image of a labelled folder, resized to ``image_size`` in model space."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: image folder not found")
    entries = _folder_entries(folder)
    images = np.stack([_to_model(read_image_file(f, modality, ct_window), image_size) for f, _, _ in entries])
    return LabeledImages(images, np.array([e[1] for e in entries], dtype=np.int64),
                         np.array([e[2] for e in entries], dtype=object),
                         [str(f.relative_to(folder)) for f, _, _ in entries])


def mias_index(root: str | Path, abnormal: str = "any") -> tuple[list[Path], dict[str, int]]:
    """The MIAS films :func:`load_mias` reads, in its order, and their labels — without the pixels
    (what a split needs: ``mias_woman(f.stem)`` is the group)."""
    root = Path(root)
    classes = mias_classes(root / "Info.txt")
    files = sorted((root / "images").glob("mdb*.png")) + sorted((root / "images").glob("mdb*.pgm"))
    if not files:
        raise InputError(f"{root / 'images'}: no mdbNNN.png images found")
    missing = [f.stem for f in files if f.stem not in classes]
    if missing:
        raise InputError(f"{root / 'Info.txt'}: no label for {', '.join(missing[:5])}")
    labels = {f.stem: mias_label_of(classes[f.stem], abnormal) for f in files}
    files = [f for f in files if labels[f.stem] is not None]
    return files, {f.stem: int(labels[f.stem]) for f in files}


def load_mias(root: str | Path, image_size: int, framing: str = "film", abnormal: str = "any") -> LabeledImages:
    """MIAS images (``images/mdbNNN.png``) with abnormal/normal labels from Info.txt, grouped by woman.

    ``framing`` "film" shrinks the whole film; "breast" crops to the breast with the chest wall on the
    left as ``mcfast.io.mammo.prepare_mammogram`` does for synthesis, so real and synthetic images match.
    ``abnormal`` is the label rule of :func:`mcfast.evaluate.splits.mias_label_of` ("mass" leaves out
    films whose only abnormalities are not masses).
    """
    files, labels = mias_index(root, abnormal)
    from PIL import Image
    images = []
    for f in files:
        with Image.open(f) as im:
            arr = np.asarray(im)
        unit = arr.astype(np.float64) / np.iinfo(arr.dtype).max
        if framing == "breast":
            from mcfast.io.mammo import prepare_mammogram

            unit = prepare_mammogram(unit.astype(np.float32), image_size)[0]
        images.append(_to_model(unit, image_size))
    return LabeledImages(np.stack(images), np.array([labels[f.stem] for f in files], dtype=np.int64),
                         np.array([mias_woman(f.stem) for f in files], dtype=object), [f.stem for f in files])


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
    model = np.stack([_to_model(_hu_to_display(p, window), image_size) for p in images])
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
    coco_path = _label_file(folder)
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
            patches = [(_hu_to_display(p, d.ct_window), 1) for p in pos] + \
                      [(_hu_to_display(p, d.ct_window), 0) for p in neg]
        for k, (patch, label) in enumerate(patches):
            images.append(_to_model(patch, d.image_size))
            labels.append(label)
            groups.append(Path(im["file_name"]).stem)
            names.append(f"{im['file_name']}#{k}")
    if not images:
        raise InputError(f"{folder}: no synthetic CT patches could be cut")
    return LabeledImages(np.stack(images), np.array(labels, dtype=np.int64), np.array(groups, dtype=object), names)


def load_real(cfg: EvalConfig) -> LabeledImages:
    """The real set named by ``cfg.data``."""
    d = cfg.data
    if d.dataset == "mias":
        return load_mias(d.root, d.image_size, d.mg_framing, d.abnormal)
    if d.dataset == "ct":
        return load_ct_patches(d.root, d.image_size, d.ct_patch_px, d.ct_window, d.ct_group_slices,
                               d.ct_negatives_per_positive, d.ct_positives_per_box, d.split_seed)
    return load_labeled_folder(d.root, d.image_size, "mg", d.ct_window)


def load_synthetic(cfg: EvalConfig, synthetic_dir: str | Path | None = None) -> LabeledImages | None:
    folder = synthetic_dir or cfg.data.synthetic_dir
    if not folder:
        return None
    if cfg.data.dataset == "ct":
        return load_ct_synthetic(folder, cfg)
    return load_labeled_folder(folder, cfg.data.image_size, "mg", cfg.data.ct_window)


def read_provenance(folder: str | Path | None) -> dict | None:
    """The synthetic folder's provenance JSON (how the images were made), if it has one."""
    if not folder:
        return None
    for name in PROVENANCE_NAMES:
        p = Path(folder) / name
        if p.is_file():
            try:
                return {"file": str(p), "content": json.loads(p.read_text())}
            except json.JSONDecodeError as exc:
                raise InputError(f"{p}: invalid JSON ({exc})") from None
    return None

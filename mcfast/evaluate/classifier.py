"""Classifier augmentation study (the paper's Table 1): real-only vs real + synthetic increments.

A timm ConvNeXt (``pretrained=False``, ``in_chans=1``, one logit) is trained on real images,
then on real plus synthetic images adding +33 %, +67 %, +100 %, +133 % of the real training
count, for several seeds; AUC and F1 (threshold chosen on validation) with stratified
bootstrap intervals are measured on the real test set. Splits are made per patient/woman
(:mod:`mcfast.evaluate.splits`). The data sources (MIAS, Lung-PET-CT-Dx patches, labelled
folders of PNG/NPY) and the configuration live here too, so the realism and memorization
audits read images exactly the same way.
"""
from __future__ import annotations

import copy
import json
import math
import platform
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mcfast.errors import InputError
from mcfast.evaluate.metrics import best_f1_threshold, bootstrap_interval, f1_score, roc_auc
from mcfast.evaluate.splits import SPLIT_NAMES, group_split, mias_labels, mias_woman
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


# --------------------------------------------------------------------------- configuration
@dataclass
class DataConfig:
    dataset: str = "mias"              # "mias" | "ct" | "folder"
    root: str = "../shared/data/mias"  # MIAS folder, Lung-PET-CT-Dx patient folder, or labelled folder
    image_size: int = 128
    synthetic_dir: str = ""            # labelled folder of synthetic images ("" = none)
    split_seed: int = 0
    split_fractions: list = field(default_factory=lambda: [0.6, 0.2, 0.2])
    ct_window: str = "lung"
    # "film": the whole 1024² MIAS film shrunk; "breast": cropped to the breast, chest wall left
    # (mcfast.io.mammo.prepare_mammogram) — the framing of mcfast's synthetic mammograms.
    mg_framing: str = "film"
    ct_patch_px: int = 96              # native-resolution patch side for the CT variant
    ct_group_slices: int = 2           # consecutive slice positions that form one split group
    ct_negatives_per_positive: float = 1.5
    ct_positives_per_box: int = 3


@dataclass
class TrainConfig:
    model: str = "convnext_atto"
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    augment: bool = True


@dataclass
class StudyConfig:
    name: str = "classifier_study"
    output_dir: str = "runs/eval_classifier"
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    increments: list = field(default_factory=lambda: [0.0, 0.33, 0.67, 1.0, 1.33])
    n_bootstrap: int = 1000
    ci: float = 0.95
    threads: int = 1


@dataclass
class RealismConfig:
    model: str = "convnext_atto"
    epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-3
    test_fraction: float = 0.5
    seed: int = 0
    feature_epochs: int = 20           # autoencoder epochs for the Fréchet features
    msssim_pairs: int = 200


@dataclass
class MemorizationConfig:
    max_shift: int = 8                 # pixels, at image_size
    threshold: float = 0.95            # NCC above which a pair is flagged
    highpass_sigma: float = 0.0        # > 0: compare image − Gaussian blur (texture, not silhouette)
    top_k: int = 8
    reference: str = "all"             # "all" real images or only the "train" split


@dataclass
class EvalConfig:
    study: StudyConfig = field(default_factory=StudyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    realism: RealismConfig = field(default_factory=RealismConfig)
    memorization: MemorizationConfig = field(default_factory=MemorizationConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _fill(cls, values: dict, where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    obj = cls()
    for key, value in values.items():
        default = getattr(obj, key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise InputError(f"{where}.{key}: expected true/false, got {value!r}")
        elif isinstance(default, (int, float)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InputError(f"{where}.{key}: expected a number, got {value!r}")
            if isinstance(default, int):
                if not float(value).is_integer():
                    raise InputError(f"{where}.{key}: expected an integer, got {value!r}")
                value = int(value)
            else:
                value = float(value)
        if isinstance(default, str) and not isinstance(value, str):
            raise InputError(f"{where}.{key}: expected a string, got {value!r}")
        if isinstance(default, list) and not isinstance(value, list):
            raise InputError(f"{where}.{key}: expected a list, got {value!r}")
        setattr(obj, key, value)
    return obj


def load_config(path: str | Path) -> EvalConfig:
    """Read an evaluation TOML (sections ``study``, ``data``, ``train``, ``realism``, ``memorization``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: invalid TOML ({exc})") from None
    sections = {f.name: f.type for f in fields(EvalConfig)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise InputError(f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sections)}")
    cfg = EvalConfig(**{name: _fill(type(getattr(EvalConfig(), name)), raw.get(name, {}), f"{path}[{name}]")
                        for name in sections})
    validate_config(cfg, str(path))
    return cfg


def validate_config(cfg: EvalConfig, where: str = "config") -> None:
    d, s, t = cfg.data, cfg.study, cfg.train
    if d.dataset not in ("mias", "ct", "folder"):
        raise InputError(f"{where}: data.dataset must be 'mias', 'ct' or 'folder', got {d.dataset!r}")
    if d.image_size < 8:
        raise InputError(f"{where}: data.image_size must be >= 8, got {d.image_size}")
    if d.mg_framing not in ("film", "breast"):
        raise InputError(f"{where}: data.mg_framing must be 'film' or 'breast', got {d.mg_framing!r}")
    if d.ct_window not in CT_WINDOWS:
        raise InputError(f"{where}: data.ct_window must be one of {sorted(CT_WINDOWS)}, got {d.ct_window!r}")
    if not s.seeds or any(not isinstance(x, int) for x in s.seeds):
        raise InputError(f"{where}: study.seeds must be a non-empty list of integers, got {s.seeds!r}")
    if not s.increments or any(not isinstance(x, (int, float)) or x < 0 for x in s.increments):
        raise InputError(f"{where}: study.increments must be non-negative numbers, got {s.increments!r}")
    if t.epochs < 1 or t.batch_size < 1 or t.lr <= 0:
        raise InputError(f"{where}: train.epochs, train.batch_size and train.lr must be positive")
    if cfg.memorization.highpass_sigma < 0 or cfg.memorization.max_shift < 0:
        raise InputError(f"{where}: memorization.highpass_sigma and max_shift must be >= 0")
    if cfg.memorization.reference not in ("all", "train"):
        raise InputError(f"{where}: memorization.reference must be 'all' or 'train'")
    if not 0 < cfg.realism.test_fraction < 1:
        raise InputError(f"{where}: realism.test_fraction must be in (0, 1)")


# --------------------------------------------------------------------------- images
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


def load_mias(root: str | Path, image_size: int, framing: str = "film") -> LabeledImages:
    """MIAS images (``images/mdbNNN.png``) with abnormal/normal labels from Info.txt, grouped by woman.

    ``framing`` "film" shrinks the whole film; "breast" crops to the breast with the chest wall on the
    left as ``mcfast.io.mammo.prepare_mammogram`` does for synthesis, so real and synthetic images match.
    """
    root = Path(root)
    labels = mias_labels(root / "Info.txt")
    files = sorted((root / "images").glob("mdb*.png")) + sorted((root / "images").glob("mdb*.pgm"))
    if not files:
        raise InputError(f"{root / 'images'}: no mdbNNN.png images found")
    missing = [f.stem for f in files if f.stem not in labels]
    if missing:
        raise InputError(f"{root / 'Info.txt'}: no label for {', '.join(missing[:5])}")
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
        return load_mias(d.root, d.image_size, d.mg_framing)
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


# --------------------------------------------------------------------------- training
def create_classifier(name: str, seed: int) -> torch.nn.Module:
    """A timm model from scratch (no downloaded weights), one input channel, one logit."""
    import timm

    try:
        with torch.random.fork_rng(devices=[]):  # timm initialises from the global RNG
            torch.manual_seed(seed)
            return timm.create_model(name, pretrained=False, in_chans=1, num_classes=1)
    except RuntimeError as exc:
        raise InputError(f"model {name!r}: {exc}") from None


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and small translations (reflect-padded), per image."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = max(1, x.shape[-1] // 16)
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    out = torch.empty_like(x)
    shifts = torch.randint(0, 2 * pad + 1, (x.shape[0], 2), generator=g)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = xp[i, :, dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
    return out


@torch.no_grad()
def predict_scores(model: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Sigmoid probabilities of the positive class for (N, H, W) model-space images."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).float()[:, None]
        out.append(torch.sigmoid(model(x)[:, 0]).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def train_binary_classifier(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None,
                            y_val: np.ndarray | None, settings: TrainConfig, seed: int,
                            progress: Callable[[str], None] | None = None) -> tuple[torch.nn.Module, dict]:
    """Train ``settings.model`` with AdamW + cosine decay and class-balanced BCE.

    With validation data, the weights of the epoch with the best validation AUC are kept
    (the first best on ties). Returns the model and a history dict.
    """
    if len(np.unique(y_train)) < 2:
        raise InputError("training set needs both classes")
    g = torch.Generator().manual_seed(seed)
    model = create_classifier(settings.model, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(y_train) / settings.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs * steps_per_epoch)
    n_pos = float(y_train.sum())
    pos_weight = torch.tensor([(len(y_train) - n_pos) / n_pos])
    x_all = torch.from_numpy(x_train).float()[:, None]
    y_all = torch.from_numpy(y_train).float()
    history = {"train_loss": [], "val_auc": [], "best_epoch": None}
    best_auc, best_state = -1.0, None
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(y_all), generator=g)
        total = 0.0
        for i in range(0, len(order), settings.batch_size):
            idx = order[i:i + settings.batch_size]
            x = _augment(x_all[idx], g) if settings.augment else x_all[idx]
            loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y_all[idx], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history["train_loss"].append(total / len(y_all))
        if x_val is not None and len(x_val):
            auc = roc_auc(y_val, predict_scores(model, x_val))
            history["val_auc"].append(auc)
            if np.isfinite(auc) and auc > best_auc:
                best_auc, best_state = auc, copy.deepcopy(model.state_dict())
                history["best_epoch"] = epoch + 1
        if progress:
            va = f", val AUC {history['val_auc'][-1]:.3f}" if history["val_auc"] else ""
            progress(f"  epoch {epoch + 1}/{settings.epochs}: loss {history['train_loss'][-1]:.4f}{va}")
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        history["best_epoch"] = settings.epochs
    return model, history


# --------------------------------------------------------------------------- the study
def choose_synthetic(synthetic: LabeledImages, n: int, seed: int) -> np.ndarray:
    """The first ``n`` of a seeded permutation: increments are nested (+33 % ⊂ +67 % ⊂ ...)."""
    order = np.random.default_rng(seed).permutation(len(synthetic))
    return order[:min(n, len(synthetic))]


def run_classifier_study(cfg: EvalConfig, real: LabeledImages, synthetic: LabeledImages | None,
                         progress: Callable[[str], None] | None = None) -> dict:
    """Train and evaluate every (increment, seed); return the results dict (see docs/evaluation.md)."""
    t0 = time.time()
    say = progress or (lambda msg: None)
    splits = group_split(real.labels, real.groups, cfg.data.split_fractions, cfg.data.split_seed)
    tr, va, te = (real.subset(splits[k]) for k in SPLIT_NAMES)
    for name, part in zip(SPLIT_NAMES, (tr, va, te)):
        if len(np.unique(part.labels)) < 2:
            raise InputError(f"{name} split has only one class ({len(part)} images); use more data or other fractions")
    increments = sorted(float(x) for x in cfg.study.increments)
    rows, skipped = [], []
    for inc in increments:
        n_syn_wanted = int(round(inc * len(tr)))
        if n_syn_wanted > 0 and synthetic is None:
            skipped.append({"increment": inc, "reason": "no synthetic_dir given"})
            continue
        seed_results, test_scores = [], []
        for seed in cfg.study.seeds:
            say(f"increment +{inc:.0%} ({n_syn_wanted} synthetic), seed {seed}")
            if n_syn_wanted > 0:
                pick = choose_synthetic(synthetic, n_syn_wanted, seed)
                x_train = np.concatenate([tr.images, synthetic.images[pick]])
                y_train = np.concatenate([tr.labels, synthetic.labels[pick]])
            else:
                pick = np.zeros(0, dtype=np.int64)
                x_train, y_train = tr.images, tr.labels
            model, hist = train_binary_classifier(x_train, y_train, va.images, va.labels, cfg.train, seed, say)
            val_scores = predict_scores(model, va.images)
            threshold = best_f1_threshold(va.labels, val_scores)
            scores = predict_scores(model, te.images)
            test_scores.append(scores)
            y = te.labels
            auc_lo, auc_hi = bootstrap_interval(lambda i: roc_auc(y[i], scores[i]), y,
                                                cfg.study.n_bootstrap, cfg.study.ci, seed)
            f1_lo, f1_hi = bootstrap_interval(lambda i: f1_score(y[i], scores[i] >= threshold), y,
                                              cfg.study.n_bootstrap, cfg.study.ci, seed)
            seed_results.append({
                "seed": seed, "n_synthetic": int(pick.size),
                "n_synthetic_abnormal": int(synthetic.labels[pick].sum()) if pick.size else 0,
                "auc": roc_auc(y, scores), "auc_lo": auc_lo, "auc_hi": auc_hi,
                "f1": f1_score(y, scores >= threshold), "f1_lo": f1_lo, "f1_hi": f1_hi,
                "threshold": threshold, "best_epoch": hist["best_epoch"],
                "val_auc": max(hist["val_auc"]) if hist["val_auc"] else None,
                "train_loss": hist["train_loss"], "test_scores": [round(float(s), 6) for s in scores],
            })
        rows.append(_aggregate(inc, len(tr), n_syn_wanted, seed_results, test_scores, te.labels, cfg))
    return {
        "name": cfg.study.name,
        "config": cfg.to_dict(),
        "splits": {k: {"n": int(len(p)), "abnormal": int(p.labels.sum()), "groups": int(len(set(p.groups.tolist())))}
                   for k, p in zip(SPLIT_NAMES, (tr, va, te))},
        "test_names": te.names,
        "test_labels": te.labels.tolist(),
        "synthetic_available": 0 if synthetic is None else len(synthetic),
        "rows": rows,
        "skipped": skipped,
        "provenance": read_provenance(cfg.data.synthetic_dir),
        "machine": machine_info(),
        "elapsed_s": round(time.time() - t0, 1),
    }


def _aggregate(inc, n_real, n_wanted, seed_results, test_scores, y, cfg) -> dict:
    """Mean over seeds; the interval is the bootstrap (over test images) of the seed-mean metric."""
    thresholds = [r["threshold"] for r in seed_results]

    def mean_auc(idx):
        return float(np.mean([roc_auc(y[idx], s[idx]) for s in test_scores]))

    def mean_f1(idx):
        return float(np.mean([f1_score(y[idx], s[idx] >= t) for s, t in zip(test_scores, thresholds)]))

    auc_lo, auc_hi = bootstrap_interval(mean_auc, y, cfg.study.n_bootstrap, cfg.study.ci, 12345)
    f1_lo, f1_hi = bootstrap_interval(mean_f1, y, cfg.study.n_bootstrap, cfg.study.ci, 12345)
    aucs = np.array([r["auc"] for r in seed_results])
    f1s = np.array([r["f1"] for r in seed_results])
    n_syn = int(np.mean([r["n_synthetic"] for r in seed_results]))
    return {
        "increment": inc, "n_real_train": n_real, "n_synthetic_wanted": n_wanted, "n_synthetic": n_syn,
        "capped": n_syn < n_wanted, "synthetic_share": n_syn / (n_real + n_syn),
        "auc_mean": float(aucs.mean()), "auc_std": float(aucs.std(ddof=1)) if aucs.size > 1 else 0.0,
        "auc_lo": auc_lo, "auc_hi": auc_hi,
        "f1_mean": float(f1s.mean()), "f1_std": float(f1s.std(ddof=1)) if f1s.size > 1 else 0.0,
        "f1_lo": f1_lo, "f1_hi": f1_hi,
        "seeds": seed_results,
    }


def machine_info() -> dict:
    import os

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available(), "python": platform.python_version()}


def results_table_markdown(results: dict) -> str:
    """The study table in markdown (one row per increment; mean over seeds, bootstrap interval)."""
    ci = int(round(results["config"]["study"]["ci"] * 100))
    seeds = results["config"]["study"]["seeds"]
    lines = [f"| synthetic added | real train | synthetic | share | AUC mean ± sd | AUC {ci}% CI | F1 mean ± sd | F1 {ci}% CI |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        cap = " (capped)" if r["capped"] else ""
        lines.append(f"| +{r['increment']:.0%} | {r['n_real_train']} | {r['n_synthetic']}{cap} | "
                     f"{r['synthetic_share']:.2f} | {r['auc_mean']:.3f} ± {r['auc_std']:.3f} | "
                     f"[{r['auc_lo']:.3f}, {r['auc_hi']:.3f}] | {r['f1_mean']:.3f} ± {r['f1_std']:.3f} | "
                     f"[{r['f1_lo']:.3f}, {r['f1_hi']:.3f}] |")
    for s in results["skipped"]:
        lines.append(f"| +{s['increment']:.0%} | – | – | – | pending: {s['reason']} | | | |")
    sp = results["splits"]
    lines.append("")
    lines.append(f"Seeds {seeds}; test set {sp['test']['n']} images ({sp['test']['abnormal']} abnormal, "
                 f"{sp['test']['groups']} split groups); intervals: stratified bootstrap over test images of the "
                 f"seed-mean metric ({results['config']['study']['n_bootstrap']} resamples). "
                 "F1 at the threshold that maximised F1 on the validation split.")
    return "\n".join(lines) + "\n"


def write_results(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """results.json, table.md, auc_vs_synthetic.png and the synthetic provenance copy."""
    from mcfast.atomic import write_text
    from mcfast.evaluate.plots import plot_auc_vs_share

    out = Path(out_dir)
    paths = {"json": out / "results.json", "table": out / "table.md", "plot": out / "auc_vs_synthetic.png"}
    write_text(paths["json"], json.dumps(results, indent=1))
    write_text(paths["table"], f"# {results['name']}\n\n" + results_table_markdown(results))
    plot_auc_vs_share(results, paths["plot"])
    if results.get("provenance"):
        paths["provenance"] = out / "synthetic_provenance.json"
        write_text(paths["provenance"], json.dumps(results["provenance"]["content"], indent=1))
    return paths

"""Labelled images in model space: the :class:`LabeledImages` container, one PNG / NPY file as a display
image, and labelled folders (``labels.json``, COCO ``coco.json`` as `mcfast synthesize` writes it, or
``abnormal/`` and ``normal/`` subfolders) resized to a study's size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mcfast.errors import InputError
from mcfast.io.windows import WINDOWS, apply_window, model_to_hu

_CLASS_ALIASES = {"normal": 0, "absent": 0, "negative": 0, "0": 0,
                  "abnormal": 1, "present": 1, "positive": 1, "tumour": 1, "tumor": 1, "1": 1}
# CT conventions of docs/architecture.md: model space <-> HU and the display windows of mcfast.io.
CT_WINDOWS = WINDOWS
# Label files looked for in a folder, in order; coco.json is what `mcfast synthesize` writes.
LABEL_FILES = ("labels.json", "coco.json")


def label_file(folder: Path) -> Path | None:
    """The first of :data:`LABEL_FILES` that ``folder`` holds, or None."""
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


def hu_to_display(hu: np.ndarray, window: str) -> np.ndarray:
    """HU → [0, 1] through the named display window of :data:`CT_WINDOWS`."""
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
        return hu_to_display(model_to_hu(arr), ct_window)
    return (arr + 1) / 2


def to_model(display: np.ndarray, size: int) -> np.ndarray:
    """A [0, 1] display image resized to (size, size) in model space [-1, 1], float32."""
    return (resize(display, size) * 2 - 1).astype(np.float32)


def _parse_label(value, where: str) -> int:
    key = str(value).strip().lower()
    if key not in _CLASS_ALIASES:
        raise InputError(f"{where}: unknown label {value!r} (use abnormal/normal or 1/0)")
    return _CLASS_ALIASES[key]


def _folder_entries(folder: Path) -> list[tuple[Path, int, str]]:
    """(file, label, group) for a labelled folder: labels.json / coco.json (mapping or COCO) or class subfolders."""
    labels_json = label_file(folder)
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
    images = np.stack([to_model(read_image_file(f, modality, ct_window), image_size) for f, _, _ in entries])
    return LabeledImages(images, np.array([e[1] for e in entries], dtype=np.int64),
                         np.array([e[2] for e in entries], dtype=object),
                         [str(f.relative_to(folder)) for f, _, _ in entries])

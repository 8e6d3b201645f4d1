"""Annotated CT crops for the segmentation study: real MSD tumour patches grouped into cases, LIDC nodule
shapes, and synthetic crops made by mcfast (lesions inserted into real-model CT, exact masks), cached.

Network input: HU through a display window (``data.window``, default the lung window) mapped to [-1, 1].
The MSD patches are stored in [0, 1]; they are read back to HU with the range the synthesis pipeline uses
for them (:data:`mcfast.synthesis.sources.MSD_HU_RANGE`), so real and synthetic crops share one mapping.

Patients: the MSD file holds 130 patches without case ids; its patches come in blocks of 10 consecutive
patches of one tumour (in the shipped file 95 % of the tumour patches have their most similar patch, by
normalised cross-correlation, in their own block). :func:`msd_cases` groups by block and merges blocks
whose patches mostly resemble another block's, so that a split by group is a split by case.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage
from skimage.transform import resize

from mcfast.errors import InputError

LIDC_MIN_PIXELS = 9       # LIDC consensus masks smaller than this (a few pixels) are not used as shapes
LESION_CANVAS = 48        # side of the lesion-patch file (the MSD patch size)


@dataclass
class SegCrops:
    """Crops (N, H, W) float32 in [-1, 1], masks (N, H, W) uint8, one group (patient/case) per crop."""

    images: np.ndarray
    masks: np.ndarray
    groups: np.ndarray
    names: list

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "SegCrops":
        idx = np.asarray(idx, dtype=np.int64)
        return SegCrops(self.images[idx], self.masks[idx], self.groups[idx], [self.names[i] for i in idx])

    @staticmethod
    def concat(parts: list["SegCrops"]) -> "SegCrops":
        return SegCrops(np.concatenate([p.images for p in parts]), np.concatenate([p.masks for p in parts]),
                        np.concatenate([p.groups for p in parts]), [n for p in parts for n in p.names])


def window_input(hu: np.ndarray, window: str) -> np.ndarray:
    """HU → the network's input: ``2 · apply_window(hu) − 1`` (float32)."""
    from mcfast.io.windows import WINDOWS, apply_window

    if window not in WINDOWS:
        raise InputError(f"unknown CT window {window!r}; expected one of {', '.join(sorted(WINDOWS))}")
    c, w = WINDOWS[window]
    return (2.0 * np.asarray(apply_window(hu, c, w), dtype=np.float32) - 1.0).astype(np.float32)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (bilinear) and mask (bilinear, > 0.5; a lesion never vanishes) at ``size``²."""
    if image.shape == (size, size):
        return image.astype(np.float32), (mask > 0).astype(np.uint8)
    img = resize(image, (size, size), order=1, anti_aliasing=image.shape[0] > size, preserve_range=True)
    m = resize((mask > 0).astype(np.float32), (size, size), order=1, anti_aliasing=False, preserve_range=True)
    out = m > 0.5
    if mask.any() and not out.any():
        out.flat[int(np.argmax(m))] = True
    return img.astype(np.float32), out.astype(np.uint8)


# --------------------------------------------------------------------------- real MSD patches
def msd_cases(images: np.ndarray, masks: np.ndarray, block: int, merge_fraction: float) -> np.ndarray:
    """Case index of every MSD patch: ``index // block``, then blocks merged (union-find) when at least
    ``merge_fraction`` of one block's tumour patches have their nearest patch (NCC) in the other block."""
    n = len(images)
    case = np.arange(n) // block
    if n < 2 or merge_fraction <= 0:
        return case
    flat = images.reshape(n, -1).astype(np.float64)
    z = (flat - flat.mean(1, keepdims=True)) / np.maximum(flat.std(1, keepdims=True), 1e-6)
    ncc = z @ z.T / z.shape[1]
    np.fill_diagonal(ncc, -np.inf)
    nearest = case[np.argmax(ncc, axis=1)]
    tumour = masks.reshape(n, -1).any(1)
    parent = {int(c): int(c) for c in np.unique(case)}

    def root(c):
        while parent[c] != c:
            c = parent[c]
        return c

    for c in np.unique(case):
        members = (case == c) & tumour
        if not members.any():
            continue
        others, counts = np.unique(nearest[members], return_counts=True)
        for o, k in zip(others, counts):
            if o != c and k / members.sum() >= merge_fraction:
                parent[root(int(o))] = root(int(c))
    return np.array([root(int(c)) for c in case])


def load_msd_crops(path: str | Path, image_size: int, window: str, block: int, merge_fraction: float) -> SegCrops:
    """The MSD lung-tumour patches as windowed crops with their masks, grouped by case (``msd-case-NN``)."""
    from mcfast.io.annotations import read_msd_patches
    from mcfast.synthesis.sources import MSD_HU_RANGE

    msd = read_msd_patches(path)
    images, masks = np.asarray(msd.images, np.float32), np.asarray(msd.masks, np.uint8)
    cases = msd_cases(images, masks, block, merge_fraction)
    lo, hi = MSD_HU_RANGE
    out_i, out_m = [], []
    for img, m in zip(images, masks):
        x, y = resize_pair(window_input(lo + (hi - lo) * img, window), m, image_size)
        out_i.append(x)
        out_m.append(y)
    return SegCrops(np.stack(out_i), np.stack(out_m), np.array([f"msd-case-{c:02d}" for c in cases]),
                    [f"msd:{k}" for k in range(len(images))])


# --------------------------------------------------------------------------- lesion shapes for insertion
def lidc_shapes(root: str | Path, bg: float, fg: float, fg_std: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """LIDC consensus masks as lesion patches on a ``LESION_CANVAS``² canvas in MSD units ([0, 1]).

    Only the masks are used (LIDC intensities are not HU): the nodule is filled with the MSD training
    tumours' median ``fg`` (plus smoothed noise of ``fg_std``), the surround with their median lung ``bg``.
    """
    files = sorted(Path(root).glob("*/*.npz"))
    if not files:
        raise InputError(f"{root}: no LIDC nodule slices (<patient>/<name>.npz) found")
    rng = np.random.default_rng(seed)
    images, masks = [], []
    inner = LESION_CANVAS - 8
    for f in files:
        with np.load(f) as d:
            m = np.asarray(d["mask"], bool)
        if m.sum() < LIDC_MIN_PIXELS:
            continue
        rows, cols = np.nonzero(m)
        m = m[max(0, rows.min() - 4):rows.max() + 5, max(0, cols.min() - 4):cols.max() + 5]
        if max(m.shape) > inner:
            scale = inner / max(m.shape)
            m = resize(m.astype(np.float32), (max(3, round(m.shape[0] * scale)), max(3, round(m.shape[1] * scale))),
                       order=1, preserve_range=True) > 0.5
        canvas = np.zeros((LESION_CANVAS, LESION_CANVAS), bool)
        r0, c0 = (LESION_CANVAS - m.shape[0]) // 2, (LESION_CANVAS - m.shape[1]) // 2
        canvas[r0:r0 + m.shape[0], c0:c0 + m.shape[1]] = m
        soft = ndimage.gaussian_filter(canvas.astype(np.float32), 0.7)
        noise = ndimage.gaussian_filter(rng.standard_normal(canvas.shape), 1.0) * fg_std * 2
        images.append(np.clip(bg + (fg - bg) * soft + noise * soft, 0, 1).astype(np.float32))
        masks.append(canvas.astype(np.uint8))
    if not images:
        raise InputError(f"{root}: no LIDC mask has {LIDC_MIN_PIXELS} pixels or more")
    return np.stack(images), np.stack(masks)


def write_lesion_file(path: Path, images: np.ndarray, masks: np.ndarray) -> None:
    """An HDF5 file in the MSD layout (``images``, ``labels`` (N, 1, H, W)) for pathology source 'msd'."""
    from mcfast.atomic import atomic_path
    from mcfast.extras import require

    h5py = require("h5py", extra="data", feature="the segmentation study's lesion file")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("images", data=images[:, None].astype(np.float32))
            f.create_dataset("labels", data=masks[:, None].astype(np.float32))


def lesion_patches(msd_path: str, train_idx: np.ndarray, lidc_root: str, sources: list, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Lesion patches for insertion: MSD tumour patches of the training cases only, LIDC shapes."""
    from mcfast.io.annotations import read_msd_patches

    msd = read_msd_patches(msd_path)
    img = np.asarray(msd.images, np.float32)[train_idx]
    msk = np.asarray(msd.masks, np.uint8)[train_idx]
    keep = msk.reshape(len(msk), -1).any(1)
    img, msk = img[keep], msk[keep]
    parts_i, parts_m = [], []
    if "msd" in sources:
        parts_i.append(img)
        parts_m.append(msk)
    if "lidc" in sources:
        tum = img[msk > 0]
        ring = np.stack([ndimage.binary_dilation(m > 0, iterations=4) & (m == 0) for m in msk])
        bg = float(np.median(img[ring])) if ring.any() else 0.1
        li, lm = lidc_shapes(lidc_root, bg, float(np.median(tum)), float(np.std(tum)), seed)
        parts_i.append(li)
        parts_m.append(lm)
    if not parts_i or sum(len(p) for p in parts_i) == 0:
        raise InputError("synthesis.lesion_sources gave no lesion patches (training cases without tumours?)")
    return np.concatenate(parts_i), np.concatenate(parts_m)


# --------------------------------------------------------------------------- synthetic crops, cached
def crop_lesions(image_model: np.ndarray, labels: np.ndarray, crop_px: int, size: int, window: str,
                 rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """One crop per lesion of a synthesized slice (centre jittered by up to crop_px/8), windowed and
    resized to ``size``; the crop's mask is every lesion pixel inside it (exact masks)."""
    from mcfast.synthesis.plan import from_model

    hu = from_model("ct", image_model)
    h, w = labels.shape
    side = min(crop_px, h, w)
    out = []
    for k in range(1, int(labels.max()) + 1):
        rows, cols = np.nonzero(labels == k)
        if rows.size == 0:
            continue
        j = crop_px / 8
        cy, cx = rows.mean() + rng.uniform(-j, j), cols.mean() + rng.uniform(-j, j)
        y0 = int(np.clip(round(cy - side / 2), 0, h - side))
        x0 = int(np.clip(round(cx - side / 2), 0, w - side))
        win = window_input(hu[y0:y0 + side, x0:x0 + side], window)
        out.append(resize_pair(win, labels[y0:y0 + side, x0:x0 + side] > 0, size))
    return out


def synthesis_recipe(s, lesion_file: Path, n_slices: int) -> dict:
    """The recipe (as a dict for :func:`mcfast.synthesis.recipe.recipe_from_dict`) the study synthesizes with."""
    from mcfast.diffusion.samplers import respacing_for_calls

    steps = respacing_for_calls(s.fast_calls, s.start_step) if s.fast_calls > 0 else s.steps
    return {
        "recipe": {"modality": "ct", "image_size": s.image_size, "seed": s.seed},
        "sampler": {"method": s.method, "steps": steps, "eta": s.eta, "x0_guidance": s.x0_guidance,
                    "start_step": s.start_step, "batch_size": s.batch_size, "backend": "auto"},
        "anatomy": {"source": "prepared", "path": s.anatomy, "factor": s.anatomy_factor,
                    "stop_step": s.anatomy_stop_step, "filter": "box"},
        "pathology": [{"source": "msd", "path": str(lesion_file), "category": "tumour",
                       "count": [s.lesions_per_slice, s.lesions_per_slice], "size": list(s.lesion_size),
                       "factor": 1, "stop_step": 0, "min_overlap": s.min_overlap}],
        "output": {"npy": True, "png": False, "dicom": False, "seg": False},
    }


def check_training_anatomy(folder: str) -> list:
    """The anatomy folder must be a prepared *training* split; returns its patients."""
    from mcfast.io.datasets import read_manifest

    try:
        manifest = read_manifest(folder)
    except (InputError, OSError) as exc:
        raise InputError(f"synthesis.anatomy = {folder!r}: {exc}") from None
    if manifest.get("split") not in (None, "train"):
        raise InputError(f"synthesis.anatomy = {folder!r}: is the {manifest.get('split')!r} split; synthetic crops "
                         "must use training-split anatomy only")
    return list(manifest.get("patients", []))


def synthetic_pool(data, s, train_idx: np.ndarray, n_needed: int,
                   say: Callable[[str], None] = lambda m: None) -> SegCrops:
    """``n_needed`` (or more) synthetic crops with exact masks, cached in ``s.cache_dir/<key>/crops.npz``.

    The key hashes every setting that changes the crops (synthesis section, window, size, the MSD
    training patches lent as lesions), so a changed split or setting gets a new folder and a re-run
    with the same ones reads the cache. An interrupted synthesis resumes (``synthesize`` skips
    finished slices).
    """
    from mcfast.atomic import atomic_path, write_text
    from mcfast.synthesis.pipeline import synthesize
    from mcfast.synthesis.recipe import recipe_from_dict

    n_slices = math.ceil(n_needed / s.lesions_per_slice)
    patients = check_training_anatomy(s.anatomy)
    key_src = {"synthesis": {k: v for k, v in asdict(s).items() if k != "cache_dir"},
               "anatomy_abs": str(Path(s.anatomy).resolve()), "window": data.window, "size": data.image_size,
               "msd": str(Path(data.msd_path).resolve()), "msd_train_patches": [int(i) for i in train_idx],
               "n_slices": n_slices}
    key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(s.cache_dir) / key
    crops_file = folder / "crops.npz"
    if crops_file.is_file():
        with np.load(crops_file) as d:
            say(f"synthetic crops: {len(d['images'])} from cache {folder}")
            return SegCrops(d["images"], d["masks"], np.array(["synthetic"] * len(d["images"])), list(d["names"]))
    folder.mkdir(parents=True, exist_ok=True)
    lesion_file = folder / "lesions.h5"
    if not lesion_file.is_file():
        li, lm = lesion_patches(data.msd_path, train_idx, s.lidc_root, s.lesion_sources, s.seed)
        write_lesion_file(lesion_file, li, lm)
    recipe_dict = synthesis_recipe(s, lesion_file, n_slices)
    write_text(folder / "study_key.json", json.dumps({**key_src, "anatomy_patients": patients,
                                                      "recipe": recipe_dict}, indent=1))
    recipe = recipe_from_dict(recipe_dict, source=f"{folder}/recipe")
    say(f"synthesizing {n_slices} slices ({s.image_size}², {s.lesions_per_slice} lesions each) into {folder / 'slices'}")
    synthesize(s.ckpt, recipe, n_slices, folder / "slices", progress=True)
    rng = np.random.default_rng(s.seed)
    images, masks, names = [], [], []
    for i in range(n_slices):
        d = folder / "slices" / f"{i:06d}"
        for k, (x, m) in enumerate(crop_lesions(np.load(d / "image.npy"), np.load(d / "labels.npy"), s.crop_px,
                                                 data.image_size, data.window, rng)):
            images.append(x)
            masks.append(m)
            names.append(f"syn{i:06d}_lesion{k + 1}")
    with atomic_path(crops_file) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=np.stack(images), masks=np.stack(masks), names=np.array(names))
    say(f"synthetic crops: {len(images)} written to {crops_file}")
    return SegCrops(np.stack(images), np.stack(masks), np.array(["synthetic"] * len(images)), names)

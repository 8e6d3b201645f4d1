"""Labelled images for the evaluation studies: MIAS, Lung-PET-CT-Dx patches, labelled folders of PNG / NPY
(what `mcfast synthesize` writes), in model space at the study's size — read one way for the classifier
study, the realism audit and the memorization audit.

This module picks the real and the synthetic set a config names (:func:`load_real`, :func:`load_synthetic`),
reads MIAS films and the synthetic folder's provenance; labelled folders are :mod:`mcfast.evaluate.labeled_images`,
CT patches :mod:`mcfast.evaluate.ct_patches` (their names are re-exported here).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mcfast.errors import InputError
from mcfast.evaluate.config import EvalConfig
from mcfast.evaluate.ct_patches import (crop_patch, load_ct_patches, load_ct_synthetic, mixed_lung_centres,
                                        tumour_patches)
from mcfast.evaluate.labeled_images import (CT_WINDOWS, LABEL_FILES, LabeledImages, load_labeled_folder,
                                            read_image_file, resize, to_model)
from mcfast.evaluate.splits import mias_classes, mias_label_of, mias_woman

PROVENANCE_NAMES = ("provenance.json", "recipe.json", "synthesis.json")

__all__ = ["CT_WINDOWS", "LABEL_FILES", "PROVENANCE_NAMES", "LabeledImages", "resize", "read_image_file",
           "load_labeled_folder", "mias_index", "load_mias", "load_ct_patches", "crop_patch", "tumour_patches",
           "mixed_lung_centres", "load_ct_synthetic", "load_real", "load_synthetic", "read_provenance"]


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
        images.append(to_model(unit, image_size))
    return LabeledImages(np.stack(images), np.array([labels[f.stem] for f in files], dtype=np.int64),
                         np.array([mias_woman(f.stem) for f in files], dtype=object), [f.stem for f in files])


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

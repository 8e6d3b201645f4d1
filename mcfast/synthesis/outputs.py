"""Writing one synthesized item, and the run-level COCO file built from the items' metadata.

An item folder is complete when its ``meta.json`` exists: it is written last (atomically), so an
interrupted run resumes by skipping exactly the finished items.

Source paths in ``meta.json`` and ``provenance.json`` are stored by :func:`private_path` (the folder
as a short hash, the file name kept) unless the recipe sets ``[output] full_paths = true``: clinical
folder trees are often named after the patient.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from mcfast.atomic import atomic_path, write_text
from mcfast.io.windows import WINDOWS
from mcfast.synthesis.plan import ItemPlan, from_model

META = "meta.json"
# Lesion provenance (PlacedLesion.meta) that COCO annotations carry as attributes: COCO key ← meta key.
COCO_LESION_ATTRIBUTES = {"class": "mias_class", "severity": "mias_severity", "ref": "mias_ref"}
CT_WINDOWS = ("lung", "soft_tissue", "bone")


PATH_HASH_CHARS = 12  # hex digits of SHA-256 kept: 48 bits, no collision among one study's folders
_SLICE_SUFFIX = re.compile(r"(#slice\d+)$")  # a CT volume source names its slice after the path


def private_path(path: str) -> str:
    """``path`` as outputs store it by default: ``sha256:<12 hex of its folder>/<file name>`` for an
    existing file, else ``sha256:<12 hex of the whole path>`` (a DICOM series folder may itself be named
    after the patient); a ``#sliceK`` suffix is kept. The digest is of the absolute path, so the same file
    gives the same text however it was named, and can be checked by hashing a candidate folder; it is
    not encryption (a guessed folder name can be confirmed). File names are kept: mcfast's prepared
    items are numbered, and the realism study groups a synthetic image with the training file it was
    guided by through that name."""
    match = _SLICE_SUFFIX.search(path)
    suffix = match.group(1) if match else ""
    base = os.path.abspath(os.path.expanduser(path[:len(path) - len(suffix)]))

    def digest(text: str) -> str:
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:PATH_HASH_CHARS]

    if os.path.isfile(base):
        return f"{digest(os.path.dirname(base))}/{os.path.basename(base)}{suffix}"
    return digest(base) + suffix  # a folder, or a path not there to tell: the name may be the patient's


def _stored_path(path: str, full_paths: bool) -> str:
    return path if full_paths or not path else private_path(path)


def private_provenance(provenance: dict, full_paths: bool) -> dict:
    """``provenance`` with the recipe file, the data paths it names and the checkpoint folder stored by
    :func:`private_path` (all kept as they are with ``full_paths``); says which in ``"paths"``."""
    out = json.loads(json.dumps(provenance))
    recipe = out.get("recipe", {})
    if not str(recipe.get("source", "<")).startswith("<"):  # "<dict>", "<defaults>": no file
        recipe["source"] = _stored_path(recipe["source"], full_paths)
    for spec in [recipe.get("anatomy", {})] + list(recipe.get("pathology", [])):
        if spec.get("path"):
            spec["path"] = _stored_path(spec["path"], full_paths)
    if out.get("checkpoint"):
        out["checkpoint"] = _stored_path(out["checkpoint"], full_paths)
    out["paths"] = "full" if full_paths else "folder hashed (sha256), file name kept"
    return out


def _json_default(value):
    """numpy scalars and arrays in metadata (patch transform parameters) as plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def item_dir(out: Path, index: int) -> Path:
    return out / f"{index:06d}"


def is_done(out: Path, index: int) -> bool:
    return (item_dir(out, index) / META).is_file()


def display_file(modality: str) -> str:
    """The image a COCO entry points to."""
    return "lung.png" if modality == "ct" else "image.png"


def _display(modality: str, model_img: np.ndarray) -> np.ndarray:
    """[0, 1] display of a model-space image (CT in the lung window)."""
    if modality == "ct":
        from mcfast.io.windows import apply_window

        c, w = WINDOWS["lung"]
        return np.asarray(apply_window(from_model("ct", model_img), c, w), dtype=np.float32)
    return from_model("mg", model_img)


def _rgb_overlay(gray: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Gray image with each lesion's outline in red (uint8 RGB)."""
    from scipy import ndimage

    rgb = np.repeat((np.clip(gray, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    lesion = labels > 0
    edge = ndimage.binary_dilation(lesion) & ~lesion  # drawn just outside, so the lesion itself stays visible
    rgb[edge] = (255, 40, 40)
    return rgb


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG")


def label_map(plan: ItemPlan, shape: tuple[int, int]) -> np.ndarray:
    """The item's lesions as one uint8 map: 0 background, lesion k (in plan order, from 1) = k."""
    labels = np.zeros(shape, dtype=np.uint8)
    for k, lesion in enumerate(plan.lesions, start=1):
        labels[lesion.mask > 0] = k
    return labels


def item_meta(plan: ItemPlan, shape: tuple[int, int], modality: str, output, extra_meta: dict) -> dict:
    """An item's metadata, as ``meta.json`` holds it (less ``files``): also an in-memory item's (mcfast.api)."""
    return {
        "index": plan.index,
        "seed": plan.seed,
        "modality": modality,
        "height": int(shape[0]),
        "width": int(shape[1]),
        "anatomy": (plan.anatomy.source if plan.anatomy.source.startswith(("phantom:", "<"))  # no path
                    else _stored_path(plan.anatomy.source, getattr(output, "full_paths", False))),
        "lesions": [{"label": k, "category": l.category, "bbox": list(l.box), "patch_box": list(l.patch_box),
                     "center": list(l.center), "area": int(l.mask.sum()), "source": l.source, "meta": l.meta}
                    for k, l in enumerate(plan.lesions, start=1)],
        "conditions": [{"name": c.name, "factor": c.factor, "stop_step": c.stop_step, "filter": c.filter,
                        "weighted": not c.is_full} for c in plan.conditions],
        **extra_meta,
    }


def write_item(out: Path, plan: ItemPlan, image_model: np.ndarray, modality: str, output, extra_meta: dict) -> dict:
    """Write every file of one item; ``meta.json`` last. Returns the metadata."""
    from mcfast.io import writers

    d = item_dir(out, plan.index)
    d.mkdir(parents=True, exist_ok=True)
    image_model = np.clip(np.asarray(image_model, dtype=np.float32), -1.0, 1.0)
    native = from_model(modality, image_model)  # HU for CT, [0, 1] for MG: converted once, used by every writer
    labels = label_map(plan, image_model.shape)
    files: list[str] = []
    if output.npy:
        writers.write_npy(d / "image.npy", image_model, space="model")
        files.append("image.npy")
        if modality == "ct":
            writers.write_npy(d / "image_hu.npy", native, space="hu")
            files.append("image_hu.npy")
        with atomic_path(d / "labels.npy") as tmp:
            np.save(tmp, labels)
        files.append("labels.npy")
    # The display image (what COCO points to) and the mask are always written; the other
    # windows, the references and the overlay only with output.png.
    extra_png = bool(output.png)
    if modality == "ct":
        for name in CT_WINDOWS if extra_png else CT_WINDOWS[:1]:
            writers.write_png(d / f"{name}.png", native, window=name)
            files.append(f"{name}.png")
    else:
        writers.write_png(d / "image.png", image_model, value_range=(-1.0, 1.0))
        files.append("image.png")
    writers.write_png(d / "mask.png", (labels > 0).astype(np.float32))
    files.append("mask.png")
    if extra_png:
        anatomy_model = plan.conditions[0].ref[0].numpy()
        writers.write_png(d / "anatomy_ref.png", _display(modality, anatomy_model))
        writers.write_png(d / "pathology_ref.png", _display(modality, plan.pathology_reference))
        _write_rgb(d / "overlay.png", _rgb_overlay(_display(modality, image_model), labels))
        files += ["anatomy_ref.png", "pathology_ref.png", "overlay.png"]
    if output.dicom or output.seg:
        if modality == "ct":
            writers.write_ct_dicom(d / "image.dcm", native, window="lung", instance_number=plan.index + 1)
        else:
            writers.write_mg_dicom(d / "image.dcm", native, instance_number=plan.index + 1)
        files.append("image.dcm")
        if output.seg and plan.lesions:
            writers.write_dicom_seg(d / "seg.dcm", (labels > 0).astype(np.uint8), d / "image.dcm",
                                    label=plan.lesions[0].category)
            files.append("seg.dcm")
    meta = item_meta(plan, image_model.shape, modality, output, {"files": files, **extra_meta})
    write_text(d / META, json.dumps(meta, indent=2, default=_json_default))
    return meta


def _coco_attributes(lesion: dict) -> dict:
    """A lesion's COCO attributes: its source and, when known, the source lesion's class, severity and ref."""
    meta = lesion.get("meta", {})
    return {"source": lesion["source"],
            **{key: meta[m] for key, m in COCO_LESION_ATTRIBUTES.items() if meta.get(m) not in (None, "")}}


def add_coco_item(coco, index: int, modality: str, meta: dict, labels: np.ndarray | None) -> int:
    """Add item ``index`` (its metadata and label map, or None for boxes only) to a CocoWriter: image id
    index + 1, file ``<item folder>/<display image>``. Returns the image id."""
    image_id = coco.add_image(f"{item_dir(Path(), index).name}/{display_file(modality)}",
                              meta["height"], meta["width"], id=index + 1)
    for lesion in meta["lesions"]:
        coco.add_category(lesion["category"])
        mask = (labels == lesion["label"]).astype(np.uint8) if labels is not None else None
        coco.add_annotation(image_id, mask, lesion["category"], attributes=_coco_attributes(lesion),
                            bbox=None if mask is not None else lesion["bbox"])
    return image_id


def write_coco(out: Path, n: int, modality: str) -> Path:
    """Build ``coco.json`` for items 0..n-1 from their meta.json and labels (all ranks' items together)."""
    from mcfast.io.coco import CocoWriter

    coco = CocoWriter(info={"description": "mcfast synthetic images", "version": "1.0", "modality": modality})
    for index in range(n):
        d = item_dir(out, index)
        if not (d / META).is_file():
            continue
        meta = json.loads((d / META).read_text())
        labels = np.load(d / "labels.npy") if (d / "labels.npy").is_file() else None
        add_coco_item(coco, index, modality, meta, labels)
    return coco.save(out / "coco.json")

"""Where anatomy references and pathology patches come from (phantoms, DICOM, images, datasets).

Everything returned here is at the recipe's image size: anatomy as (values, tissue mask) with CT in
HU and mammograms in [0, 1] (dense tissue bright); patches as :class:`mcfast.pathology.patches.Patch`
in the same units.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from skimage.transform import resize

from mcfast.errors import InputError
from mcfast.pathology.patches import Patch

if TYPE_CHECKING:
    from mcfast.io.annotations import MiasAbnormality, MiasRecord

IMAGE_SUFFIXES = (".png", ".pgm", ".tif", ".tiff", ".npy", ".dcm", "")

# The source names load_anatomy / load_patch serve; recipe validation checks against these same tuples.
ANATOMY_SOURCES = ("phantom", "file", "folder", "prepared")
PATHOLOGY_SOURCES = ("synthetic", "msd", "voc", "mias")

# Patch side (pixels) each pathology source can produce: resize_patch keeps at least MIN_PATCH_SIDE, and
# procedural patches need mcfast.pathology.synthetic's bounds. Recipe validation checks pathology.size
# against these same numbers, so a size it accepts is one sampling can draw.
MIN_PATCH_SIDE = 3


def patch_side_range(source: str) -> tuple[int, int | None]:
    """(smallest, largest or None) patch side ``source`` can produce."""
    if source == "synthetic":
        from mcfast.pathology.synthetic import MAX_PATCH, MIN_PATCH

        return max(MIN_PATCH, MIN_PATCH_SIDE), MAX_PATCH
    return MIN_PATCH_SIDE, None


@dataclass
class Anatomy:
    """An anatomy reference: ``values`` (H, W) float32 (HU for CT, [0, 1] for MG), ``tissue`` bool mask."""

    values: np.ndarray
    tissue: np.ndarray
    source: str


def _resize(img: np.ndarray, size: int, order: int = 1) -> np.ndarray:
    if img.shape == (size, size):
        return img.astype(np.float32)
    return resize(img, (size, size), order=order, anti_aliasing=order > 0, preserve_range=True).astype(np.float32)


def _tissue_mask(modality: str, values: np.ndarray, source: str) -> np.ndarray:
    from mcfast.anatomy.masks import breast_mask, lung_mask

    try:
        mask = lung_mask(values) if modality == "ct" else breast_mask(values)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    if not mask.any():
        raise InputError(f"{source}: no {'lung' if modality == 'ct' else 'breast'} found to place pathologies in")
    return mask


@functools.lru_cache(maxsize=4)
def _ct_volume(path: str):
    from mcfast.io.dicom import read_ct

    return read_ct(path)


def _list_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: no images (PNG, PGM, TIFF, NPY or DICOM) found")
    return files


MIN_LUNG_FRACTION = 0.03  # a slice whose lungs cover less than this has no room for lesions
# A real anatomy reference drawn from a prepared folder must be a chest slice: bowel gas in an abdominal
# slice passes the lung mask's HU rule (seen on a training slice, where the nodule went into the colon).
# In the CT training split lung fractions run from 0 to 29 % (median 7.5 %); 5 % keeps chest slices.
MIN_REFERENCE_LUNG_FRACTION = 0.05


def _random_lung_slice(hu: np.ndarray, size: int, rng: np.random.Generator, path: Path) -> int:
    """A random slice of the volume that shows lungs (slices above the apex or below the bases do not)."""
    from mcfast.anatomy.masks import lung_mask

    for k in rng.permutation(hu.shape[0]):
        try:
            if lung_mask(_resize(hu[k], size)).mean() >= MIN_LUNG_FRACTION:
                return int(k)
        except InputError:
            continue
    raise InputError(f"{path}: no slice shows lungs covering {MIN_LUNG_FRACTION:.0%} of the image")


def _read_anatomy_file(modality: str, path: Path, size: int, rng: np.random.Generator, slice_index: int) -> Anatomy:
    from mcfast.io.images import read_image

    if modality == "ct":
        if path.is_dir() or path.suffix.lower() in (".dcm", ""):
            data = _ct_volume(str(path))
            hu = data.hu
            if hu.ndim == 3:
                if slice_index >= 0:
                    if slice_index >= hu.shape[0]:
                        raise InputError(f"{path}: slice_index {slice_index} outside 0..{hu.shape[0] - 1}")
                    k = slice_index
                else:
                    k = _random_lung_slice(hu, size, rng, path)
                hu, source = hu[k], f"{path}#slice{k}"
            else:
                source = str(path)
        else:
            hu, source = read_image(path, normalize=False), str(path)  # NPY in HU
        return anatomy_from_array("ct", hu, size, source)
    from mcfast.io.datasets import read_mammogram

    img = read_image(path) if path.suffix.lower() == ".npy" else read_mammogram(path)
    return anatomy_from_array("mg", img, size, str(path))


def anatomy_from_array(modality: str, values: np.ndarray, size: int, source: str = "<array>") -> Anatomy:
    """An anatomy reference from an image already in memory: a CT slice in HU, resized to ``size``; a
    mammogram in [0, 1] (dense tissue bright), framed by ``prepare_mammogram`` like every film the model
    saw (breast crop, chest wall left). ``source`` names it in errors and in meta.json."""
    values = np.asarray(values)
    if values.ndim != 2 or min(values.shape) < 2:
        raise InputError(f"{source}: anatomy must be one 2-D image, got shape {tuple(values.shape)}")
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise InputError(f"{source}: anatomy must hold real numbers, got dtype {values.dtype}")
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise InputError(f"{source}: anatomy contains NaN or Inf values")
    if modality == "ct":
        hu = _resize(values, size)
        return Anatomy(hu, _tissue_mask("ct", hu, source), source)
    from mcfast.io.mammo import prepare_mammogram

    if values.min() < -1e-6 or values.max() > 1 + 1e-6:
        raise InputError(f"{source}: a mammogram must lie in [0, 1] (dense tissue bright), got "
                         f"[{values.min():.3g}, {values.max():.3g}]")
    try:
        img, _, mask = prepare_mammogram(np.clip(values, 0.0, 1.0), size)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    return Anatomy(img.astype(np.float32), mask & _tissue_mask("mg", img, source), source)


@functools.lru_cache(maxsize=4)
def _prepared_items(path: str) -> tuple[list[Path], str, list[str]]:
    """(item files, the modality it was prepared as, the patient / woman of each item; an item of a
    manifest without patients is its own)."""
    from mcfast.io.datasets import read_manifest

    manifest = read_manifest(path)
    if manifest.get("normalisation", {}).get("kind") == "window":
        raise InputError(f"{path}: prepared with a display window, so its HU cannot be recovered; prepare the "
                         f"anatomy references with the full HU range (no --window)")
    items = manifest["items"]
    return ([Path(path) / it["file"] for it in items], str(manifest.get("modality", "")),
            [str(it.get("patient") or it["file"]) for it in items])


def draw_order(patients: list[str], rng: np.random.Generator, per_patient: bool) -> list[int]:
    """The order in which a prepared folder's items are tried as the reference (the first that passes
    wins). Plain: a random permutation, so a patient with many slices is drawn as often as it has slices.
    ``per_patient``: the patients in random order, each one's items in random order, so every patient is
    as likely as any other to give the reference (a training split with 32 of its 105 slices from one
    patient otherwise makes a third of the synthetic set that patient's anatomy)."""
    if not per_patient:
        return [int(k) for k in rng.permutation(len(patients))]
    by_patient: dict[str, list[int]] = {}
    for k, patient in enumerate(patients):
        by_patient.setdefault(patient, []).append(k)
    groups = list(by_patient.values())
    order: list[int] = []
    for g in rng.permutation(len(groups)):
        group = groups[int(g)]
        order += [group[int(j)] for j in rng.permutation(len(group))]
    return order


def _prepared_anatomy(modality: str, folder: Path, size: int, rng: np.random.Generator,
                      slice_index: int, per_patient: bool = False) -> Anatomy:
    """A random item (or item ``slice_index``) of a folder made by ``mcfast prepare`` (model space [-1, 1]),
    drawn by :func:`draw_order`; for CT only items whose lungs leave room for lesions are drawn."""
    from mcfast.io.images import read_npy
    from mcfast.synthesis.plan import from_model

    files, prepared_as, patients = _prepared_items(str(folder))
    if prepared_as and prepared_as != modality:
        raise InputError(f"{folder}: prepared as {prepared_as!r} images, the recipe is {modality!r}")
    order = [slice_index] if slice_index >= 0 else draw_order(patients, rng, per_patient)
    if order[0] >= len(files):
        raise InputError(f"{folder}: slice_index {slice_index} outside 0..{len(files) - 1}")
    last_error = None
    for k in order:
        values = _resize(from_model(modality, read_npy(files[k])), size)
        try:
            tissue = _tissue_mask(modality, values, str(files[k]))
        except InputError as exc:
            last_error = exc
            continue
        if modality != "ct" or tissue.mean() >= MIN_REFERENCE_LUNG_FRACTION:
            return Anatomy(values, tissue, str(files[k]))
    raise last_error or InputError(f"{folder}: no item shows lungs covering {MIN_REFERENCE_LUNG_FRACTION:.0%} of "
                                   f"the image")


def _framed_breast_phantom(size: int, seed: int) -> Anatomy:
    """A breast phantom framed like every real mammogram (``prepare_mammogram``: breast crop, chest wall
    left, aspect kept): drawn as it is, its silhouette is wider and shorter than a framed film's, and a
    model trained on framed films would be guided toward a layout it never saw."""
    from mcfast.anatomy.breast_phantom import breast_phantom_labels
    from mcfast.io.mammo import prepare_mammogram

    img, labels = breast_phantom_labels(size=size, seed=seed)
    framed, transform, _ = prepare_mammogram(img, size)
    tissue = transform.apply_to_mask(labels["tissue"].astype(np.uint8)).astype(bool)  # without the pectoral
    return Anatomy(framed.astype(np.float32), tissue, f"phantom:breast:{seed}")


def load_anatomy(modality: str, source: str, path: str, size: int, seed: int, rng: np.random.Generator,
                 slice_index: int = -1, scan_circle: bool = False, per_patient: bool = False,
                 phantom: dict | None = None) -> Anatomy:
    """The anatomy reference of one item: a phantom drawn from ``seed`` (a CT phantom with its
    reconstruction circle when ``scan_circle``, shaped by ``phantom``: keywords of
    :func:`mcfast.anatomy.phantom.lung_phantom_labels` such as ``wall`` and ``blood_hu``) or a real image
    from ``path`` (a prepared folder's items drawn patient first when ``per_patient``)."""
    if source == "phantom":
        if modality == "ct":
            from mcfast.anatomy.phantom import lung_phantom_labels

            hu, labels = lung_phantom_labels(size=size, seed=seed, scan_circle=scan_circle, **(phantom or {}))
            lungs = labels["lung"]
            return Anatomy(hu, lungs.astype(bool), f"phantom:lung:{seed}")
        return _framed_breast_phantom(size, seed)
    p = Path(path)
    if not p.exists():
        from mcfast.io.paths import check_input_path

        check_input_path(p)  # a symlink loop says so
        raise InputError(f"{p}: anatomy path not found")
    if source == "prepared":
        return _prepared_anatomy(modality, p, size, rng, slice_index, per_patient)
    if source == "folder":
        if not p.is_dir():
            raise InputError(f"{p}: anatomy.source = 'folder' needs a folder")
        if modality == "ct" and not any(f.suffix.lower() in (".png", ".npy") for f in p.iterdir() if f.is_file()):
            return _read_anatomy_file(modality, p, size, rng, slice_index)  # a DICOM series folder
        files = _list_images(p)
        p = files[int(rng.integers(len(files)))]
    return _read_anatomy_file(modality, p, size, rng, slice_index)


# -- pathology patches -----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _msd(path: str):
    from mcfast.io.annotations import read_msd_patches

    return read_msd_patches(path)


@functools.lru_cache(maxsize=4)
def _mias(path: str) -> list[tuple[Path, MiasRecord, MiasAbnormality]]:
    """Every mass (film, record, abnormality) a ``mias`` source draws from.

    ``path`` is a MIAS folder (Info.txt + images/: all its films) or a prepared folder (manifest.json:
    only the films it lists, so a training split never lends a validation woman's lesion).
    """
    from mcfast.io.annotations import MIAS_MASS_CLASSES, mias_masses, read_mias_info, read_prepared_mias
    from mcfast.io.datasets import MANIFEST

    folder = Path(path)
    if (folder / MANIFEST).is_file():
        films = [(f.film, f.record) for f in read_prepared_mias(folder)]
        where = f"{folder / MANIFEST} (its films)"
    else:
        info = folder / "Info.txt"
        if not info.is_file():
            raise InputError(f"{folder}: no Info.txt (MIAS annotations) or manifest.json (prepared MIAS) found")
        films = [(folder / "images" / f"{ref}.png", rec) for ref, rec in read_mias_info(info).items()]
        where = str(info)
    lesions = [(film, rec, ab) for film, rec in films for ab in mias_masses(rec)]
    if not lesions:
        raise InputError(f"{where}: no mass ({', '.join(MIAS_MASS_CLASSES)}) with a centre")
    return lesions


@functools.lru_cache(maxsize=4)
def _voc(path: str):
    from mcfast.io.annotations import read_voc

    root = Path(path)
    ann_dir, dcm_dir = root / "annotations", root / "dicom"
    if not ann_dir.is_dir() or not dcm_dir.is_dir():
        raise InputError(f"{root}: expected annotations/ (Pascal VOC XML) and dicom/ folders")
    from mcfast.io.dicom import read_ct_tree

    uid_to_slice = {}
    for vol in read_ct_tree(dcm_dir):
        for k, uid in enumerate(vol.sop_uids):
            uid_to_slice[uid] = (vol, k)
    boxes = []
    for xml in sorted(ann_dir.glob("*.xml")):
        ann = read_voc(xml)
        if ann.key in uid_to_slice:
            boxes.extend((ann.key, obj) for obj in ann.objects)
    if not boxes:
        raise InputError(f"{root}: no VOC box matches a DICOM slice (by SOPInstanceUID)")
    return boxes, uid_to_slice


# How far a MIAS patch reaches around its circle, in radii (extract_mias_patch's margin). Equalisation
# ranks the patch's pixels, so the mass comes out brighter than its edge only when the patch holds
# enough surround for the mass to take the top ranks: the disc is pi / (4 margin²) of the square, 79 %
# for a tight crop (margin 1), 50 % at 1.25, 13 % at 2.5. Measured with lesion_contrast ([0, 1]) on the
# pathology references of 200 planned 512² items (prepared MIAS training anatomy, masses of the training
# films, "local" matching, patch sizes scaled so the lesion radius stays ~17 px; real MIAS masses of the
# training split: median 0.085, IQR 0.051-0.117, none negative): margin 1 gives median +0.004 and 40 % of
# the masses darker than their surround, 1.25 +0.019 (21 %), 2.5 +0.070 (IQR 0.043-0.133, 4.5 %), the
# blend darkening the surround ring by 0.017 of that.
MIAS_PATCH_MARGIN = 2.5

# MSD patches are intensity-normalised to [0, 1]; we map them onto a lung-window-like HU range.
MSD_HU_RANGE = (-1000.0, 400.0)


def load_patch(modality: str, source: str, path: str, rng: np.random.Generator, side: int) -> Patch:
    """One lesion patch (image + mask), resized so its larger side is ``side`` pixels."""
    from mcfast.pathology import patches as P

    if source == "synthetic":
        from mcfast.pathology.synthetic import ct_nodule_patch, mg_mass_patch

        return (ct_nodule_patch if modality == "ct" else mg_mass_patch)(side, rng)
    if source == "msd":
        if modality != "ct":
            raise InputError("pathology source 'msd' holds lung CT tumours; it needs modality = 'ct'")
        msd = _msd(path)
        usable = _msd_usable(path)
        k = int(usable[rng.integers(usable.size)])  # some patches hold no tumour pixels
        lo, hi = MSD_HU_RANGE
        patch = P.extract_msd_patch(lo + (hi - lo) * np.asarray(msd.images[k]).squeeze(),
                                    np.asarray(msd.masks[k]).squeeze(), crop=True, source=f"msd:{k}")
    elif source == "voc":
        if modality != "ct":
            raise InputError("pathology source 'voc' holds CT boxes; it needs modality = 'ct'")
        boxes, uid_to_slice = _voc(path)
        uid, obj = boxes[int(rng.integers(len(boxes)))]
        vol, k = uid_to_slice[uid]
        patch = P.extract_voc_patch(vol.hu[k], (obj.xmin, obj.ymin, obj.xmax, obj.ymax), source=f"voc:{uid}")
    elif source == "mias":
        if modality != "mg":
            raise InputError("pathology source 'mias' holds mammograms; it needs modality = 'mg'")
        from mcfast.io.datasets import read_mammogram

        lesions = _mias(path)
        film, rec, ab = lesions[int(rng.integers(len(lesions)))]
        patch = P.extract_mias_patch(read_mammogram(film), ab.x, ab.y, ab.radius, margin=MIAS_PATCH_MARGIN,
                                     source=f"mias:{rec.ref}", label=ab.cls)
        # provenance: it flows through PlacedLesion.meta into meta.json and the COCO attributes
        patch.meta.update(mias_ref=rec.ref, mias_class=ab.cls, mias_severity=ab.severity)
    else:
        raise InputError(f"unknown pathology source {source!r}; expected one of {', '.join(PATHOLOGY_SOURCES)}")
    return resize_patch(patch, side)


def _msd_usable(path: str) -> np.ndarray:
    """Indices of the MSD patches whose tumour mask is not empty (an empty file or all-empty masks refused)."""
    msd = _msd(path)
    if len(msd.masks) == 0:
        raise InputError(f"{path}: the MSD file holds no patches (0 images)")
    usable = np.flatnonzero(np.asarray(msd.masks).reshape(len(msd.masks), -1).any(axis=1))
    if usable.size == 0:
        raise InputError(f"{path}: every MSD patch ({len(msd.masks)}) has an empty tumour mask")
    return usable


def check_recipe_sources(recipe) -> None:
    """Open every file a recipe names (cached, so sampling does not read them twice) before any output is
    made: a missing path, an empty MSD file or a MIAS folder without masses is one line naming the recipe
    file and key, not an error after the model is loaded and the output folder started."""
    from mcfast.io.paths import check_input_path

    def fail(key: str, path: str, exc: InputError):
        msg = str(exc)
        msg = msg[len(path) + 2:] if msg.startswith(f"{path}: ") else msg  # the key already names the path
        raise InputError(f"{recipe.source}: {key} = {path!r}: {msg}") from None

    a = recipe.anatomy
    if a.source != "phantom":
        try:
            check_input_path(a.path)
            if a.source == "prepared":
                _prepared_items(str(Path(a.path)))
            elif a.source == "folder" and not Path(a.path).is_dir():
                raise InputError(f"{a.path}: anatomy.source = 'folder' needs a folder")
            elif a.source == "file":  # one file (or a cached DICOM series): read it once now
                load_anatomy(recipe.modality, a.source, a.path, recipe.image_size, recipe.seed,
                             np.random.default_rng(0), a.slice_index)
        except InputError as exc:
            fail("anatomy.path", a.path, exc)
    for k, p in enumerate(recipe.pathology):
        if p.source == "synthetic":
            continue
        try:
            check_input_path(p.path)
            if p.source == "msd":
                _msd_usable(p.path)
            elif p.source == "voc":
                _voc(p.path)
            elif p.source == "mias":
                _mias(p.path)
        except InputError as exc:
            fail(f"pathology[{k}].path", p.path, exc)


def resize_patch(patch: Patch, side: int) -> Patch:
    """Scale ``patch`` so that its larger side is ``side`` pixels (mask by nearest neighbour)."""
    import dataclasses

    h, w = patch.shape
    scale = side / max(h, w)
    shape = (max(MIN_PATCH_SIDE, round(h * scale)), max(MIN_PATCH_SIDE, round(w * scale)))
    if shape == (h, w):
        return patch
    image = resize(patch.image, shape, order=1, anti_aliasing=scale < 1, preserve_range=True)
    mask = resize(patch.mask.astype(np.float32), shape, order=0, anti_aliasing=False) > 0.5
    if not mask.any():
        mask[shape[0] // 2, shape[1] // 2] = True
    return dataclasses.replace(patch, image=image.astype(np.float32), mask=mask.astype(np.uint8),
                               meta={**patch.meta, "resized_from": [h, w]})

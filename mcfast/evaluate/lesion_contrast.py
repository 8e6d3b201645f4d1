"""Lesion-to-surround contrast: is a mass brighter than the tissue around it, and by how much?

The contrast is ``mean(image inside the lesion mask) - mean(image over a ring around it)``: a
difference of two means of the same image, so it is in the image's own units (MG [0, 1] or model space
[-1, 1], where it is twice as large) and two sets compare only when both are in the same space. A real
mass is denser than its surround (positive); a "flat disc" is near 0 and a "dark hole" negative.

``mias_mass_masks`` gives the real masses of a prepared MIAS folder at its prepared size, so the same
number can be measured on real images, on synthetic references and on synthetic outputs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from mcfast.errors import InputError

MIN_RING_PX = 2.0  # a ring thinner than this is mostly the lesion's blurred edge


def _bool_mask(mask: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise InputError(f"lesion_contrast: {what} shape {m.shape} differs from the image shape {shape}")
    return m > 0


def equivalent_radius(mask: np.ndarray) -> float:
    """Radius of the disc with the mask's area, in pixels."""
    return float(np.sqrt(np.count_nonzero(mask) / np.pi))


def surround_ring(mask: np.ndarray, ring_px: float, tissue: np.ndarray | None = None) -> np.ndarray:
    """Pixels outside ``mask`` within ``ring_px`` (Euclidean) of it, restricted to ``tissue`` when given."""
    m = np.asarray(mask, dtype=bool)
    distance = ndimage.distance_transform_edt(~m)  # 0 on the mask, distance to it elsewhere
    ring = (distance > 0) & (distance <= ring_px)
    return ring & np.asarray(tissue, dtype=bool) if tissue is not None else ring


def lesion_contrast(image: np.ndarray, mask: np.ndarray, *, ring_px: int | None = None,
                    tissue: np.ndarray | None = None) -> float:
    """Mean of ``image`` inside ``mask`` minus its mean over the ring around the mask (see module doc).

    The ring is ``ring_px`` wide (default: the mask's equivalent radius, at least MIN_RING_PX), excludes
    the mask and, with ``tissue``, keeps only tissue pixels (so the background beside a lesion at the skin
    line does not count as surround). NaN when the ring holds no pixel; InputError for an empty mask or
    shapes that differ.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise InputError(f"lesion_contrast: needs a 2-D image, got shape {img.shape}")
    m = _bool_mask(mask, img.shape, "mask")
    if not m.any():
        raise InputError("lesion_contrast: the lesion mask is empty")
    t = None if tissue is None else _bool_mask(tissue, img.shape, "tissue")
    width = max(MIN_RING_PX, equivalent_radius(m)) if ring_px is None else float(ring_px)
    if width <= 0:
        raise InputError(f"lesion_contrast: ring_px {ring_px} must be > 0")
    ring = surround_ring(m, width, t)
    if not ring.any():
        return float("nan")
    return float(img[m].mean() - img[ring].mean())


def contrast_summary(values) -> dict:
    """n, median, q25, q75, mean and fraction_negative of the finite ``values``; NaNs dropped (n_nan)."""
    v = np.asarray(list(values), dtype=np.float64).ravel()
    finite = v[np.isfinite(v)]
    out = {"n": int(finite.size), "n_nan": int(np.isnan(v).sum())}
    if finite.size == 0:
        return {**out, "median": float("nan"), "q25": float("nan"), "q75": float("nan"),
                "mean": float("nan"), "fraction_negative": float("nan")}
    q25, median, q75 = np.quantile(finite, [0.25, 0.5, 0.75])
    return {**out, "median": float(median), "q25": float(q25), "q75": float(q75), "mean": float(finite.mean()),
            "fraction_negative": float(np.mean(finite < 0))}


def mass_contrasts(images: np.ndarray, masks) -> dict:
    """Contrast of each mass (``masks[k]`` on ``images[k]``, mammograms in model space [-1, 1]) against its
    surround in the breast, in [0, 1] units: the summary (:func:`contrast_summary`) and every value."""
    from mcfast.io.mammo import breast_mask

    values = []
    for img, mask in zip(images, masks):
        img01 = (img + 1.0) / 2.0
        if mask.any():
            values.append(lesion_contrast(img01, mask, tissue=breast_mask(img01)))
    return {**contrast_summary(values), "values": [round(float(v), 4) for v in values]}


def _disc(shape: tuple[int, int], center_xy: tuple[float, float], radius: float) -> np.ndarray:
    """Pixels whose centres lie within ``radius`` of ``center_xy`` = (col, row) pixel indices."""
    rr, cc = np.ogrid[:shape[0], :shape[1]]
    return (rr - center_xy[1]) ** 2 + (cc - center_xy[0]) ** 2 <= radius**2


def mias_mass_masks(folder: Path) -> list[dict]:
    """Every MIAS mass (CIRC / SPIC / MISC with a centre) of the films of a prepared MIAS folder.

    Each is ``{"index", "file", "mask", "class", "severity", "ref", "center", "radius"}``: the item's
    index in the manifest and its npy file, the disc of the MIAS circle at the prepared size (bool (H, W))
    and its ``center`` (col, row) pixel indices and ``radius`` there. The circle is mapped from the film
    through the item's recorded MammoTransform; masses whose disc falls outside the framed image are left
    out. Info.txt is found as in :func:`mcfast.io.annotations.read_prepared_mias`.
    """
    from mcfast.io.annotations import mias_masses, read_prepared_mias
    from mcfast.io.mammo import MammoTransform

    out = []
    for film in read_prepared_mias(folder):
        if "transform" not in film.item:
            raise InputError(f"{folder}/manifest.json: item {film.index} ({film.item.get('file')}) records no "
                             f"transform, so its annotations cannot be mapped")
        t = MammoTransform.from_dict(film.item["transform"])
        for ab in mias_masses(film.record):
            if ab.image_height != t.src_shape[0]:
                raise InputError(f"{film.film}: {t.src_shape[0]} rows, Info.txt's y axis assumes "
                                 f"{ab.image_height}")
            # ab.row / ab.col: Info.txt's bottom-left y origin flipped to an image row (one place for that)
            center = t.map_pixel_centers([[ab.col, ab.row]])[0]
            radius = t.map_length(ab.radius)
            mask = _disc(tuple(t.out_shape), (center[0], center[1]), radius)
            if mask.any():
                out.append({"index": film.index, "file": film.item["file"], "mask": mask, "class": ab.cls,
                            "severity": ab.severity, "ref": film.record.ref,
                            "center": (float(center[0]), float(center[1])), "radius": radius})
    return out

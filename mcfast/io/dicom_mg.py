"""Mammograms from DICOM (DICOM MG → [0, 1], dense tissue bright): modality LUT, VOI LUT or window, and
the MONOCHROME1 / INVERSE presentation inversion (:func:`mg_from_dataset`, :func:`read_mg_dicom`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from mcfast.errors import InputError
from mcfast.io.dicom_file import (check_single_gray_frame, file_windows, pixel_spacing, read_dataset,
                                  stored_pixels)
from mcfast.io.windows import Window, apply_window


@dataclass
class MGImage:
    """A mammogram for display/training: ``image`` (H, W) float32 in [0, 1], dense tissue bright."""

    image: np.ndarray
    spacing: tuple[float, float]
    photometric: str
    bits_stored: int
    laterality: str = ""
    view: str = ""
    voi: str = "none"
    windows: list[Window] = field(default_factory=list)
    path: Path | None = None
    sop_uid: str = ""


def _apply_voi_lut(values: np.ndarray, item: Dataset, path: Path) -> np.ndarray:
    # Done here rather than with pydicom's apply_voi_lut, which indexes in the LUT's output dtype and
    # wraps around for an 8-bit LUT with more than 256 entries.
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        elem = item["LUTData"]
        if elem.VR == "OW" or isinstance(elem.value, bytes):
            lut = np.frombuffer(elem.value, dtype="<u2")  # OW: 16-bit words (little-endian files)
        else:
            lut = np.asarray(elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue))
                             else [elem.value], dtype=np.float64)
    except (AttributeError, KeyError, TypeError, ValueError):
        raise InputError(f"{path}: malformed VOI LUT (LUTDescriptor/LUTData)") from None
    entries = entries or 65536
    lut = np.asarray(lut[:entries], dtype=np.float64)
    if lut.size == 0:
        raise InputError(f"{path}: empty VOI LUT")
    index = np.clip(np.round(values).astype(np.int64) - first, 0, lut.size - 1)
    return lut[index] / float(2 ** bits - 1)


def mg_from_dataset(ds: Dataset, path: str | os.PathLike = "<dataset>") -> MGImage:
    """Stored values → [0, 1] with dense tissue bright: modality LUT, then VOI LUT or the first window
    (LINEAR or SIGMOID VOI LUT function; else the full stored range), then MONOCHROME1 (or MONOCHROME2
    with an INVERSE presentation LUT) inverted."""
    from pydicom.pixels import apply_modality_lut

    path = Path(path)
    check_single_gray_frame(ds, path, "mammogram")
    stored = stored_pixels(ds, path)
    bits = int(ds.get("BitsStored", 16) or 16)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    windows = file_windows(ds)
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        img = _apply_voi_lut(values, ds.VOILUTSequence[0], path)
        voi = "lut"
    elif windows:
        c, w = windows[0]
        if str(ds.get("VOILUTFunction", "LINEAR")).upper() == "SIGMOID":  # common on FFDM units
            img = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - c) / w, -60.0, 60.0)))
        else:
            img = apply_window(values, c, w)
        voi = "window"
    else:
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
            lo, hi = float(values.min()), float(values.max())
        img = (values - lo) / max(hi - lo, 1e-12)
        voi = "range"
    img = np.clip(img, 0.0, 1.0)
    # Dense tissue bright: MONOCHROME1 shows high values dark. An INVERSE Presentation LUT Shape inverts a
    # MONOCHROME2 image; with MONOCHROME1 it is what the DX and MG IODs require, restating that same
    # inversion (PS3.3 C.8.11.3), not a second one.
    inverse_plut = str(ds.get("PresentationLUTShape", "IDENTITY")).upper() == "INVERSE"
    if photometric == "MONOCHROME1" or inverse_plut:
        img = 1.0 - img
    if not np.isfinite(img).all():
        raise InputError(f"{path}: pixel values are not finite after the VOI transform")
    return MGImage(image=img.astype(np.float32), spacing=pixel_spacing(ds), photometric=photometric,
                   bits_stored=bits, laterality=str(ds.get("ImageLaterality", ds.get("Laterality", "")) or ""),
                   view=str(ds.get("ViewPosition", "") or ""), voi=voi, windows=windows, path=path,
                   sop_uid=str(ds.get("SOPInstanceUID", "")))


def read_mg_dicom(path: str | os.PathLike) -> MGImage:
    """Read a DICOM mammogram (MONOCHROME1 inverted so dense tissue is bright; 8–16-bit)."""
    path = Path(path)
    return mg_from_dataset(read_dataset(path), path)

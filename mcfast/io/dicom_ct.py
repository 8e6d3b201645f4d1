"""CT from DICOM: one slice in Hounsfield units (:class:`CTSlice`, :func:`read_ct_slice`), the series
container (:class:`CTVolume`), the slice geometry (position, normal, :func:`slice_plane`) and the rescale
to HU (:func:`hu_from_dataset`). Series folders and trees: :mod:`mcfast.io.dicom_series`.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from mcfast.errors import InputError
from mcfast.io.dicom_file import (DicomWarning, check_single_gray_frame, file_windows, float_or_none, name_files,
                                  pixel_spacing, read_dataset, stored_pixels)
from mcfast.io.windows import HU_MIN, Window


@dataclass
class CTSlice:
    """One CT slice in Hounsfield units.

    ``hu``: (H, W) float32; ``spacing``: (row, column) mm; ``windows``: the file's own windows;
    ``position``/``normal``: ImagePositionPatient and the slice normal (None when absent).
    """

    hu: np.ndarray
    spacing: tuple[float, float]
    sop_uid: str
    series_uid: str
    path: Path
    windows: list[Window] = field(default_factory=list)
    position: np.ndarray | None = None
    normal: np.ndarray | None = None
    instance_number: int | None = None
    slice_thickness: float | None = None
    photometric: str = "MONOCHROME2"
    description: str = ""

    @property
    def sop_uids(self) -> list[str]:
        """``[sop_uid]``: the same attribute a :class:`CTVolume` has."""
        return [self.sop_uid]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]


@dataclass
class CTVolume:
    """A CT series: ``hu`` (Z, H, W) float32 ordered along the slice normal.

    ``spacing``: (slice, row, column) mm; ``sop_uids``/``paths``: per slice, same order;
    ``windows``: the first slice's own windows.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    sop_uids: list[str]
    paths: list[Path]
    series_uid: str
    windows: list[Window] = field(default_factory=list)
    positions: np.ndarray | None = None
    description: str = ""
    photometric: str = "MONOCHROME2"
    ordered_by: str = "position"

    def __len__(self) -> int:
        return int(self.hu.shape[0])

    def index_of(self, sop_uid: str) -> int:
        """Slice index of a SOPInstanceUID (InputError when the series has no such slice)."""
        try:
            return self.sop_uids.index(sop_uid)
        except ValueError:
            raise InputError(f"series {self.series_uid}: no slice with SOPInstanceUID {sop_uid}") from None

    def slice(self, index: int) -> CTSlice:
        """One slice as a :class:`CTSlice`."""
        position = None if self.positions is None else self.positions[index]
        return CTSlice(self.hu[index], self.spacing[1:], self.sop_uids[index], self.series_uid,
                       self.paths[index], list(self.windows), position, None, index + 1,
                       self.spacing[0], self.photometric, self.description)


def slice_geometry(ds: Dataset) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(ImagePositionPatient, unit slice normal from ImageOrientationPatient); None for what is missing."""
    try:
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        return None, None
    if position.shape != (3,) or iop.shape != (6,):
        return None, None
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    if not np.isfinite(norm) or norm < 1e-6:
        return position, None
    return position, normal / norm


def slice_plane(ds: Dataset) -> str | None:
    """"axial", "coronal" or "sagittal" from ImageOrientationPatient (the patient axis the slice normal is
    closest to), or None when the header has no usable orientation. Scanner reformats (MPR) of an axial
    series carry coronal or sagittal orientations; training on them would mix views."""
    _, normal = slice_geometry(ds)
    if normal is None:
        try:
            iop = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
            normal = np.cross(iop[:3], iop[3:])
        except (AttributeError, TypeError, ValueError):
            return None
        if iop.shape != (6,) or not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-6:
            return None
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def missing_rescale(ds: Dataset) -> list[str]:
    """The rescale tags a CT header lacks (read as slope 1 / intercept 0); none when a Modality LUT maps it."""
    if "ModalityLUTSequence" in ds:
        return []
    return [key for key in ("RescaleSlope", "RescaleIntercept") if key not in ds]


def warn_missing_rescale(paths: list[Path], stacklevel: int = 3) -> None:
    """One :class:`DicomWarning` naming the files whose stored values were taken as HU unscaled."""
    if paths:
        warnings.warn(f"{name_files(paths)}: no RescaleSlope/RescaleIntercept; stored values read as HU with "
                      "slope 1, intercept 0 (check that the HU range is plausible)", DicomWarning,
                      stacklevel=stacklevel)


def hu_from_dataset(ds: Dataset, path: str | os.PathLike = "<dataset>", *, warn: bool = True) -> np.ndarray:
    """Stored values → HU (float32) via RescaleSlope/Intercept (or a Modality LUT); padding → HU_MIN.

    Without rescale tags the stored values are the HU, with a :class:`DicomWarning` naming the file
    (``warn=False``: the caller warns, e.g. once for a whole series)."""
    path = Path(path)
    check_single_gray_frame(ds, path, "CT")
    stored = stored_pixels(ds, path)
    padding = None
    if "PixelPaddingValue" in ds:
        low = int(ds.PixelPaddingValue)
        high = int(ds.get("PixelPaddingRangeLimit", low))
        low, high = min(low, high), max(low, high)
        padding = (stored >= low) & (stored <= high)
    slope = float_or_none(ds.get("RescaleSlope", 1.0))
    intercept = float_or_none(ds.get("RescaleIntercept", 0.0))
    if slope is None or intercept is None:
        raise InputError(f"{path}: RescaleSlope/RescaleIntercept are not numbers "
                         f"({ds.get('RescaleSlope')!r}, {ds.get('RescaleIntercept')!r})")
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        from pydicom.pixels import apply_modality_lut
        hu = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    else:
        hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if padding is not None and padding.any():
        hu[padding] = HU_MIN
    if warn and missing_rescale(ds):  # only once the slice has decoded: no warning before an error line
        warn_missing_rescale([path])
    return hu


def read_ct_slice(path: str | os.PathLike, *, warn: bool = True) -> CTSlice:
    """Read one single-frame CT (or other HU-valued grayscale) DICOM file (``warn``: see
    :func:`hu_from_dataset`)."""
    path = Path(path)
    ds = read_dataset(path)
    hu = hu_from_dataset(ds, path, warn=warn)
    position, normal = slice_geometry(ds)
    instance = ds.get("InstanceNumber")
    return CTSlice(
        hu=hu, spacing=pixel_spacing(ds), sop_uid=str(ds.get("SOPInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")), path=path, windows=file_windows(ds),
        position=position, normal=normal, instance_number=int(instance) if instance not in (None, "") else None,
        slice_thickness=float_or_none(ds.get("SliceThickness")),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        description=str(ds.get("SeriesDescription", "")))

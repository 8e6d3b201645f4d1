"""Read DICOM: CT slices, series and trees of series (→ HU), and mammograms (DICOM MG → [0, 1]).

Every problem a user can cause (not DICOM, truncated, no pixels, colour, multi-frame, a series
whose slices differ in size, a compressed syntax no installed handler decodes) becomes one
:class:`~mcfast.errors.InputError` line naming the file; library tracebacks never leak out.
"""
from __future__ import annotations

import os
import struct
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mcfast.errors import InputError, McfastWarning
from mcfast.io.windows import HU_MIN, Window, apply_window

# Compressed pixel data needs these plugins; pydicom decodes RLE by itself.
_HANDLER_HINT = "install pylibjpeg, pylibjpeg-libjpeg (JPEG), pylibjpeg-openjpeg (JPEG 2000) or pyjpegls (JPEG-LS)"
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
# Two slices of a series whose ImagePositionPatient lie closer than this are the same slice: a CT's
# slices are tenths of a millimetre apart at the least, and DS values carry about 16 digits.
SAME_POSITION_MM = 0.01
FILES_NAMED = 5  # how many files a warning names before "and N more"
DUPLICATE_REASON = "duplicate slice (the SOPInstanceUID of another file, or its position in the same series)"


class DicomWarning(McfastWarning):
    """A DICOM file was read on an assumption (or left out) that the user should know about; the
    message names the files."""


def _name_files(paths: list[Path]) -> str:
    names = ", ".join(str(p) for p in paths[:FILES_NAMED])
    return names + (f" and {len(paths) - FILES_NAMED} more" if len(paths) > FILES_NAMED else "")


# --------------------------------------------------------------------------- headers


def read_dataset(path: str | os.PathLike, *, pixels: bool = True) -> Dataset:
    """``pydicom.dcmread`` with one-line errors; ``pixels=False`` stops before PixelData (fast).

    pydicom stops quietly where a file ends, so a cut file is caught here (see :func:`_truncation`)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError:
        raise InputError(f"{path}: not a DICOM file (no DICM preamble)") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a DICOM file") from None
    except struct.error:  # a length or tag unpacked from fewer bytes than it needs: the file ends there
        raise InputError(f"{path}: truncated DICOM file ({path.stat().st_size} bytes; it ends inside an element "
                         "header)") from None
    except Exception as exc:  # truncated or corrupt files fail anywhere inside pydicom
        if _cut_in_file_meta(path):
            raise InputError(f"{path}: truncated DICOM file ({path.stat().st_size} bytes; it ends inside its file "
                             "meta information)") from None
        raise InputError(f"{path}: unreadable DICOM ({_short(exc)})") from None
    reason = _truncation(ds, path, pixels)
    if reason:
        raise InputError(f"{path}: truncated DICOM file ({reason})")
    return ds


def _cut_in_file_meta(path: Path) -> bool:
    """True when the file ends before the end its File Meta Information Group Length (the UL value of
    (0002,0000), the first element after the preamble, at bytes 140..143) announces."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(144)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return False
    if head[128:136] != b"DICM\x02\x00\x00\x00":
        return False
    return len(head) < 144 or size < 144 + struct.unpack("<I", head[140:144])[0]


def _last_element(ds: Dataset) -> tuple[int, int] | None:
    """(tag, end offset) of the element read last from the file (file meta included); None when no
    element of known length carries its file offset (nothing read, or undefined lengths only)."""
    best = None
    for d in (getattr(ds, "file_meta", None) or Dataset(), ds):
        for tag in d.keys():
            raw = d.get_item(tag)
            tell = getattr(raw, "value_tell", None)
            length = getattr(raw, "length", None)
            if tell is None or length is None or length == 0xFFFFFFFF:
                continue
            if best is None or tell > best[1]:
                best = (int(tag), int(tell), int(length))
    return None if best is None else (best[0], best[1] + best[2])


def _truncation(ds: Dataset, path: Path, pixels: bool) -> str | None:
    """Why the freshly read ``ds`` looks cut short, or None. A value shorter than its declared length is
    truncation for certain (pixel data excepted: its decoder says so). When the pixels were asked for
    and are missing, so is a file ending inside an element header, or before SOPInstanceUID (Type 1 in
    every IOD and near the start, so a file cut in its header lacks it; an image stripped of its pixels
    keeps it and is reported as "no PixelData" instead)."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return None  # offsets are in the inflated stream, not the file
    try:
        size = path.stat().st_size
    except OSError:
        return None
    last = _last_element(ds)
    if last is not None and last[1] > size and last[0] not in _PIXEL_TAGS:
        return f"{size} bytes; element {pydicom.tag.Tag(last[0])} needs {last[1]}"
    if not pixels or any(t in ds for t in _PIXEL_TAGS):
        return None
    end = last[1] if last is not None else 0
    if 0 < size - end < 8:
        return f"{size} bytes; it ends inside an element header, before any PixelData"
    if "SOPInstanceUID" not in ds:
        return f"{size} bytes; the data set stops before its SOPInstanceUID and PixelData"
    return None


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file starts with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."


def file_windows(ds: Dataset) -> list[Window]:
    """The file's own display windows (multi-valued WindowCenter/WindowWidth give several)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return []
    centers, widths = ds.WindowCenter, ds.WindowWidth
    centers = list(centers) if isinstance(centers, pydicom.multival.MultiValue) else [centers]
    widths = list(widths) if isinstance(widths, pydicom.multival.MultiValue) else [widths]
    out: list[Window] = []
    for c, w in zip(centers, widths):
        try:
            win = Window(float(c), float(w))
        except (TypeError, ValueError):
            continue
        if win.width > 0 and np.isfinite(win.center) and win not in out:
            out.append(win)
    return out


def _pixel_spacing(ds: Dataset) -> tuple[float, float]:
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None and len(value) == 2:
            try:
                return float(value[0]), float(value[1])
            except (TypeError, ValueError):
                pass
    return 1.0, 1.0


def _check_single_gray_frame(ds: Dataset, path: Path, what: str) -> None:
    if not any(t in ds for t in _PIXEL_TAGS):
        sop_class = getattr(ds.get("SOPClassUID"), "name", "")
        if "Image Storage" in sop_class:
            raise InputError(f"{path}: no PixelData, though it is a {sop_class} file (truncated just before "
                             "its pixels, or stripped of them)")
        raise InputError(f"{path}: no PixelData (not an image, e.g. a structured report or a SEG without frames)")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"{path}: {photometric} image with {samples} sample(s) per pixel; {what} needs grayscale "
                         "(MONOCHROME1/2)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(f"{path}: multi-frame image ({frames} frames) where a single {what} frame is expected")


def _stored_pixels(ds: Dataset, path: Path) -> np.ndarray:
    """Decoded stored values (2-D), with the problems a decoder can hit turned into one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        msg = _short(exc)
        if "plugin" in msg.lower() or "handler" in msg.lower() or "decod" in msg.lower():
            syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
            name = syntax.name if syntax is not None else "unknown transfer syntax"
            hint = _HANDLER_HINT if "JPEG" in name else "pydicom has no decoder for this transfer syntax"
            raise InputError(f"{path}: cannot decode {name} pixel data ({hint})") from None
        raise InputError(f"{path}: cannot decode pixel data ({msg})") from None
    except Exception as exc:
        raise InputError(f"{path}: cannot decode pixel data, the file may be truncated ({_short(exc)})") from None
    if arr.ndim != 2:
        raise InputError(f"{path}: pixel data has shape {arr.shape}, expected one 2-D frame")
    expected = (int(ds.Rows), int(ds.Columns))
    if arr.shape != expected:
        raise InputError(f"{path}: pixel data is {arr.shape}, header says {expected}")
    return arr


# --------------------------------------------------------------------------- CT


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


def _float_or_none(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _geometry(ds: Dataset) -> tuple[np.ndarray | None, np.ndarray | None]:
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
    _, normal = _geometry(ds)
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
        warnings.warn(f"{_name_files(paths)}: no RescaleSlope/RescaleIntercept; stored values read as HU with "
                      "slope 1, intercept 0 (check that the HU range is plausible)", DicomWarning,
                      stacklevel=stacklevel)


def hu_from_dataset(ds: Dataset, path: str | os.PathLike = "<dataset>", *, warn: bool = True) -> np.ndarray:
    """Stored values → HU (float32) via RescaleSlope/Intercept (or a Modality LUT); padding → HU_MIN.

    Without rescale tags the stored values are the HU, with a :class:`DicomWarning` naming the file
    (``warn=False``: the caller warns, e.g. once for a whole series)."""
    path = Path(path)
    _check_single_gray_frame(ds, path, "CT")
    stored = _stored_pixels(ds, path)
    padding = None
    if "PixelPaddingValue" in ds:
        low = int(ds.PixelPaddingValue)
        high = int(ds.get("PixelPaddingRangeLimit", low))
        low, high = min(low, high), max(low, high)
        padding = (stored >= low) & (stored <= high)
    slope = _float_or_none(ds.get("RescaleSlope", 1.0))
    intercept = _float_or_none(ds.get("RescaleIntercept", 0.0))
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
    position, normal = _geometry(ds)
    instance = ds.get("InstanceNumber")
    return CTSlice(
        hu=hu, spacing=_pixel_spacing(ds), sop_uid=str(ds.get("SOPInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")), path=path, windows=file_windows(ds),
        position=position, normal=normal, instance_number=int(instance) if instance not in (None, "") else None,
        slice_thickness=_float_or_none(ds.get("SliceThickness")),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")),
        description=str(ds.get("SeriesDescription", "")))


@dataclass
class DicomScan:
    """Result of scanning a folder tree: readable headers grouped by series, and what was skipped."""

    series: dict[str, list[tuple[Path, Dataset]]]
    skipped: dict[Path, str]


def _iter_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def scan_dicom_tree(root: str | os.PathLike) -> DicomScan:
    """Read the headers of every DICOM file under ``root`` (a file or folder), grouped by SeriesInstanceUID.

    Files that are not DICOM (no ``DICM`` preamble) or whose header cannot be read are recorded in
    ``skipped`` with the reason, not raised. So are duplicate slices (see :func:`drop_duplicate_slices`),
    with one :class:`DicomWarning` naming them.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    files = [root] if root.is_file() else list(_iter_files(root))
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    skipped: dict[Path, str] = {}
    for f in files:
        if not is_dicom_file(f):
            skipped[f] = "not a DICOM file"
            continue
        try:
            ds = read_dataset(f, pixels=False)
        except InputError as exc:
            skipped[f] = str(exc).split(": ", 1)[-1]
            continue
        series[str(ds.get("SeriesInstanceUID", "")) or f"no-series:{f.parent}"].append((f, ds))
    duplicates: dict[Path, Path] = {}
    seen_sops: dict[str, Path] = {}  # a SOPInstanceUID names one instance, whichever series holds the copy
    for uid, headers in series.items():
        series[uid], dropped = drop_duplicate_slices(headers, seen_sops)
        duplicates.update(dropped)
    if duplicates:
        skipped.update({p: DUPLICATE_REASON for p in duplicates})
        pairs = [Path(f"{p.relative_to(root) if p != root else p.name} (= {first.relative_to(root)})")
                 for p, first in duplicates.items()]
        warnings.warn(f"{root}: {len(duplicates)} file(s) left out as {DUPLICATE_REASON}: {_name_files(pairs)}",
                      DicomWarning, stacklevel=2)
    return DicomScan(dict(series), skipped)


def _position_key(ds: Dataset) -> tuple | None:
    """ImagePositionPatient and the slice normal on a :data:`SAME_POSITION_MM` grid; None without them."""
    position, normal = _geometry(ds)
    if position is None or normal is None:
        return None
    return (tuple(np.round(position / SAME_POSITION_MM).astype(np.int64)),
            tuple(np.round(normal / SAME_POSITION_MM).astype(np.int64)))


def drop_duplicate_slices(headers: list[tuple[Path, Dataset]], by_uid: dict[str, Path] | None = None
                          ) -> tuple[list[tuple[Path, Dataset]], dict[Path, Path]]:
    """A series' (path, header) pairs without duplicates: a second file with the SOPInstanceUID of an
    earlier one (a copy), or with its ImagePositionPatient and orientation (the same slice exported
    again under a new UID; stacked, it would give a 0 mm slice spacing). The first file in path order
    is kept. ``by_uid`` (SOPInstanceUID → file, updated) carries the UIDs already seen in other series.
    Returns (kept pairs, {dropped path: the kept file it duplicates})."""
    kept: list[tuple[Path, Dataset]] = []
    dropped: dict[Path, Path] = {}
    by_uid = {} if by_uid is None else by_uid
    by_position: dict[tuple, Path] = {}
    for path, ds in sorted(headers, key=lambda h: str(h[0])):
        uid, key = str(ds.get("SOPInstanceUID", "")), _position_key(ds)
        first = (by_uid.get(uid) if uid else None) or (by_position.get(key) if key is not None else None)
        if first is not None:
            dropped[path] = first
            continue
        kept.append((path, ds))
        if uid:
            by_uid[uid] = path
        if key is not None:
            by_position[key] = path
    return kept, dropped


def slice_order(headers: list[tuple[Path, Dataset]]) -> tuple[list[int], np.ndarray | None, str]:
    """Order of a series' (path, header) pairs: by ImagePositionPatient along the slice normal, else by
    InstanceNumber, else by file name. Returns (order, sorted positions or None, which rule was used)."""
    geo = [_geometry(ds) for _, ds in headers]
    normals = [n for _, n in geo if n is not None]
    if len(normals) == len(headers) and all(p is not None for p, _ in geo):
        normal = normals[0]
        dist = np.array([float(np.dot(p, normal)) for p, _ in geo])
        order = sorted(range(len(headers)), key=lambda i: (dist[i], str(headers[i][0])))
        return order, np.stack([geo[i][0] for i in order]), "position"
    inst = [headers[i][1].get("InstanceNumber") for i in range(len(headers))]
    if all(v not in (None, "") for v in inst):
        order = sorted(range(len(headers)), key=lambda i: (int(inst[i]), str(headers[i][0])))
        return order, None, "instance"
    return sorted(range(len(headers)), key=lambda i: str(headers[i][0])), None, "filename"


def load_series(uid: str, headers: list[tuple[Path, Dataset]]) -> CTVolume:
    """Decode one series from its scanned headers (see :func:`scan_dicom_tree`) into a CTVolume."""
    first_shape = None
    for path, ds in headers:
        shape = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
        if first_shape is None:
            first_shape, first_path = shape, path
        elif shape != first_shape:
            raise InputError(f"{path}: slice is {shape[0]}x{shape[1]} but {first_path.name} in the same series "
                             f"is {first_shape[0]}x{first_shape[1]}; the series has inconsistent slice sizes")
    order, positions, ordered_by = slice_order(headers)
    slices = [read_ct_slice(headers[i][0], warn=False) for i in order]
    warn_missing_rescale([headers[i][0] for i in order if missing_rescale(headers[i][1])])
    hu = np.stack([s.hu for s in slices]).astype(np.float32, copy=False)
    if positions is not None and len(positions) > 1:
        normal = slices[0].normal
        steps = np.abs(np.diff(positions @ normal))
        if steps.min() < SAME_POSITION_MM:
            k = int(np.argmin(steps))
            raise InputError(f"{slices[k + 1].path}: same position as {slices[k].path.name} in series {uid}, a "
                             "duplicate slice (scan_dicom_tree leaves such files out)")
        dz = float(np.median(steps))
    else:
        dz = _float_or_none(headers[0][1].get("SpacingBetweenSlices")) or slices[0].slice_thickness or 1.0
    return CTVolume(hu=hu, spacing=(dz, *slices[0].spacing), sop_uids=[s.sop_uid for s in slices],
                    paths=[s.path for s in slices], series_uid=uid, windows=slices[0].windows,
                    positions=positions, description=slices[0].description, photometric=slices[0].photometric,
                    ordered_by=ordered_by)


def read_ct_tree(path: str | os.PathLike) -> list[CTVolume]:
    """Every series under ``path`` as a :class:`CTVolume` (sorted by series description, then UID).

    Non-DICOM files are ignored; an unreadable slice or inconsistent slice sizes raise InputError.
    """
    scan = scan_dicom_tree(path)
    if not scan.series:
        raise InputError(f"{path}: no readable DICOM files found ({len(scan.skipped)} other files)")
    uids = sorted(scan.series, key=lambda u: (str(scan.series[u][0][1].get("SeriesDescription", "")),
                                              str(scan.series[u][0][0].parent), u))
    return [load_series(u, scan.series[u]) for u in uids]


def read_ct(path: str | os.PathLike) -> CTSlice | CTVolume:
    """Read CT as HU (float32): a file gives a :class:`CTSlice`, a series folder a :class:`CTVolume`.

    A folder may hold other (non-DICOM) files; slices are ordered by ImagePositionPatient along the slice
    normal, falling back to InstanceNumber. A folder holding several series raises InputError listing
    them: pass one series folder, or use :func:`read_ct_tree` for all of them.
    """
    path = Path(path)
    if path.is_file():
        return read_ct_slice(path)
    scan = scan_dicom_tree(path)
    if not scan.series:
        raise InputError(f"{path}: no readable DICOM files found ({len(scan.skipped)} other files)")
    if len(scan.series) > 1:
        folders = sorted({str(h[0][0].parent.relative_to(path)) or "." for h in scan.series.values()})
        raise InputError(f"{path}: holds {len(scan.series)} series (in {', '.join(folders)}); pass one series folder "
                         "or use read_ct_tree")
    uid, headers = next(iter(scan.series.items()))
    return load_series(uid, headers)


# --------------------------------------------------------------------------- MG


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
    _check_single_gray_frame(ds, path, "mammogram")
    stored = _stored_pixels(ds, path)
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
    return MGImage(image=img.astype(np.float32), spacing=_pixel_spacing(ds), photometric=photometric,
                   bits_stored=bits, laterality=str(ds.get("ImageLaterality", ds.get("Laterality", "")) or ""),
                   view=str(ds.get("ViewPosition", "") or ""), voi=voi, windows=windows, path=path,
                   sop_uid=str(ds.get("SOPInstanceUID", "")))


def read_mg_dicom(path: str | os.PathLike) -> MGImage:
    """Read a DICOM mammogram (MONOCHROME1 inverted so dense tissue is bright; 8–16-bit)."""
    path = Path(path)
    return mg_from_dataset(read_dataset(path), path)

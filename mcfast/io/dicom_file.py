"""Read one DICOM file: the header with one-line errors (a cut file is caught, see :func:`read_dataset`),
the stored pixels of a single grayscale frame, the file's own windows and pixel spacing.

The layer under :mod:`mcfast.io.dicom_ct` and :mod:`mcfast.io.dicom_mg`: every problem a user can cause
(not DICOM, truncated, no pixels, colour, multi-frame, a compressed syntax no installed handler decodes)
becomes one :class:`~mcfast.errors.InputError` line naming the file.
"""
from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from mcfast.errors import InputError, McfastWarning
from mcfast.io.windows import Window

# Compressed pixel data needs these plugins; pydicom decodes RLE by itself.
_HANDLER_HINT = "install pylibjpeg, pylibjpeg-libjpeg (JPEG), pylibjpeg-openjpeg (JPEG 2000) or pyjpegls (JPEG-LS)"
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData
FILES_NAMED = 5  # how many files a warning names before "and N more"


class DicomWarning(McfastWarning):
    """A DICOM file was read on an assumption (or left out) that the user should know about; the
    message names the files."""


def name_files(paths: list[Path]) -> str:
    """The first :data:`FILES_NAMED` paths, comma-separated, then "and N more": a warning's list of files."""
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
    if last is not None and last[1] > size and last[0] not in PIXEL_TAGS:
        return f"{size} bytes; element {pydicom.tag.Tag(last[0])} needs {last[1]}"
    if not pixels or any(t in ds for t in PIXEL_TAGS):
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


def pixel_spacing(ds: Dataset) -> tuple[float, float]:
    """(row, column) mm from PixelSpacing, else ImagerPixelSpacing, else (1, 1)."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(key)
        if value is not None and len(value) == 2:
            try:
                return float(value[0]), float(value[1])
            except (TypeError, ValueError):
                pass
    return 1.0, 1.0


def check_single_gray_frame(ds: Dataset, path: Path, what: str) -> None:
    """InputError unless ``ds`` holds pixels of one grayscale (MONOCHROME1/2) frame; ``what`` names the use."""
    if not any(t in ds for t in PIXEL_TAGS):
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


def stored_pixels(ds: Dataset, path: Path) -> np.ndarray:
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


def float_or_none(value) -> float | None:
    """A header value as a finite float; None when it is absent, not a number, NaN or infinite."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None

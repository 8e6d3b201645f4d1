"""Render study images for display: read PNG / NPY / DICOM, window CT, resize to one size, encode a bare PNG.

Every image leaves here as an 8-bit grayscale PNG of the same square size with no metadata chunks, so nothing but
the pixels can tell a reader (or the browser's dev tools) where an image came from.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from mcfast.errors import InputError
from mcfast.io.windows import WINDOWS, apply_window

# The paper's three display windows (center, width in HU), drawn per CT image.
CT_WINDOWS = {name: WINDOWS[name] for name in ("lung", "soft_tissue", "bone")}
PNG_SUFFIXES = {".png"}
NPY_SUFFIXES = {".npy"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
IMAGE_SUFFIXES = PNG_SUFFIXES | NPY_SUFFIXES | DICOM_SUFFIXES
MODALITIES = ("ct", "mg")


def needs_window(path: Path, modality: str) -> bool:
    """True when ``path`` holds CT values in HU (NPY or DICOM) that must be shown in a drawn window."""
    return modality == "ct" and path.suffix.lower() in NPY_SUFFIXES | DICOM_SUFFIXES


def _as_2d(array: np.ndarray, path: Path) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise InputError(f"{path}: expected a 2-D grayscale image, got shape {tuple(array.shape)}")
    if array.size == 0:
        raise InputError(f"{path}: empty image")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{path}: unsupported pixel type {array.dtype}")
    if not np.isfinite(array).all():
        raise InputError(f"{path}: image contains NaN or infinite values")
    return array.astype(np.float64)


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return np.zeros_like(values) if high <= low else (values - low) / (high - low)


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                pixels = np.asarray(img, dtype=np.float64)
                # PIL opens 16-bit PNGs as I;16 or I; both hold 0..65535.
                return _as_2d(pixels, path) / 65535.0
            pixels = np.asarray(img.convert("L"), dtype=np.float64)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: cannot read PNG ({exc})") from None
    return _as_2d(pixels, path) / 255.0


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read NPY ({exc})") from None
    return _as_2d(array, path)


def _read_dicom(path: Path, modality: str) -> np.ndarray:
    """CT: HU via slope/intercept; MG: [0, 1] through the file's VOI LUT / window, MONOCHROME1 inverted."""
    from mcfast.io.dicom import read_ct_slice, read_mg_dicom

    if modality == "ct":
        return _as_2d(read_ct_slice(path).hu, path)
    return _as_2d(read_mg_dicom(path).image, path)


def load_display(path: Path, modality: str, window: str | None) -> np.ndarray:
    """Read ``path`` as display values in [0, 1].

    CT NPY / DICOM hold HU and are shown in ``window`` (a key of ``CT_WINDOWS``); mammography NPY is stretched
    from its minimum to maximum, mammography DICOM displayed as its file says (``mcfast.io.dicom.read_mg_dicom``);
    PNG is shown as is (8-bit / 255, 16-bit / 65535).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if modality not in MODALITIES:
        raise InputError(f"modality {modality!r}: expected one of {', '.join(MODALITIES)}")
    if suffix in PNG_SUFFIXES:
        return _read_png(path)
    if suffix in NPY_SUFFIXES:
        values = _read_npy(path)
    elif suffix in DICOM_SUFFIXES:
        values = _read_dicom(path, modality)
        if modality == "mg":
            return values
    else:
        raise InputError(f"{path}: unsupported image type {suffix!r} (use PNG, NPY or DICOM)")
    if modality == "mg":
        return _stretch(values)
    if window not in CT_WINDOWS:
        raise InputError(f"window {window!r}: expected one of {', '.join(CT_WINDOWS)}")
    center, width = CT_WINDOWS[window]
    return np.asarray(apply_window(values, center, width), dtype=np.float64)


def fit_square(display: np.ndarray, size: int) -> np.ndarray:
    """Resize to fit a ``size`` x ``size`` square keeping the aspect ratio, centred on black; uint8 output."""
    height, width = display.shape
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    img = Image.fromarray(display.astype(np.float32))
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    scaled = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
    canvas = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = np.rint(scaled * 255.0).astype(np.uint8)
    return canvas


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode uint8 (H, W) pixels as a grayscale PNG with only IHDR, IDAT and IEND chunks."""
    buffer = io.BytesIO()
    # A fresh Image from an array carries no info dict, so PIL writes no text, time or gamma chunks.
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def png_chunk_types(data: bytes) -> list[str]:
    """Chunk types of a PNG byte string, in order (used to check that no metadata is served)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise InputError("not a PNG stream")
    types, offset = [], 8
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        types.append(data[offset + 4:offset + 8].decode("latin-1"))
        offset += 12 + length
    return types


def render(path: Path, modality: str, window: str | None, size: int) -> bytes:
    """Read, window, resize and encode one study image."""
    return encode_png(fit_square(load_display(path, modality, window), size))

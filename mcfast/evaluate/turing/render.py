"""Render study images for display: read PNG / NPY / DICOM, window CT, resize to one size, encode a bare PNG.

Every image leaves here as an 8-bit grayscale PNG of the same square size with no metadata chunks and with its
pixels *stored*, not compressed (deflate block type 0). A compressed PNG's length follows the image's smoothness,
and that alone told real from synthetic images apart; a stored PNG's length depends only on its width and height,
so every image of a study has the same bytes count and nothing but the pixels can tell a reader (or the browser's
dev tools) where an image came from.
"""
from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from mcfast.constants import MODALITIES
from mcfast.errors import InputError
from mcfast.io.windows import WINDOWS, apply_window

# The paper's three display windows (center, width in HU), drawn per CT image.
CT_WINDOWS = {name: WINDOWS[name] for name in ("lung", "soft_tissue", "bone")}
PNG_SUFFIXES = {".png"}
NPY_SUFFIXES = {".npy"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
IMAGE_SUFFIXES = PNG_SUFFIXES | NPY_SUFFIXES | DICOM_SUFFIXES


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
    # mcfast's one raster reader: it refuses colour, palette and transparent images with a line naming the file
    # (a grayscale picture saved as RGB passes), where a convert("L") here would turn colour gray without a word.
    from mcfast.io.images import read_raster

    pixels, _ = read_raster(path, normalize=True)  # 8-bit / 255, 16-bit / 65535
    return _as_2d(pixels, path)


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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STORED_BLOCK = 65535  # the most bytes one stored deflate block holds


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def stored_png_length(height: int, width: int) -> int:
    """The byte length of :func:`encode_png`'s output for a ``height`` x ``width`` image, whatever its pixels."""
    raw = height * (width + 1)
    blocks = max(1, math.ceil(raw / _STORED_BLOCK))
    idat = 2 + 5 * blocks + raw + 4  # zlib header, a 5-byte header per stored block, the rows, Adler-32
    return len(PNG_SIGNATURE) + (12 + 13) + (12 + idat) + 12


def png_header(height: int, width: int) -> bytes:
    """Signature and IHDR chunk of an 8-bit grayscale, non-interlaced PNG: the first 33 bytes of every study image."""
    return PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode uint8 (H, W) pixels as a grayscale PNG with only IHDR, IDAT and IEND chunks, pixels stored.

    The zlib stream is written here block by block (no compression, filter type 0 on every row) rather than with
    ``zlib.compress(level=0)``, so that its length is fixed by the format, not by how a zlib version splits blocks:
    ``len(encode_png(p)) == stored_png_length(*p.shape)`` for all pixels ``p``.
    """
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim != 2 or pixels.size == 0:
        raise InputError(f"expected a non-empty 2-D uint8 image, got shape {tuple(pixels.shape)}")
    height, width = pixels.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # column 0: filter type 0 (None) for every row
    rows[:, 1:] = pixels
    raw = rows.tobytes()
    parts = [b"\x78\x01"]  # zlib header: deflate, 32 KiB window, "fastest" level; 0x7801 % 31 == 0
    starts = range(0, len(raw), _STORED_BLOCK)
    for start in starts:
        block = raw[start:start + _STORED_BLOCK]
        final = 1 if start + _STORED_BLOCK >= len(raw) else 0
        parts.append(struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF) + block)
    parts.append(struct.pack(">I", zlib.adler32(raw)))
    data = png_header(height, width) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    assert len(data) == stored_png_length(height, width)
    return data


def decode_png(data: bytes, path: Path | str = "PNG") -> np.ndarray:
    """The uint8 (H, W) pixels of an 8-bit grayscale PNG byte string (a rendered study image)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode, pixels = img.mode, np.asarray(img, dtype=np.uint8).copy()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: cannot read PNG ({' '.join(str(exc).split())})") from None
    if mode != "L":
        raise InputError(f"{path}: a study image must be 8-bit grayscale, this one is {mode}")
    return pixels


def png_chunk_types(data: bytes) -> list[str]:
    """Chunk types of a PNG byte string, in order (used to check that no metadata is served)."""
    if data[:8] != PNG_SIGNATURE:
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

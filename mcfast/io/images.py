"""Read PNG / PGM / TIFF / NPY images as grayscale float32, and DICOM through :mod:`mcfast.io.dicom`.

Checks turn the usual surprises into one clear line: colour or palette images, alpha channels,
unreadable or truncated files, NPY arrays with NaN/Inf or more than one channel.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mcfast.errors import InputError

RASTER_SUFFIXES = {".png", ".pgm", ".pnm", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}


def _gray_from_rgb(rgb: np.ndarray, path: Path, mode: str) -> np.ndarray:
    # A grayscale picture saved as RGB (all channels equal) is still grayscale; real colour is refused.
    if rgb.shape[-1] == 4:
        if not (rgb[..., 3] == rgb[..., 3].max()).all():
            raise InputError(f"{path}: {mode} image with transparency; mcfast needs an opaque grayscale image")
        rgb = rgb[..., :3]
    if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
        raise InputError(f"{path}: {mode} colour image; mcfast needs grayscale (convert it to 8- or 16-bit gray)")
    return rgb[..., 0]


def read_raster(path: str | os.PathLike, normalize: bool = True) -> tuple[np.ndarray, int]:
    """Read a PNG/PGM/TIFF as (H, W) float32 and its bit depth.

    ``normalize=True`` divides by the format's maximum (255 for 8-bit, 65535 for 16-bit) so the result is
    in [0, 1]; ``False`` keeps the stored values.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "P":
                raise InputError(f"{path}: palette (indexed colour) image; mcfast needs grayscale "
                                 "(convert it to 8- or 16-bit gray)")
            if mode == "LA":
                arr = np.asarray(im)
                if not (arr[..., 1] == arr[..., 1].max()).all():
                    raise InputError(f"{path}: grayscale image with transparency; mcfast needs an opaque image")
                arr = arr[..., 0]
            elif mode in ("RGB", "RGBA"):
                arr = _gray_from_rgb(np.asarray(im), path, mode)
            elif mode in ("L", "1", "I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im)
            else:
                raise InputError(f"{path}: unsupported image mode {mode}; mcfast needs 8- or 16-bit grayscale")
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{path}: unreadable or truncated image ({' '.join(str(exc).split())})") from None
    if arr.ndim != 2:
        raise InputError(f"{path}: image has shape {arr.shape}, expected 2-D grayscale")
    if arr.dtype == bool:
        bits = 1
    elif arr.dtype == np.uint8:
        bits = 8
    elif arr.dtype.kind in "ui":
        bits = 16
        if arr.min() < 0 or arr.max() > 65535:
            raise InputError(f"{path}: integer pixel values outside 0..65535")
    else:
        bits = 32
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise InputError(f"{path}: image contains NaN or Inf")
    if normalize and bits in (1, 8, 16):
        out /= float(2 ** bits - 1)
    return out, bits


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """Read an NPY image as (H, W) float32 (a leading channel of 1 is dropped); NaN/Inf are refused."""
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode=None)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({' '.join(str(exc).split())})") from None
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"{path}: array has shape {arr.shape}, expected (H, W) or (1, H, W)")
    if arr.dtype.kind not in "uif" and arr.dtype != bool:
        raise InputError(f"{path}: array dtype {arr.dtype} is not numeric")
    out = arr.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        raise InputError(f"{path}: array contains {int(bad.sum())} NaN/Inf values")
    return out


def read_image(path: str | os.PathLike, normalize: bool = True) -> np.ndarray:
    """Read any supported single image as a grayscale (H, W) float32 array.

    - PNG/PGM/TIFF: [0, 1] (divided by 255 or 65535) with ``normalize=True``, stored values otherwise.
    - NPY: values as stored (HU or model space; whatever was written), NaN/Inf refused.
    - DICOM: CT (Modality CT) in HU; anything else as a mammogram in [0, 1] with dense tissue bright.

    RGB, palette and multi-frame images raise :class:`~mcfast.errors.InputError`.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an image file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return read_npy(path)
    from mcfast.io import dicom

    if dicom.is_dicom_file(path) or suffix in (".dcm", ".dicom"):
        ds = dicom.read_dataset(path)
        if str(ds.get("Modality", "")).upper() == "CT":
            return dicom.hu_from_dataset(ds, path)
        return dicom.mg_from_dataset(ds, path).image
    return read_raster(path, normalize=normalize)[0]

"""Read PNG / PGM / TIFF / NPY images as grayscale float32, and DICOM through :mod:`mcfast.io.dicom`.

Checks turn the usual surprises into one clear line: colour or palette images, alpha channels,
unreadable or truncated files, NPY arrays with NaN/Inf or more than one channel, and files whose header
claims more than :data:`MAX_IMAGE_PIXELS` pixels (refused from the header, before any pixel is decoded
or memory allocated: a "decompression bomb").
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from mcfast.errors import InputError

RASTER_SUFFIXES = {".png", ".pgm", ".pnm", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima", ""}

# The largest image mcfast reads: 2**27 pixels (e.g. 11585², 512 MiB as float32), far above any CT slice
# or full-field mammogram (about 4096 x 5600). Checked from the file header before decoding.
MAX_IMAGE_PIXELS = 2 ** 27
# The largest image side mcfast makes or trains on (prepare --size, train --image-size / --crop):
# a 4096² float32 item is 64 MiB.
MAX_OUTPUT_SIZE = 4096


def check_pixel_count(path, shape) -> None:
    """Refuse an image whose header claims more than :data:`MAX_IMAGE_PIXELS` pixels."""
    count = 1
    for n in shape:
        count *= int(n)
    if count > MAX_IMAGE_PIXELS:
        dims = " x ".join(str(int(n)) for n in shape)
        raise InputError(f"{path}: header claims {dims} = {count} pixels, more than the {MAX_IMAGE_PIXELS} "
                         f"mcfast reads (a corrupt file or a decompression bomb)")


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
        with warnings.catch_warnings():
            # PIL warns above its own limit and raises above twice it; ours is checked right after open()
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: header claims {_claimed_pixels(exc)} pixels, more than the {MAX_IMAGE_PIXELS} "
                         f"mcfast reads (a corrupt file or a decompression bomb)") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            from mcfast.io.paths import os_error_line
            raise InputError(os_error_line(exc, path)) from None
        raise InputError(f"{path}: unreadable or truncated image ({' '.join(str(exc).split())})") from None
    try:
        with im:
            check_pixel_count(path, im.size[::-1])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
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
    with np.errstate(over="ignore", invalid="ignore"):  # a value beyond float32 becomes Inf, refused next
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise InputError(f"{path}: image contains NaN or Inf")
    if normalize and bits in (1, 8, 16):
        out /= float(2 ** bits - 1)
    return out, bits


def _claimed_pixels(exc: Exception) -> str:
    """The pixel count PIL's DecompressionBombError names ("Image size (N pixels) exceeds ...")."""
    import re

    m = re.search(r"\((\d+) pixels\)", str(exc))
    return m.group(1) if m else "more"


def npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an NPY file's header, without reading the data; a shape beyond
    :data:`MAX_IMAGE_PIXELS` (a corrupt or hostile header) is refused."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected a .npy file") from None
    except OSError as exc:
        from mcfast.io.paths import os_error_line
        raise InputError(os_error_line(exc, path)) from None
    except (ValueError, EOFError, SyntaxError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({' '.join(str(exc).split())})") from None
    check_pixel_count(path, shape)
    return tuple(int(n) for n in shape), dtype


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """Read an NPY image as (H, W) float32 (a leading channel of 1 is dropped); NaN/Inf are refused, and so
    is a header whose shape is not an image or claims more than :data:`MAX_IMAGE_PIXELS` pixels."""
    path = Path(path)
    shape, dtype = npy_header(path)
    if not (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)):
        raise InputError(f"{path}: array has shape {shape}, expected (H, W) or (1, H, W)")
    if dtype.hasobject:
        raise InputError(f"{path}: array dtype {dtype} holds Python objects; mcfast reads numeric arrays only")
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
    with np.errstate(over="ignore", invalid="ignore"):  # a value beyond float32 becomes Inf, refused next
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
        from mcfast.io.paths import check_input_path
        check_input_path(path, "file")  # a symlink loop says so
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

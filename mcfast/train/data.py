"""A small training dataset over a folder of grayscale PNG (8/16-bit) or NPY images, in model space [-1, 1].

The whole folder is checked up front from file headers (cheap): empty folder, unsupported
files, unreadable images and mixed sizes each raise one :class:`InputError` naming the file.
Any ``torch.utils.data.Dataset`` yielding (1, H, W) float tensors in [-1, 1] works with the
trainer as well (e.g. the DICOM datasets of ``mcfast.io.datasets``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from mcfast.errors import InputError

IMAGE_SUFFIXES = (".png", ".npy")
# Values a little outside [-1, 1] from float rounding are clipped rather than rejected.
RANGE_TOLERANCE = 1e-3


def parse_range(text: str | None) -> tuple[float, float] | None:
    """Parse "lo,hi" (e.g. "-1024,3071") into floats; None stays None."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--npy-range {text!r}: expected two numbers 'lo,hi'") from None
    if not hi > lo:
        raise InputError(f"--npy-range {text!r}: hi must be greater than lo")
    return lo, hi


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of a PNG or NPY file from its header, with a clear error for anything unreadable."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # numpy raises several types for a bad header
            raise InputError(f"{path}: not a readable .npy array ({exc})") from None
        shape = tuple(arr.shape)
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 2:
            raise InputError(f"{path}: expected a 2-D grayscale array (H, W) or (1, H, W), got shape {tuple(arr.shape)}")
        return int(shape[0]), int(shape[1])
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            return im.height, im.width
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(f"{path}: not a readable PNG image ({exc})") from None


def load_image(path: Path, npy_range: tuple[float, float] | None = None) -> np.ndarray:
    """One image as float32 (H, W) in [-1, 1].

    PNG: 8-bit /255, 16-bit /65535, RGB converted to luminance. NPY: integer arrays scale by their
    dtype's maximum; float arrays must already be in [-1, 1] unless ``npy_range`` (lo, hi) maps them.
    """
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        arr = arr.reshape(arr.shape[-2:])
        # Before any mapping: clipping to --npy-range would pass NaN through into the loss.
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise InputError(f"{path}: array contains NaN or infinite values")
        if npy_range is not None:
            lo, hi = npy_range
            unit = (np.clip(arr.astype(np.float64), lo, hi) - lo) / (hi - lo)
        elif np.issubdtype(arr.dtype, np.integer):
            unit = arr.astype(np.float64) / np.iinfo(arr.dtype).max
        else:
            arr = arr.astype(np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
                raise InputError(f"{path}: float values span [{lo:g}, {hi:g}], outside [-1, 1]; "
                                 f"pass --npy-range lo,hi to map them")
            return np.clip(arr, -1, 1)
        return (unit * 2 - 1).astype(np.float32)
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                peak = 65535.0
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float64)
                peak = 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not a readable PNG image ({exc})") from None
    return (np.clip(arr / peak, 0, 1) * 2 - 1).astype(np.float32)


class ImageFolderDataset(Dataset):
    """All ``*.png`` / ``*.npy`` files under ``root`` (recursively), as (1, S, S) float tensors in [-1, 1].

    Every image must have the same size; with ``image_size`` set, images of another size are
    resized (antialiased) to ``image_size``×``image_size`` (they must then be square).
    """

    def __init__(self, root: str | Path, image_size: int | None = None,
                 npy_range: tuple[float, float] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: data folder does not exist")
        # JSON sidecars (the manifest of `mcfast prepare` / `mcfast phantoms`) are metadata, not data.
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() != ".json"
                       and not any(part.startswith(".") for part in p.relative_to(self.root).parts))
        for p in files:
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{p}: not an image for training (expected .png or .npy files only)")
        if not files:
            raise InputError(f"{self.root}: data folder holds no .png or .npy images")
        first_size = _image_size(files[0])
        for p in files[1:]:
            size = _image_size(p)
            if size != first_size:
                raise InputError(f"{p}: image is {size[0]}x{size[1]} but {files[0].name} is "
                                 f"{first_size[0]}x{first_size[1]}; all training images must have one size")
        if image_size is not None and first_size != (image_size, image_size) and first_size[0] != first_size[1]:
            raise InputError(f"{files[0]}: images are {first_size[0]}x{first_size[1]} (not square) and cannot be "
                             f"resized to --image-size {image_size}")
        self.files = files
        self.npy_range = npy_range
        self.native_size = first_size
        self.image_size = image_size if image_size is not None else first_size[0]
        if image_size is None and first_size[0] != first_size[1]:
            raise InputError(f"{files[0]}: images are {first_size[0]}x{first_size[1]}; training needs square images")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        x = torch.from_numpy(load_image(self.files[index], self.npy_range))[None]
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x[None], size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=True, align_corners=False)[0].clamp(-1, 1)
        return x

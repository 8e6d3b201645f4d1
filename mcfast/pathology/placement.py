"""Place a lesion patch inside tissue (lungs / breast) and return its exact mask, box and centre.

The patch square must lie fully inside the image and at least ``min_overlap`` of its lesion mask
must fall on the tissue mask. All valid top-left positions are found at once (the overlap of the
lesion mask with the tissue at every offset is one cross-correlation), then one is drawn uniformly
with the caller's generator; so a valid position is found whenever one exists, and the error
"no valid position" is exact rather than "gave up after N random tries".
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import fft

from mcfast.errors import InputError
from mcfast.pathology.patches import Patch, mask_box


class Placement(NamedTuple):
    """Result of :func:`place_patch`.

    ``canvas`` float32 (H, W): the patch values at their place, ``fill`` elsewhere;
    ``mask`` uint8 (H, W): the inserted lesion; ``box`` COCO ``(x, y, w, h)`` = bounding box of ``mask``;
    ``center`` ``(cx, cy)``: the lesion mask's centroid in pixels (x = column).
    """

    canvas: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int]
    center: tuple[float, float]


def overlap_map(tissue_mask: np.ndarray, lesion_mask: np.ndarray) -> np.ndarray:
    """Fraction of the lesion on tissue for every top-left offset that keeps the patch inside the image.

    Shape (H - h + 1, W - w + 1); entry [r, c] is ``sum(lesion & tissue[r:r+h, c:c+w]) / sum(lesion)``.
    """
    t = np.asarray(tissue_mask, dtype=np.float64)
    m = np.asarray(lesion_mask, dtype=np.float64)
    return np.rint(valid_correlation(t, m)) / m.sum()  # counts are integers; rint removes FFT round-off


def valid_correlation(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``sum(kernel * image[r:r+h, c:c+w])`` for every offset inside the image, by FFT (scipy.fft: the
    same numbers as scipy.signal.fftconvolve with the flipped kernel, without importing scipy.signal,
    which costs about 0.5 s of every CLI start)."""
    (H, W), (h, w) = image.shape, kernel.shape
    shape = (fft.next_fast_len(H + h - 1, real=True), fft.next_fast_len(W + w - 1, real=True))
    full = fft.irfft2(fft.rfft2(image, shape) * fft.rfft2(kernel[::-1, ::-1], shape), shape)
    return full[h - 1:H, w - 1:W]


def place_patch(anatomy_shape: tuple[int, int], tissue_mask: np.ndarray, patch: Patch, rng: np.random.Generator,
                min_overlap: float = 0.9, fill: float = 0.0) -> Placement:
    """Put ``patch`` at a random position where >= ``min_overlap`` of its lesion mask lies on ``tissue_mask``.

    Raises InputError when the patch is bigger than the image, the shapes disagree, or no position
    satisfies the overlap.
    """
    shape = tuple(int(s) for s in anatomy_shape)
    if len(shape) != 2 or min(shape) <= 0:
        raise InputError(f"anatomy shape {anatomy_shape!r} must be (H, W) with positive sizes")
    tissue = np.asarray(tissue_mask) > 0
    if tissue.shape != shape:
        raise InputError(f"tissue mask shape {tissue.shape} differs from the anatomy shape {shape}")
    if not 0.0 <= min_overlap <= 1.0:
        raise InputError(f"min_overlap {min_overlap} must be in [0, 1]")
    h, w = patch.shape
    if h > shape[0] or w > shape[1]:
        raise InputError(f"patch {patch.source!r} is {h}x{w} pixels, bigger than the {shape[0]}x{shape[1]} image")
    lesion = patch.mask.astype(bool)
    frac = overlap_map(tissue, lesion)
    candidates = np.argwhere(frac >= min_overlap - 1e-9)
    if len(candidates) == 0:
        best = float(frac.max()) if frac.size else 0.0
        raise InputError(f"patch {patch.source!r} ({h}x{w}): no position puts >= {min_overlap:.2f} of the lesion "
                         f"inside the tissue mask (best {best:.2f}); use a smaller patch or a lower min_overlap")
    r0, c0 = (int(v) for v in candidates[rng.integers(len(candidates))])
    return place_patch_at(shape, patch, (r0, c0), fill)


def place_patch_at(anatomy_shape: tuple[int, int], patch: Patch, offset: tuple[int, int],
                   fill: float = 0.0) -> Placement:
    """Put ``patch`` with its top-left corner at ``offset`` (row, col); the patch must fit in the image."""
    shape = tuple(int(s) for s in anatomy_shape)
    h, w = patch.shape
    r0, c0 = (int(v) for v in offset)
    if r0 < 0 or c0 < 0 or r0 + h > shape[0] or c0 + w > shape[1]:
        raise InputError(f"patch {patch.source!r} ({h}x{w}) at row {r0}, col {c0} does not fit the "
                         f"{shape[0]}x{shape[1]} image")
    canvas = np.full(shape, fill, dtype=np.float32)
    canvas[r0:r0 + h, c0:c0 + w] = patch.image
    mask = np.zeros(shape, dtype=np.uint8)
    mask[r0:r0 + h, c0:c0 + w] = patch.mask
    rows, cols = np.nonzero(mask)
    return Placement(canvas, mask, mask_box(mask), (float(cols.mean()), float(rows.mean())))

"""Masks of a reference image: the tissue a pathology patch may be placed in (lungs in CT, breast in
mammograms), the body (CT) and the scanner's padding outside the reconstructed field of view."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from mcfast.errors import InputError

#: HU above which a CT pixel may belong to the body (:func:`body_mask`).
BODY_THRESHOLD_HU = -500.0


def _check_image(img: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim != 2:
        raise InputError(f"{what} needs a 2-D image, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{what}: image contains NaN or Inf")
    return arr


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def _joined_to_border(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` whose connected component touches the image border."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, border[border > 0])


def _close_and_fill(component: np.ndarray, radius: int) -> np.ndarray:
    """Closing + hole filling of one component inside its padded bounding box.

    Done per component so that closing cannot bridge the two lungs across the anterior junction.
    Filling puts the vessels (above the threshold) back into the lung.
    """
    rows, cols = np.nonzero(component)
    pad = radius + 1
    r0, r1 = rows.min(), rows.max() + 1
    c0, c1 = cols.min(), cols.max() + 1
    crop = np.pad(component[r0:r1, c0:c1], pad)
    crop = ndimage.binary_closing(crop, structure=_disk(radius)) if radius > 0 else crop
    crop = ndimage.binary_fill_holes(crop)[pad:-pad, pad:-pad]
    # closing can leave detached specks (pixels between two nearby concavities): keep the main piece
    labels, n = ndimage.label(crop)
    if n > 1:
        crop = labels == int(np.bincount(labels.ravel())[1:].argmax()) + 1
    out = np.zeros_like(component)
    out[r0:r1, c0:c1] = crop
    return out


def lung_mask(hu: np.ndarray, threshold: float = -400.0, min_second_fraction: float = 0.05) -> np.ndarray:
    """Boolean mask of the two lungs in an axial CT slice given in HU.

    Steps: voxels below ``threshold`` -> drop the air connected to the image border (outside the
    body, outside the scan circle) -> opening against noise specks -> the two largest components
    -> per-component closing and hole filling (vessels and nodules inside the lung belong to it).
    The second component is dropped when it is smaller than ``min_second_fraction`` of the first
    (the trachea or a bowel gas pocket rather than a lung; e.g. when the two lungs touch).
    A slice without lungs gives an all-False mask.
    """
    arr = _check_image(hu, "lung_mask")
    size = max(arr.shape)
    low = arr < threshold
    if not low.any():
        return np.zeros(arr.shape, dtype=bool)
    inside = low & ~_joined_to_border(low)
    open_r = max(1, size // 256)
    inside = ndimage.binary_opening(inside, structure=_disk(open_r))
    labels, n = ndimage.label(inside)
    if n == 0:
        return np.zeros(arr.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    keep = [order[0]]
    if n >= 2 and sizes[order[1]] >= min_second_fraction * sizes[order[0]]:
        keep.append(order[1])
    close_r = max(1, size // 128)
    out = np.zeros(arr.shape, dtype=bool)
    for lab in keep:
        out |= _close_and_fill(labels == lab, close_r)
    return out


def body_mask(hu: np.ndarray, threshold: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """(H, W) bool: largest connected component of ``hu > threshold`` with its holes filled
    (so the lungs and the airways inside the body belong to it)."""
    lab, n = ndimage.label(hu > threshold)
    if n == 0:
        return np.zeros(hu.shape, bool)
    largest = 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    return ndimage.binary_fill_holes(lab == largest)


def padding_mask(image: np.ndarray, floor: float = -1.0, radius: int = 2, tolerance: float = 1e-5) -> np.ndarray:
    """Boolean mask of the pixels a scanner did not reconstruct: within ``tolerance`` of ``floor`` (model
    space; resizing leaves float rounding on a flat region) or below it, in solid regions joined to the
    image border.

    A CT slice is reconstructed inside a circle; outside it the scanner writes a padding value (-2000,
    -3024 HU, ...) that clips to the floor of model space, where 16 % of the training slices' pixels lie
    (configs/ct_real_data.toml, median 21 %: the corners outside the inscribed circle). Air inside the
    circle sits near -1000 HU with noise, so the pixels of it that clip to the floor are scattered: an
    opening with a disk of ``radius`` removes them, and only floor regions touching the border are kept.
    The mask holds floor pixels only, so a sample held to the reference there is exactly the floor.
    """
    arr = _check_image(image, "padding_mask")
    if radius < 0:
        raise InputError(f"padding_mask radius must be >= 0, got {radius}")
    at_floor = arr <= floor + tolerance
    solid = at_floor
    if radius > 0:
        # the image continued past its edges (edge padding), so the opening does not eat the border strip
        grown = np.pad(at_floor, radius + 1, mode="edge")
        solid = ndimage.binary_opening(grown, structure=_disk(radius))[radius + 1:-radius - 1, radius + 1:-radius - 1]
    return _joined_to_border(solid) & at_floor


def breast_mask(img: np.ndarray) -> np.ndarray:
    """Boolean breast mask of a mammogram (dense tissue bright, dark background).

    Li threshold + largest connected component + hole filling; delegates to
    :func:`mcfast.io.mammo.breast_mask` so that loaders and placement agree on the same mask.
    """
    from mcfast.io.mammo import breast_mask as _io_breast_mask

    return _io_breast_mask(_check_image(img, "breast_mask"))


def components(mask: np.ndarray) -> int:
    """Number of 8-connected components of a boolean mask (handy for checks and tests)."""
    return int(ndimage.label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3)))[1])

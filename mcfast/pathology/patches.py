"""Pathology patch extraction from already-loaded images and annotation numbers.

A :class:`Patch` is a small image around a lesion plus the lesion's mask. Sources:

- MIAS circles (mammography): centre (x, y) with **y measured from the bottom-left corner**
  (row = H - 1 - y) and the radius of a circle that encloses the lesion; the mask is that disc.
- Pascal VOC boxes (CT, Lung-PET-CT-Dx): the box only bounds the tumour, so the mask is the
  soft-tissue pixels (HU above ``threshold_hu``) inside the ellipse inscribed in the box, cleaned
  to the largest component with holes filled. Why: a tumour in lung is soft tissue (> -400 HU)
  surrounded by aerated lung (< -700 HU), so thresholding separates it from the air in the box;
  the inscribed ellipse cuts off the box corners where chest wall, vessels or mediastinum that
  touch the box would otherwise pass the threshold. When nothing passes, the ellipse itself is
  the mask (the box is then the only information there is).
- MSD masks: the given tumour mask (binarised at 0.5).

Patch images keep the source's values (HU for CT, the file's grey levels for MG); see
:mod:`mcfast.pathology.transform` for matching them to a target image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from mcfast.errors import InputError

KINDS = ("mg", "ct")


@dataclass
class Patch:
    """A lesion patch: ``image`` float32 (h, w), ``mask`` uint8 (h, w) with 1 on the lesion.

    ``source`` says where it came from (e.g. ``"mias:mdb001"``, ``"voc:<uid>"``, ``"msd:12"``,
    ``"synthetic:ct_nodule"``); ``kind`` is the modality, ``"mg"`` or ``"ct"`` (CT images in HU).
    ``label`` is the lesion class when known (``"CIRC"``, ``"tumour"``, ...); ``meta`` records
    extraction and transform parameters (e.g. the quantile ``q`` of the mammography transform).
    """

    image: np.ndarray
    mask: np.ndarray
    source: str
    kind: str
    label: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        self.mask = (np.asarray(self.mask) > 0).astype(np.uint8)
        if self.image.ndim != 2 or self.image.shape != self.mask.shape:
            raise InputError(f"patch {self.source!r}: image {self.image.shape} and mask {self.mask.shape} "
                             "must be the same 2-D shape")
        if self.kind not in KINDS:
            raise InputError(f"patch {self.source!r}: kind {self.kind!r} must be one of {', '.join(KINDS)}")
        if not np.isfinite(self.image).all():
            raise InputError(f"patch {self.source!r}: image contains NaN or Inf")
        if not self.mask.any():
            raise InputError(f"patch {self.source!r}: the lesion mask is empty")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]


def _image2d(image: np.ndarray, source: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InputError(f"{source}: needs a 2-D image, got shape {arr.shape}")
    return arr.astype(np.float32)


def _square_crop(shape: tuple[int, int], row: float, col: float, half: int) -> tuple[int, int, int, int]:
    """Rows/cols [r0, r1) x [c0, c1) of a square of half-size ``half`` around (row, col), clipped to the image."""
    r0, c0 = int(np.floor(row)) - half, int(np.floor(col)) - half
    r1, c1 = int(np.floor(row)) + half + 1, int(np.floor(col)) + half + 1
    return max(0, r0), min(shape[0], r1), max(0, c0), min(shape[1], c1)


def mias_row(y: float, height: int) -> float:
    """Image row of a MIAS y coordinate (origin bottom-left): ``row = height - 1 - y``."""
    return height - 1 - y


def extract_mias_patch(image: np.ndarray, x: float, y: float, radius: float, *, margin: float = 1.25,
                       source: str = "mias", label: str = "") -> Patch:
    """Patch around a MIAS circle: centre (``x``, ``y``) in Info.txt coordinates, ``radius`` in pixels.

    The y origin of MIAS is the bottom-left corner, so the centre row is ``H - 1 - y``. The patch is
    the square of half-size ``ceil(margin * radius)`` around the centre (clipped at the image edge);
    its mask is the disc of ``radius``. ``meta`` holds the crop offset (row0, col0) in the image.
    A patch that is to be histogram-equalised wants a wider margin: with little surround the mass does not
    take the top ranks and comes out no brighter than its edge (synthesis uses
    ``mcfast.synthesis.sources.MIAS_PATCH_MARGIN``, where the measurement is).
    """
    img = _image2d(image, source)
    h, w = img.shape
    if not (np.isfinite([x, y, radius]).all() and radius > 0):
        raise InputError(f"{source}: MIAS circle x={x}, y={y}, radius={radius} must be finite with radius > 0")
    if not (0 <= x < w and 0 <= y < h):
        raise InputError(f"{source}: MIAS centre ({x}, {y}) is outside the {w}x{h} image")
    if margin < 1.0:
        raise InputError(f"{source}: margin {margin} must be >= 1 (the patch must contain the whole circle)")
    row = mias_row(y, h)
    half = int(np.ceil(margin * radius))
    r0, r1, c0, c1 = _square_crop((h, w), row, x, half)
    rr, cc = np.ogrid[r0:r1, c0:c1]
    mask = ((rr - row) ** 2 + (cc - x) ** 2) <= radius**2
    return Patch(img[r0:r1, c0:c1].copy(), mask, source, "mg", label,
                 meta={"offset": (r0, c0), "center_rc": (float(row), float(x)), "radius": float(radius)})


def ellipse_in_box(shape: tuple[int, int]) -> np.ndarray:
    """Boolean ellipse inscribed in an (h, w) box (pixel centres inside the ellipse)."""
    h, w = shape
    rr = (np.arange(h) + 0.5 - h / 2) / (h / 2)
    cc = (np.arange(w) + 0.5 - w / 2) / (w / 2)
    return rr[:, None] ** 2 + cc[None, :] ** 2 <= 1.0


def voc_lesion_mask(hu_box: np.ndarray, threshold_hu: float = -400.0) -> np.ndarray:
    """Lesion mask inside a VOC box crop (HU): soft tissue inside the inscribed ellipse, see module doc."""
    ell = ellipse_in_box(hu_box.shape)
    tissue = (hu_box > threshold_hu) & ell
    tissue = ndimage.binary_opening(tissue)  # drop single-pixel noise / thin vessel bridges
    labels, n = ndimage.label(tissue)
    if n == 0:
        return ell
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(sizes.argmax()))


def extract_voc_patch(hu: np.ndarray, box: tuple[float, float, float, float], *, margin: float = 0.25,
                      threshold_hu: float = -400.0, source: str = "voc", label: str = "tumour") -> Patch:
    """CT patch (HU) around a Pascal VOC box ``(xmin, ymin, xmax, ymax)`` in pixel columns/rows.

    The box is taken inclusive (VOC convention: ``xmax`` is the last column of the object). The patch
    extends the box by ``margin`` of its size on each side (clipped at the image edge) so the lesion
    sits in its surrounding tissue; the mask (see :func:`voc_lesion_mask`) is zero outside the box.
    """
    img = _image2d(hu, source)
    h, w = img.shape
    if len(box) != 4 or not np.isfinite(box).all():
        raise InputError(f"{source}: VOC box {box!r} must be 4 finite numbers (xmin, ymin, xmax, ymax)")
    xmin, ymin, xmax, ymax = (int(round(v)) for v in box)
    if xmax < xmin or ymax < ymin:
        raise InputError(f"{source}: VOC box {box!r} is empty")
    if xmin < 0 or ymin < 0 or xmax >= w or ymax >= h:
        raise InputError(f"{source}: VOC box {box!r} is outside the {w}x{h} image")
    bw, bh = xmax - xmin + 1, ymax - ymin + 1
    mx, my = int(np.ceil(margin * bw)), int(np.ceil(margin * bh))
    r0, r1 = max(0, ymin - my), min(h, ymax + my + 1)
    c0, c1 = max(0, xmin - mx), min(w, xmax + mx + 1)
    mask = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    mask[ymin - r0:ymax - r0 + 1, xmin - c0:xmax - c0 + 1] = voc_lesion_mask(
        img[ymin:ymax + 1, xmin:xmax + 1], threshold_hu)
    return Patch(img[r0:r1, c0:c1].copy(), mask, source, "ct", label,
                 meta={"offset": (r0, c0), "box_xyxy": (xmin, ymin, xmax, ymax), "threshold_hu": threshold_hu})


def extract_msd_patch(image: np.ndarray, mask: np.ndarray, *, crop: bool = False, margin: int = 4,
                      source: str = "msd", label: str = "tumour", hu_range: tuple[float, float] | None = None
                      ) -> Patch:
    """Patch from an MSD image/mask pair ((h, w) or (1, h, w)); the mask is binarised at 0.5.

    The MSD patches are stored in [0, 1]; pass ``hu_range=(lo, hi)`` to map them linearly back to HU
    when the intensity window used to make them is known. ``crop=True`` cuts the patch to the mask's
    bounding box plus ``margin`` pixels.
    """
    img = _image2d(image, source)
    m = _image2d(mask, source)
    if img.shape != m.shape:
        raise InputError(f"{source}: image {img.shape} and mask {m.shape} differ in shape")
    m = m > 0.5
    if not m.any():
        raise InputError(f"{source}: the tumour mask is empty")
    if hu_range is not None:
        lo, hi = hu_range
        img = lo + img * (hi - lo)
    offset = (0, 0)
    if crop:
        rows, cols = np.nonzero(m)
        r0, r1 = max(0, rows.min() - margin), min(m.shape[0], rows.max() + margin + 1)
        c0, c1 = max(0, cols.min() - margin), min(m.shape[1], cols.max() + margin + 1)
        img, m, offset = img[r0:r1, c0:c1], m[r0:r1, c0:c1], (r0, c0)
    return Patch(img.copy(), m, source, "ct", label, meta={"offset": offset, "hu": hu_range is not None})


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """COCO box ``(x, y, w, h)`` of the nonzero pixels of a 2-D mask (InputError when empty)."""
    m = np.asarray(mask) > 0
    if not m.any():
        raise InputError("mask_box: the mask is empty")
    rows = np.nonzero(m.any(axis=1))[0]
    cols = np.nonzero(m.any(axis=0))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)

"""Mammogram geometry: breast mask, laterality normalisation, crop/pad/resize with a recorded transform.

Every geometric step is an axis-aligned affine map, so the whole pipeline is recorded as one
:class:`MammoTransform` (``out = scale * src + offset`` per axis, in continuous pixel coordinates
where pixel ``i`` covers ``[i, i + 1)``; a pixel centre is ``i + 0.5``). Annotations (points, boxes,
radii, masks) map forward to the training image and back to the source with it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from mcfast.errors import InputError


# --------------------------------------------------------------------------- mask


def breast_mask(img: np.ndarray, *, threshold: Callable[[np.ndarray], float] | None = None,
                prefilter: Callable[..., np.ndarray] = ndimage.median_filter) -> np.ndarray:
    """Boolean breast mask: Li threshold, the largest connected component, holes filled.

    ``img`` is a 2-D grayscale mammogram (any value range) with dense tissue bright and a dark
    background; labels and markers outside the breast are dropped by keeping the largest component.
    An image without contrast gives an all-False mask.

    Li's minimum cross-entropy threshold sits between background and fatty tissue; Otsu's tends to fall
    between fatty and dense tissue and cut the periphery off (IoU with the phantom's true breast over
    40 phantoms: Li with the median pre-filter 1.00, Otsu median 0.90, min 0.60; on MIAS it follows the
    skin line). ``threshold`` (a skimage-style function of the image, default Li) and ``prefilter``
    (called with ``size=3``) are there to compare alternatives (scripts/breast_mask_study.py).
    """
    if threshold is None:
        from skimage.filters import threshold_li as threshold

    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2:
        raise InputError(f"breast_mask needs a 2-D image, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise InputError("breast_mask: image contains NaN or Inf")
    if float(img.max()) <= float(img.min()):
        return np.zeros(img.shape, dtype=bool)
    # A 3×3 median keeps film noise from splitting the breast at the skin line without moving the edge
    # (a mean filter spreads it by a pixel, which a low threshold then takes in).
    smooth = prefilter(img, size=3)
    fg = smooth > threshold(smooth)
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.zeros(img.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == int(sizes.argmax())
    return ndimage.binary_fill_holes(largest)


def chest_wall_side(mask_or_img: np.ndarray) -> str:
    """``"left"`` or ``"right"``: the image side the chest wall is on (the side holding more breast)."""
    m = np.asarray(mask_or_img)
    if m.dtype != bool:
        m = breast_mask(m)
    half = m.shape[1] // 2
    return "left" if m[:, :half].sum() >= m[:, m.shape[1] - half:].sum() else "right"


# --------------------------------------------------------------------------- transform


@dataclass
class MammoTransform:
    """Per-axis affine map from source pixels to output pixels, with both shapes.

    ``x_out = sx * x_src + ox`` and ``y_out = sy * y_src + oy`` (continuous coordinates; ``sx < 0``
    means a horizontal flip). ``to_dict``/``from_dict`` store it in a manifest.
    """

    sx: float
    ox: float
    sy: float
    oy: float
    src_shape: tuple[int, int]
    out_shape: tuple[int, int]

    @classmethod
    def identity(cls, shape: tuple[int, int]) -> "MammoTransform":
        return cls(1.0, 0.0, 1.0, 0.0, tuple(shape), tuple(shape))

    @property
    def flipped(self) -> bool:
        return self.sx < 0

    def then(self, other: "MammoTransform") -> "MammoTransform":
        """This transform followed by ``other``."""
        return MammoTransform(other.sx * self.sx, other.sx * self.ox + other.ox,
                              other.sy * self.sy, other.sy * self.oy + other.oy, self.src_shape, other.out_shape)

    def inverse(self) -> "MammoTransform":
        return MammoTransform(1.0 / self.sx, -self.ox / self.sx, 1.0 / self.sy, -self.oy / self.sy,
                              self.out_shape, self.src_shape)

    def map_points(self, xy, inverse: bool = False) -> np.ndarray:
        """Map (N, 2) continuous (x, y) points source → output (or back with ``inverse=True``)."""
        t = self.inverse() if inverse else self
        p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return np.stack([t.sx * p[:, 0] + t.ox, t.sy * p[:, 1] + t.oy], axis=1)

    def map_pixel_centers(self, cols_rows, inverse: bool = False) -> np.ndarray:
        """Map (N, 2) integer pixel indices (col, row) to (col, row) float indices on the other side."""
        p = np.asarray(cols_rows, dtype=np.float64).reshape(-1, 2) + 0.5
        return self.map_points(p, inverse) - 0.5

    def map_box(self, box, inverse: bool = False) -> np.ndarray:
        """Map a COCO box [x, y, w, h] (continuous pixels); flips keep w, h positive."""
        x, y, w, h = (float(v) for v in box)
        a, b = self.map_points([[x, y], [x + w, y + h]], inverse)
        x0, x1 = sorted((a[0], b[0]))
        y0, y1 = sorted((a[1], b[1]))
        return np.array([x0, y0, x1 - x0, y1 - y0])

    def map_length(self, length: float, inverse: bool = False) -> float:
        """Scale a length (e.g. a radius) by the mean absolute scale."""
        s = (abs(self.sx) + abs(self.sy)) / 2.0
        return float(length / s if inverse else length * s)

    def apply_to_mask(self, mask: np.ndarray, inverse: bool = False) -> np.ndarray:
        """Resample a (source-shaped) mask to the output grid, nearest neighbour (or back)."""
        t = self.inverse() if inverse else self
        mask = np.asarray(mask)
        if mask.shape != tuple(t.src_shape):
            raise InputError(f"mask shape {mask.shape} does not match the transform's source shape {t.src_shape}")
        # output index o (centre o+0.5) comes from source index (o + 0.5 - off)/s - 0.5
        matrix = np.array([1.0 / t.sy, 1.0 / t.sx])
        offset = np.array([(0.5 - t.oy) / t.sy - 0.5, (0.5 - t.ox) / t.sx - 0.5])
        out = ndimage.affine_transform(mask.astype(np.float32), matrix, offset=offset,
                                       output_shape=tuple(t.out_shape), order=0, mode="constant", cval=0.0)
        return out.astype(mask.dtype)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["src_shape"], d["out_shape"] = list(self.src_shape), list(self.out_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MammoTransform":
        return cls(float(d["sx"]), float(d["ox"]), float(d["sy"]), float(d["oy"]),
                   tuple(int(v) for v in d["src_shape"]), tuple(int(v) for v in d["out_shape"]))


# --------------------------------------------------------------------------- steps


def flip_horizontal(img: np.ndarray) -> tuple[np.ndarray, MammoTransform]:
    """Mirror left↔right; returns the image and its transform."""
    h, w = img.shape[:2]
    return img[:, ::-1].copy(), MammoTransform(-1.0, float(w), 1.0, 0.0, (h, w), (h, w))


def normalise_laterality(img: np.ndarray, side: str = "left", mask: np.ndarray | None = None
                         ) -> tuple[np.ndarray, MammoTransform]:
    """Mirror the image if needed so the chest wall is on ``side`` ("left" or "right").

    Returns the (possibly flipped) image and the transform (identity when no flip was needed).
    """
    if side not in ("left", "right"):
        raise InputError(f"laterality side must be 'left' or 'right', got {side!r}")
    img = np.asarray(img)
    current = chest_wall_side(mask if mask is not None else img)
    if current == side:
        return img, MammoTransform.identity(img.shape[:2])
    return flip_horizontal(img)


def crop(img: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, MammoTransform]:
    """Crop to ``box`` = (x0, y0, x1, y1) pixel bounds (exclusive end)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = img.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise InputError(f"crop box {box} is outside the {h}x{w} image")
    return img[y0:y1, x0:x1].copy(), MammoTransform(1.0, -x0, 1.0, -y0, (h, w), (y1 - y0, x1 - x0))


def resize_keep_aspect(img: np.ndarray, size: int | tuple[int, int], pad_value: float = 0.0,
                       align: str = "center", order: int = 1) -> tuple[np.ndarray, MammoTransform]:
    """Resize to fit inside ``size`` keeping the aspect ratio, then pad to exactly ``size``.

    ``align`` ("center", "left", "right") places the image horizontally (vertically it is centred);
    mammograms use the chest-wall side. Downscaling is anti-aliased. Returns the image and transform.
    """
    from skimage.transform import resize

    oh, ow = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    img = np.asarray(img)
    h, w = img.shape[:2]
    if h == 0 or w == 0 or oh <= 0 or ow <= 0:
        raise InputError(f"cannot resize a {h}x{w} image to {oh}x{ow}")
    scale = min(oh / h, ow / w)
    nh, nw = max(1, min(oh, round(h * scale))), max(1, min(ow, round(w * scale)))
    if (nh, nw) != (h, w):
        resized = resize(img.astype(np.float32), (nh, nw), order=order, mode="edge",
                         anti_aliasing=order > 0 and scale < 1, preserve_range=True).astype(np.float32)
    else:
        resized = img.astype(np.float32)
    top = (oh - nh) // 2
    left = {"center": (ow - nw) // 2, "left": 0, "right": ow - nw}.get(align)
    if left is None:
        raise InputError(f"align must be center, left or right, got {align!r}")
    out = np.full((oh, ow), pad_value, dtype=np.float32)
    out[top:top + nh, left:left + nw] = resized
    return out, MammoTransform(nw / w, float(left), nh / h, float(top), (h, w), (oh, ow))


# Pixels kept around the breast mask when the rest is blanked: the Li threshold sits a little inside
# the faint skin line, which belongs to the breast.
BLANK_MARGIN_PX = 3


def prepare_mammogram(img: np.ndarray, size: int | tuple[int, int] = 256, side: str = "left",
                      margin: int = 4, blank_outside: bool = True) -> tuple[np.ndarray, MammoTransform, np.ndarray]:
    """Breast mask → blank everything outside it → crop to the breast (plus ``margin``) → chest wall on
    ``side`` → resize and pad.

    ``img`` is [0, 1] with dense tissue bright. With ``blank_outside`` film labels, scanner marks and
    scratches outside the (slightly dilated) breast mask become background (0): they are not part of
    the image a model learns or a test compares. Returns (image (size) float32 in [0, 1], the recorded
    transform from the source image, the resampled breast mask).
    """
    from scipy import ndimage

    img = np.asarray(img, dtype=np.float32)
    mask = breast_mask(img)
    if not mask.any():
        raise InputError("no breast found (the image has no contrast)")
    if blank_outside:
        keep = ndimage.binary_dilation(mask, iterations=BLANK_MARGIN_PX)
        img = np.where(keep, img, np.float32(0.0))
    rows, cols = np.nonzero(mask)
    h, w = img.shape
    box = (max(0, cols.min() - margin), max(0, rows.min() - margin),
           min(w, cols.max() + 1 + margin), min(h, rows.max() + 1 + margin))
    cropped, t = crop(img, box)
    cmask = mask[box[1]:box[3], box[0]:box[2]]
    flipped, t_flip = normalise_laterality(cropped, side, mask=cmask)
    t = t.then(t_flip)
    out, t_resize = resize_keep_aspect(flipped, size, pad_value=0.0, align=side)
    t = t.then(t_resize)
    return np.clip(out, 0.0, 1.0), t, t.apply_to_mask(mask.astype(np.uint8)).astype(bool)


def frame_model_images(images: np.ndarray, masks: np.ndarray | None = None, side: str = "left"
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """Mammograms in model space (N, H, W) (and their lesion masks) through :func:`prepare_mammogram`
    at their own size: the one framing every real film went through, applied to synthetic images before
    they are compared with films, so whatever a model put outside the breast becomes background as the
    films' labels did. An image that is already framed comes back nearly unchanged."""
    framed, framed_masks = [], []
    for k, img in enumerate(np.asarray(images, dtype=np.float32)):
        out, transform, _ = prepare_mammogram((img + 1.0) / 2.0, img.shape[-2:], side=side)
        framed.append(2.0 * out - 1.0)
        if masks is not None:
            framed_masks.append(transform.apply_to_mask(np.asarray(masks[k]).astype(np.uint8)).astype(bool))
    return np.stack(framed).astype(np.float32), (np.stack(framed_masks) if masks is not None else None)

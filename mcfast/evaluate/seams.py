"""Seams at lesion patch borders: is the edge of a guided patch's box visible in the finished image?

A pathology condition's weight is a Gaussian cut off at its box (0 outside, about 0.14 at the middle of
each edge with the default sigma_scale 0.5; mcfast.guidance.conditions.gaussian_patch_weight), so the last
steps pull the pixels just inside the box towards the lesion's reference and those just outside not at
all. Where that leaves a step, a reader (or a patch classifier) sees a straight line along the box.

The statistic: across each edge of the box, the mean absolute difference between the pixel just outside
and the one just inside, divided by the same difference between neighbouring pixels a few pixels to
either side of the edge, parallel to it. About 1 where the box leaves no trace; a seam raises it. The same
statistic at boxes shifted off the lesions is the control for an image set's own texture.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mcfast.errors import InputError

#: Parallel lines either side of an edge that make the statistic's denominator (pixels from the edge).
REFERENCE_OFFSETS = (-4, -3, 3, 4)
#: Pixels either side of an edge that must all be valid (e.g. inside the breast) for a position to count.
VALID_MARGIN = 6
#: Fewer valid positions than this along an edge: that edge is not scored.
MIN_POSITIONS = 10


def _edge_steps(image: np.ndarray, valid: np.ndarray, line: int, span: slice) -> tuple[float, float] | None:
    """(step across the edge between rows ``line - 1`` and ``line``, mean step at the reference offsets),
    over the columns ``span`` where every row within VALID_MARGIN of the edge is valid; None when too few."""
    if not VALID_MARGIN <= line <= image.shape[0] - VALID_MARGIN:
        return None
    window = valid[line - VALID_MARGIN:line + VALID_MARGIN, span].all(axis=0)
    if window.sum() < MIN_POSITIONS:
        return None
    cols = image[:, span][:, window]

    def step(row: int) -> float:
        return float(np.abs(cols[row] - cols[row - 1]).mean())

    return step(line), float(np.mean([step(line + k) for k in REFERENCE_OFFSETS]))


def border_step_ratio(image: np.ndarray, box: Sequence[int], valid: np.ndarray | None = None) -> float | None:
    """The seam statistic of one box (x, y, w, h) on one (H, W) image: the steps across its four edges over
    the steps at the reference offsets (both averaged over the edges that can be scored); None when no edge
    can be (the box at the image border, or outside ``valid``)."""
    img = np.asarray(image, np.float64)
    if img.ndim != 2 or not np.isfinite(img).all():
        raise InputError(f"seams: need one finite (H, W) image, got shape {img.shape}")
    ok = np.ones(img.shape, bool) if valid is None else np.asarray(valid, bool)
    if ok.shape != img.shape:
        raise InputError(f"seams: valid mask {ok.shape} does not match the image {img.shape}")
    x, y, w, h = (int(v) for v in box)
    if w < 1 or h < 1:
        raise InputError(f"seams: empty box {tuple(box)}")
    found = []
    for picture, mask, lines, span in ((img, ok, (y, y + h), slice(max(x, 0), max(x + w, 0))),
                                       (img.T, ok.T, (x, x + w), slice(max(y, 0), max(y + h, 0)))):
        found += [s for s in (_edge_steps(picture, mask, line, span) for line in lines) if s is not None]
    if not found:
        return None
    across, beside = np.mean(found, axis=0)
    return float(across / beside) if beside > 0 else None


def seam_summary(images: np.ndarray, boxes: Sequence[Sequence[Sequence[int]]], valid: np.ndarray | None = None,
                 control_shift: int = 23) -> dict:
    """The seam statistic of a set: per image, the mean over its boxes (``boxes[k]``: the patch boxes of image
    k); and the same at every box shifted by ``control_shift`` pixels down and right, off the lesion, where
    the set's own texture gives the value a seamless image has. ``valid``: (N, H, W) pixels that may be
    used (e.g. the breast; None: all)."""
    if len(images) != len(boxes):
        raise InputError(f"seams: {len(images)} images but boxes for {len(boxes)}")

    def per_image(shift: int) -> list[float]:
        out = []
        for k, image_boxes in enumerate(boxes):
            ratios = [border_step_ratio(images[k], (b[0] + shift, b[1] + shift, b[2], b[3]),
                                        None if valid is None else valid[k]) for b in image_boxes]
            ratios = [r for r in ratios if r is not None]
            if ratios:
                out.append(float(np.mean(ratios)))
        return out

    at_boxes, control = per_image(0), per_image(control_shift)
    return {"median": float(np.median(at_boxes)) if at_boxes else float("nan"),
            "control_median": float(np.median(control)) if control else float("nan"),
            "per_image": [round(v, 3) for v in at_boxes], "control_shift": control_shift}

"""Seams at lesion patch borders (mcfast.evaluate.seams): a step along a box is found, texture alone is not."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mcfast.errors import InputError
from mcfast.evaluate.seams import border_step_ratio, seam_summary


def _texture(seed: int, size: int = 128) -> np.ndarray:
    return ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(size, size)), 1.5)


def _with_seam(image: np.ndarray, box, other: np.ndarray, weight: float) -> np.ndarray:
    """``image`` pulled towards ``other`` by ``weight`` inside ``box``: the cut-off patch weight's trace."""
    x, y, w, h = box
    out = image.copy()
    out[y:y + h, x:x + w] = (1 - weight) * image[y:y + h, x:x + w] + weight * other[y:y + h, x:x + w]
    return out


def test_a_box_edge_step_is_found_and_plain_texture_is_about_one():
    box = (30, 40, 50, 44)
    plain, other = _texture(0), _texture(1) + 1.0
    assert 0.8 < border_step_ratio(plain, box) < 1.25
    seamed = _with_seam(plain, box, other, 0.3)
    assert border_step_ratio(seamed, box) > 2.0
    assert border_step_ratio(seamed, box) > border_step_ratio(_with_seam(plain, box, other, 0.1), box) > 1.2
    # a box the step does not follow (the control) sees texture only
    assert 0.8 < border_step_ratio(seamed, (10, 10, 20, 20)) < 1.25


def test_invalid_pixels_and_the_image_border_are_left_out():
    box = (30, 40, 50, 44)
    seamed = _with_seam(_texture(2), box, _texture(3) + 1.0, 0.3)
    valid = np.ones_like(seamed, bool)
    valid[:, :60] = False
    valid[:60] = False  # only the right and bottom edges' lower / right parts remain
    assert border_step_ratio(seamed, box, valid) > 2.0
    valid[:] = False
    assert border_step_ratio(seamed, box, valid) is None
    assert border_step_ratio(seamed, (0, 0, 128, 128)) is None  # every edge at the image border


def test_seam_summary_gives_the_set_and_its_control():
    images, boxes = [], []
    for k in range(4):
        box = (20 + 5 * k, 30, 40, 40)
        images.append(_with_seam(_texture(10 + k), box, _texture(20 + k) + 1.0, 0.2))
        boxes.append([box])
    summary = seam_summary(np.stack(images), boxes)
    assert summary["median"] > 1.5 and 0.8 < summary["control_median"] < 1.25 and len(summary["per_image"]) == 4
    with pytest.raises(InputError, match="boxes for 3"):
        seam_summary(np.stack(images), boxes[:3])
    with pytest.raises(InputError, match="finite"):
        border_step_ratio(np.full((32, 32), np.nan), (4, 4, 8, 8))

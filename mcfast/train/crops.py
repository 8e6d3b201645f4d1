"""Random training crops of full-size images (Patch-Diffusion style crop training).

A fully convolutional denoiser trained on crops can be sampled at the full image size; the crop
positions and flips of a step are drawn from the trainer's generator for the *global* batch, so a
crop-trained run is as reproducible (and exactly resumable, DDP or not) as a whole-image one.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mcfast.errors import InputError


def draw_crop_boxes(batch: int, image_hw: tuple[int, int], size: int, generator: torch.Generator) -> Tensor:
    """(batch, 3) long: top row, left column and horizontal-flip flag of each crop."""
    h, w = image_hw
    if size > h or size > w:
        raise InputError(f"crop size {size} is larger than the training images ({h}x{w})")
    top = torch.randint(0, h - size + 1, (batch,), generator=generator)
    left = torch.randint(0, w - size + 1, (batch,), generator=generator)
    flip = torch.randint(0, 2, (batch,), generator=generator)
    return torch.stack([top, left, flip], dim=1)


def apply_crops(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Cut ``boxes`` (from :func:`draw_crop_boxes`) out of ``images`` (B, C, H, W) → (B, C, size, size).

    The flip is left-right only: an up-down flip would put the spine above the heart, which no axial
    CT slice shows, while the left-right asymmetry of the chest is larger than a crop."""
    out = []
    for img, (top, left, flip) in zip(images, boxes.tolist()):
        crop = img[:, top:top + size, left:left + size]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out).contiguous()

"""Random training crops of full-size images (Patch-Diffusion style crop training).

A fully convolutional denoiser trained on crops can be sampled at the full image size; the crop
positions and flips of a step are drawn from the trainer's generator for the *global* batch, so a
crop-trained run is as reproducible (and exactly resumable, DDP or not) as a whole-image one.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mcfast.errors import InputError

# A pixel counts as foreground when it is this far (model units, [-1, 1]) above its image's minimum:
# a framed mammogram's padding is exactly the minimum, film grain inside the breast is far above it.
FOREGROUND_MARGIN = 1e-3


def draw_crop_boxes(batch: int, image_hw: tuple[int, int], size: int, generator: torch.Generator,
                    candidates: int = 1, flip: bool = True) -> Tensor:
    """Top row, left column and horizontal-flip flag of random crops: (batch, 3) long, or
    (batch, candidates, 3) when ``candidates`` > 1 (for :func:`pick_foreground_boxes`).

    The number of generator draws depends only on the arguments, never on image content, so every
    DDP rank stays in step whichever candidate its own images end up using."""
    h, w = image_hw
    if size > h or size > w:
        raise InputError(f"crop size {size} is larger than the training images ({h}x{w})")
    if candidates < 1:
        raise InputError(f"crop candidates must be at least 1, got {candidates}")
    n = batch * candidates
    top = torch.randint(0, h - size + 1, (n,), generator=generator)
    left = torch.randint(0, w - size + 1, (n,), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator) if flip else torch.zeros(n, dtype=torch.long)
    boxes = torch.stack([top, left, flips], dim=1)
    return boxes if candidates == 1 else boxes.view(batch, candidates, 3)


def foreground_fraction(image: Tensor, top: int, left: int, size: int) -> float:
    """Share of a crop's pixels above the image's minimum (its background padding)."""
    crop = image[:, top:top + size, left:left + size]
    return float((crop > image.min() + FOREGROUND_MARGIN).float().mean())


def pick_foreground_boxes(images: Tensor, candidate_boxes: Tensor, size: int, min_fraction: float) -> Tensor:
    """(B, 3): per image the first candidate crop whose foreground share is at least ``min_fraction``,
    or its most-foreground candidate when none is. Mammograms are ~60 % padding after framing; uniform
    crops would spend most of a step on flat background the model learns in a few hundred steps."""
    chosen = []
    for img, cands in zip(images, candidate_boxes.tolist()):
        fractions = [foreground_fraction(img, top, left, size) for top, left, _ in cands]
        ok = [i for i, f in enumerate(fractions) if f >= min_fraction]
        chosen.append(cands[ok[0]] if ok else cands[max(range(len(cands)), key=fractions.__getitem__)])
    return torch.tensor(chosen, dtype=torch.long).view(-1, 3)


def apply_crops(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Cut ``boxes`` (from :func:`draw_crop_boxes`) out of ``images`` (B, C, H, W) → (B, C, size, size).

    The flip is left-right only: an up-down flip would put the spine above the heart, which no axial
    CT slice shows, while the left-right asymmetry of the chest is larger than a crop. Mammograms,
    framed with the chest wall on the left, train without flips (``--no-crop-flip``)."""
    out = []
    for img, (top, left, flip) in zip(images, boxes.tolist()):
        crop = img[:, top:top + size, left:left + size]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out).contiguous()

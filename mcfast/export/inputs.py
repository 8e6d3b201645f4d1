"""Conditions → the exported sampler's tensor inputs, and the safetensors file the C++ runner reads.

The scripted sampler takes conditions as padded tensors (one row of S slots per image):
``refs`` (B, S, H, W), ``factors`` (B, S) int64, ``stop_steps`` (B, S) int64 (-1 = empty slot),
``weights`` (B, S, H, W) (ones for a whole-image condition, the Gaussian map for a patch) and
``filters`` (B, S) int64 (0 box, 1 bicubic).
"""
from __future__ import annotations

import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from mcfast.atomic import atomic_path
from mcfast.errors import InputError
from mcfast.export.torchscript import FILTER_CODES
from mcfast.guidance.conditions import Condition, ConditionsArg, conditions_per_image

INPUT_NAMES = ("refs", "factors", "stop_steps", "weights", "filters", "noise", "step_noise", "cond_noise")


def pack_conditions(conditions: ConditionsArg, batch_size: int, image_size: int | None = None) -> dict[str, Tensor]:
    """Padded condition tensors for a batch of ``batch_size`` images (see the module docstring)."""
    per_image: list[list[Condition]] = conditions_per_image(conditions, batch_size)
    slots = max((len(c) for c in per_image), default=0)
    shapes = {c.shape for conds in per_image for c in conds}
    if len(shapes) > 1:
        raise InputError(f"guidance conditions have different sizes {sorted(shapes)}; one batch needs one size")
    if shapes:
        height, width = shapes.pop()
    elif image_size is not None:
        height = width = int(image_size)
    else:
        raise InputError("no guidance conditions and no image size given")
    if image_size is not None and (height, width) != (image_size, image_size):
        raise InputError(f"guidance references are {height}x{width} but the sampler makes {image_size}x{image_size} "
                         f"images")
    refs = torch.zeros(batch_size, slots, height, width)
    weights = torch.zeros(batch_size, slots, height, width)
    factors = torch.ones(batch_size, slots, dtype=torch.long)
    stops = torch.full((batch_size, slots), -1, dtype=torch.long)
    filters = torch.zeros(batch_size, slots, dtype=torch.long)
    for b, conds in enumerate(per_image):
        for s, c in enumerate(conds):
            refs[b, s] = c.reference("cpu")[0]
            weights[b, s] = c.weight_map("cpu")
            factors[b, s] = c.factor
            stops[b, s] = c.stop_step
            filters[b, s] = FILTER_CODES[c.filter]
    return {"refs": refs, "factors": factors, "stop_steps": stops, "weights": weights, "filters": filters}


def save_inputs(path: str | os.PathLike, tensors: dict[str, Tensor]) -> None:
    """Write sampler inputs (names from :data:`INPUT_NAMES`) as a safetensors file, atomically."""
    unknown = sorted(set(tensors) - set(INPUT_NAMES))
    if unknown:
        raise InputError(f"{path}: {unknown} are not sampler inputs (expected names from {', '.join(INPUT_NAMES)})")
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"format": "mcfast-sampler-inputs"})


def load_inputs(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a sampler-inputs safetensors file (no pickle)."""
    try:
        tensors = load_file(str(path))
    except (OSError, ValueError, SafetensorError) as exc:  # missing file / not a safetensors file
        raise InputError(f"{path}: cannot read sampler inputs ({exc})") from None
    unknown = sorted(set(tensors) - set(INPUT_NAMES))
    if unknown:
        raise InputError(f"{path}: {unknown} are not sampler inputs")
    return tensors

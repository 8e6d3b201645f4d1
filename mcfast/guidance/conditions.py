"""Guidance conditions: a reference image, its low-pass factor, its stop step and its weight map.

A :class:`Condition` steers the low frequencies (at factor N) of a sample towards its reference
while the chain's original timestep t is ≥ ``stop_step`` (paper eq. 4; 0 = until the end).
Its weight is either the whole image (``weight=None``) or a map W in [0, 1]; for a pathology
patch W is a :func:`gaussian_patch_weight` — 0 outside the patch box, a spherical Gaussian
inside — so the patch blends into the anatomy instead of showing a hard seam.

Coordinates: boxes are COCO ``(x, y, w, h)`` in pixels; pixel (row i, column j) sits at
(x = j, y = i), so the centre of a box is ``(x + (w − 1)/2, y + (h − 1)/2)``.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from mcfast.errors import InputError
from mcfast.guidance.filters import check_factor, check_filter, downsample

MAX_STOP_STEP = 1000
DEFAULT_SIGMA_SCALE = 0.5

Box = tuple[int, int, int, int]


def _label(name: str) -> str:
    return f"guidance condition {name!r}" if name else "guidance condition"


def _as_int(value: Any, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise InputError(f"{what} must be an integer, got {value!r}") from None


def _positive_float(value: Any, what: str) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a positive number, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise InputError(f"{what} must be a positive number, got {value!r}")
    return number


def check_box(box: Sequence[int], height: int, width: int, what: str = "patch box") -> Box:
    """Return ``box`` as a tuple of 4 ints if it lies inside an ``height``×``width`` image, else raise."""
    if len(box) != 4:
        raise InputError(f"{what} must be (x, y, w, h), got {tuple(box)!r}")
    x, y, w, h = (_as_int(v, what) for v in box)
    if w < 1 or h < 1:
        raise InputError(f"{what} {(x, y, w, h)} has an empty size")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise InputError(f"{what} {(x, y, w, h)} lies outside the {height}x{width} image")
    return x, y, w, h


def box_center(box: Box) -> tuple[float, float]:
    """Centre (cx, cy) of a box in pixel coordinates."""
    x, y, w, h = box
    return x + (w - 1) / 2.0, y + (h - 1) / 2.0


def gaussian_patch_weight(shape: tuple[int, int], box: Sequence[int], sigma_scale: float = DEFAULT_SIGMA_SCALE,
                          center: tuple[float, float] | None = None, sigma: float | None = None) -> Tensor:
    """Weight map (H, W), float32: 0 outside ``box``, exp(−d²/2σ²) inside, 1 at ``center``.

    ``center`` defaults to the box centre; ``sigma`` defaults to ``sigma_scale · max(w, h) / 2``
    (so the default 0.5 puts the box edge at about 2σ on the long side).
    """
    height, width = int(shape[0]), int(shape[1])
    x, y, w, h = check_box(box, height, width)
    cx, cy = box_center((x, y, w, h)) if center is None else (float(center[0]), float(center[1]))
    if sigma is None:
        sigma = _positive_float(sigma_scale, "patch sigma_scale") * max(w, h) / 2.0
    sigma = _positive_float(sigma, "patch sigma")
    ys = torch.arange(y, y + h, dtype=torch.float64).reshape(-1, 1)
    xs = torch.arange(x, x + w, dtype=torch.float64).reshape(1, -1)
    inside = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2.0 * sigma * sigma))
    weight = torch.zeros(height, width, dtype=torch.float64)
    weight[y:y + h, x:x + w] = inside
    return weight.float()


@dataclass(frozen=True)
class PatchWeight:
    """The parameters of a Gaussian patch weight, kept so a fused kernel can rebuild W in place."""

    box: Box
    center: tuple[float, float]
    sigma: float

    @classmethod
    def from_box(cls, box: Sequence[int], sigma_scale: float = DEFAULT_SIGMA_SCALE,
                 center: tuple[float, float] | None = None) -> "PatchWeight":
        """Centre at the box centre (unless given), σ = sigma_scale · max(w, h) / 2."""
        if len(box) != 4:
            raise InputError(f"patch box must be (x, y, w, h), got {tuple(box)!r}")
        x, y, w, h = (_as_int(v, "patch box") for v in box)
        scale = _positive_float(sigma_scale, "patch sigma_scale")
        c = box_center((x, y, w, h)) if center is None else (float(center[0]), float(center[1]))
        return cls((x, y, w, h), c, scale * max(w, h) / 2.0)

    def weight_map(self, shape: tuple[int, int]) -> Tensor:
        """The (H, W) float32 weight map for an image of ``shape``."""
        return gaussian_patch_weight(shape, self.box, center=self.center, sigma=self.sigma)


def _to_tensor(value: Any, what: str) -> Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, Tensor):
        raise InputError(f"{what} must be a tensor or numpy array, got {type(value).__name__}")
    if value.is_complex() or value.dtype == torch.bool:
        raise InputError(f"{what} must hold real numbers, got dtype {value.dtype}")
    return value.detach()


def _as_plane(value: Tensor, what: str) -> Tensor:
    """(H, W) or (1, H, W) → (H, W)."""
    if value.ndim == 3 and value.shape[0] == 1:
        value = value[0]
    if value.ndim != 2:
        raise InputError(f"{what} must have shape (H, W) or (1, H, W), got {tuple(value.shape)}")
    return value


@dataclass(frozen=True, eq=False)
class Condition:
    """One guidance condition, validated on construction.

    Frozen, and ``ref`` / ``weight`` are the condition's own copies (an edit of the tensor passed in
    does not reach it), so the cached device copies and low-pass (:meth:`low_reference`) stay true.
    Do not edit ``condition.ref`` or ``condition.weight`` in place: make a new Condition instead.

    ``ref``: reference in model space, (H, W) or (1, H, W), stored as float32 (1, H, W).
    ``factor``: the low-pass factor n_s (divides H and W). ``stop_step``: a_s on the original
    (1000-step) scale; guidance applies while ``timestep_map[i] >= stop_step``.
    ``weight``: (H, W) map in [0, 1], or None for the whole image (or the patch's Gaussian when
    ``patch`` is given). ``filter``: "box" or "bicubic".
    """

    ref: Tensor
    factor: int
    stop_step: int = 0
    weight: Tensor | None = None
    filter: str = "box"
    name: str = ""
    patch: PatchWeight | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        label = _label(self.name)
        ref = _as_plane(_to_tensor(self.ref, f"{label} reference"), f"{label} reference").float()
        if not torch.isfinite(ref).all():
            raise InputError(f"{label} reference contains NaN or Inf values")
        height, width = ref.shape
        check_filter(self.filter)
        try:
            factor = check_factor(self.factor, height, width, what=f"{label} reference")
        except InputError as exc:
            raise InputError(f"{label}: {exc}") from None
        stop = _as_int(self.stop_step, f"{label} stop_step")
        if stop < 0 or stop > MAX_STOP_STEP:
            raise InputError(f"{label} stop_step {stop} is outside 0..{MAX_STOP_STEP} (the 1000-step scale)")
        patch = self.patch
        if patch is not None:
            if not isinstance(patch, PatchWeight):
                raise InputError(f"{label} patch must be a PatchWeight, got {type(patch).__name__}")
            check_box(patch.box, height, width, what=f"{label} patch box")
        weight = self.weight
        if weight is not None:
            weight = _as_plane(_to_tensor(weight, f"{label} weight"), f"{label} weight").float()
            if tuple(weight.shape) != (height, width):
                raise InputError(f"{label} weight has shape {tuple(weight.shape)}, expected {(height, width)} "
                                 f"like its reference")
            if not torch.isfinite(weight).all():
                raise InputError(f"{label} weight contains NaN or Inf values")
            if weight.min() < 0 or weight.max() > 1:
                raise InputError(f"{label} weight must lie in [0, 1], got [{weight.min():.3g}, {weight.max():.3g}]")
        elif patch is not None:
            weight = patch.weight_map((height, width))
        object.__setattr__(self, "ref", ref.unsqueeze(0).clone(memory_format=torch.contiguous_format))
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "stop_step", stop)
        object.__setattr__(self, "weight", None if weight is None else weight.clone(memory_format=torch.contiguous_format))

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def full(cls, ref: Tensor | np.ndarray, factor: int, stop_step: int = 0, filter: str = "box",
             name: str = "") -> "Condition":
        """A whole-image condition (W = 1), e.g. the anatomy reference."""
        return cls(ref, factor, stop_step, None, filter, name)

    @classmethod
    def on_canvas(cls, canvas: Tensor | np.ndarray, box: Sequence[int], factor: int, stop_step: int = 0,
                  sigma_scale: float = DEFAULT_SIGMA_SCALE, center: tuple[float, float] | None = None,
                  filter: str = "box", name: str = "") -> "Condition":
        """A patch condition whose reference is ``canvas`` (the patch already placed) with a Gaussian weight in ``box``."""
        return cls(canvas, factor, stop_step, None, filter, name, PatchWeight.from_box(box, sigma_scale, center))

    @classmethod
    def from_patch(cls, patch: Tensor | np.ndarray, xy: tuple[int, int], image_size: int | tuple[int, int],
                   factor: int, stop_step: int = 0, sigma_scale: float = DEFAULT_SIGMA_SCALE,
                   filter: str = "box", name: str = "", fill: float = 0.0) -> "Condition":
        """Paste ``patch`` (h, w) at top-left ``xy`` on a ``fill`` canvas and weight it with a Gaussian in its box."""
        canvas, box = paste_patch(patch, xy, image_size, fill=fill, what=f"{_label(name)} patch")
        return cls.on_canvas(canvas, box, factor, stop_step, sigma_scale, None, filter, name)

    # -- views used by the guided step ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the reference."""
        return int(self.ref.shape[-2]), int(self.ref.shape[-1])

    @property
    def is_full(self) -> bool:
        """True when the condition weighs the whole image with 1."""
        return self.weight is None

    @property
    def label(self) -> str:
        return _label(self.name)

    def active_at(self, t: int) -> bool:
        """Whether guidance applies after the step from original timestep ``t`` (t ≥ a_s)."""
        return int(t) >= self.stop_step

    def _cached(self, key: tuple, make) -> Tensor:
        value = self._cache.get(key)
        if value is None:
            value = make()
            self._cache[key] = value
        return value

    def reference(self, device: torch.device | str | None = None) -> Tensor:
        """The reference (1, H, W) float32 on ``device``."""
        device = torch.device(device) if device is not None else self.ref.device
        return self._cached(("ref", str(device)), lambda: self.ref.to(device))

    def weight_map(self, device: torch.device | str | None = None) -> Tensor:
        """W (H, W) float32 on ``device``: ones for a full condition."""
        device = torch.device(device) if device is not None else self.ref.device
        return self._cached(("weight", str(device)), lambda: (
            torch.ones(self.shape, device=device) if self.weight is None else self.weight.to(device)))

    def low_reference(self, device: torch.device | str | None = None) -> Tensor:
        """down_N(ref) at low resolution (1, H/N, W/N): φ(y) before the upsampling, computed once."""
        device = torch.device(device) if device is not None else self.ref.device
        return self._cached(("low", str(device)), lambda: downsample(self.reference(device), self.factor, self.filter))


def paste_patch(patch: Tensor | np.ndarray, xy: tuple[int, int], image_size: int | tuple[int, int],
                fill: float = 0.0, what: str = "patch") -> tuple[Tensor, Box]:
    """Place ``patch`` (h, w) with its top-left corner at ``xy`` on a (H, W) canvas of ``fill``.

    Returns (canvas float32 (H, W), box (x, y, w, h)); a patch reaching outside the canvas is an error.
    """
    patch = _as_plane(_to_tensor(patch, what), what).float()
    if isinstance(image_size, int):
        height = width = image_size
    else:
        height, width = (int(v) for v in image_size)
    box = check_box((xy[0], xy[1], patch.shape[1], patch.shape[0]), height, width, what=f"{what} box")
    canvas = torch.full((height, width), float(fill), dtype=torch.float32)
    x, y, w, h = box
    canvas[y:y + h, x:x + w] = patch
    return canvas, box


# -- lists of conditions ----------------------------------------------------------------------
ConditionsArg = Union[Condition, Sequence[Condition], Sequence[Sequence[Condition]]]


def conditions_per_image(conditions: ConditionsArg, batch_size: int) -> list[list[Condition]]:
    """Normalise ``conditions`` to one list per image.

    A Condition or a flat list is shared by every image; a list of lists gives each image its own
    (its length must equal ``batch_size``; an empty inner list means no guidance for that image).
    """
    if isinstance(conditions, Condition):
        return [[conditions] for _ in range(batch_size)]
    items = list(conditions)
    if all(isinstance(c, Condition) for c in items):
        return [list(items) for _ in range(batch_size)]
    if not all(isinstance(c, (list, tuple)) for c in items):
        raise InputError("guidance conditions must be a Condition, a list of Conditions, or one list per image")
    if len(items) != batch_size:
        raise InputError(f"got guidance conditions for {len(items)} images but the batch has {batch_size}")
    out = []
    for b, per in enumerate(items):
        for c in per:
            if not isinstance(c, Condition):
                raise InputError(f"guidance conditions of image {b}: expected Condition, got {type(c).__name__}")
        out.append(list(per))
    return out


def original_num_steps(diffusion: Any) -> int:
    """Length T of the original (un-respaced) chain the stop steps refer to."""
    return int(getattr(diffusion, "original_num_steps", diffusion.num_timesteps))


def check_conditions(per_image: list[list[Condition]], image_shape: tuple[int, int], diffusion: Any) -> None:
    """Raise InputError unless every condition fits images of ``image_shape`` and the chain's T."""
    T = original_num_steps(diffusion)
    height, width = int(image_shape[0]), int(image_shape[1])
    for b, conds in enumerate(per_image):
        for c in conds:
            if c.shape != (height, width):
                raise InputError(f"{c.label} (image {b}) has a {c.shape[0]}x{c.shape[1]} reference but the samples "
                                 f"are {height}x{width}")
            if c.stop_step > T:
                raise InputError(f"{c.label} (image {b}) stop_step {c.stop_step} is past the diffusion's "
                                 f"{T} timesteps")

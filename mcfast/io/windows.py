"""Hounsfield-unit windows and the CT map between HU and model space.

Model space is [-1, 1]: HU clipped to [HU_MIN, HU_MAX] maps linearly onto it (``hu_to_model``),
and ``model_to_hu`` is its exact inverse on that range. Display windows (center, width) turn HU
into [0, 1] for viewing and export only. Functions accept numpy arrays or torch tensors and
return the same kind.
"""
from __future__ import annotations

from typing import NamedTuple, Union

import numpy as np

from mcfast.errors import InputError

HU_MIN = -1024.0
HU_MAX = 3071.0


class Window(NamedTuple):
    """A display window in HU (DICOM WindowCenter / WindowWidth)."""

    center: float
    width: float


WINDOWS: dict[str, Window] = {
    "lung": Window(-600.0, 1500.0),
    "soft_tissue": Window(40.0, 400.0),
    "mediastinum": Window(40.0, 400.0),
    "bone": Window(400.0, 1800.0),
}

WindowLike = Union[str, Window, tuple, list]


def get_window(window: WindowLike) -> Window:
    """Resolve a preset name (``"lung"``, ``"soft-tissue"``...) or a (center, width) pair."""
    if isinstance(window, str):
        key = window.strip().lower().replace("-", "_").replace(" ", "_")
        if key not in WINDOWS:
            raise InputError(f"unknown window {window!r}; choose one of {', '.join(sorted(WINDOWS))} "
                             "or give center,width")
        return WINDOWS[key]
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise InputError(f"window {window!r} is not a preset name or a (center, width) pair") from None
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        raise InputError(f"window (center={center}, width={width}) needs a finite center and a width > 0")
    return Window(center, width)


def parse_window(text: str) -> Window:
    """Parse a command-line window: a preset name or ``CENTER,WIDTH`` (e.g. ``-600,1500``)."""
    if "," in text:
        parts = text.split(",")
        if len(parts) != 2:
            raise InputError(f"window {text!r}: expected CENTER,WIDTH")
        try:
            return get_window((float(parts[0]), float(parts[1])))
        except ValueError:
            raise InputError(f"window {text!r}: CENTER and WIDTH must be numbers") from None
    return get_window(text)


def _clip(x, lo: float, hi: float):
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np.clip(x, lo, hi)
    return x.clamp(lo, hi)  # torch.Tensor


def _as_float(x):
    if isinstance(x, np.ndarray):
        return x.astype(np.float32, copy=False) if x.dtype != np.float64 else x
    if np.isscalar(x):
        return float(x)
    return x if x.is_floating_point() else x.float()


def apply_window(hu, center: float, width: float):
    """Map HU to [0, 1] display values: ``center - width/2`` → 0, ``center + width/2`` → 1, clipped."""
    if width <= 0:
        raise InputError(f"window width must be > 0, got {width}")
    low = center - width / 2.0
    return _clip((_as_float(hu) - low) / width, 0.0, 1.0)


def window_to_model(hu, window: WindowLike):
    """HU → [-1, 1] through a display window (training on one window instead of the full HU range)."""
    w = get_window(window)
    return apply_window(hu, w.center, w.width) * 2.0 - 1.0


def model_to_window(x, window: WindowLike):
    """Inverse of :func:`window_to_model` on the window's range: [-1, 1] → HU."""
    w = get_window(window)
    return (_clip(_as_float(x), -1.0, 1.0) + 1.0) / 2.0 * w.width + (w.center - w.width / 2.0)


def hu_to_model(hu, hu_min: float = HU_MIN, hu_max: float = HU_MAX):
    """Map HU clipped to [hu_min, hu_max] linearly onto [-1, 1] (float32 for float32/int input)."""
    hu = _clip(_as_float(hu), hu_min, hu_max)
    return (hu - hu_min) * (2.0 / (hu_max - hu_min)) - 1.0


def model_to_hu(x, hu_min: float = HU_MIN, hu_max: float = HU_MAX):
    """Inverse of :func:`hu_to_model`: [-1, 1] → HU in [hu_min, hu_max] (inputs clipped to [-1, 1])."""
    x = _clip(_as_float(x), -1.0, 1.0)
    return (x + 1.0) * ((hu_max - hu_min) / 2.0) + hu_min

"""Geometry and texture helpers shared by the phantoms: closed B-splines, curve rasterisation, jittered
ellipses, correlated noise and the size check (normalised coordinates: u = column, v = row in [-1, 1])."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from mcfast.errors import InputError

MIN_SIZE = 16
MAX_SIZE = 4096


def closed_bspline(ctrl: np.ndarray, samples_per_segment: int = 16) -> np.ndarray:
    """Points on the closed uniform cubic B-spline through control polygon ``ctrl`` (N, 2).

    Own implementation (no splprep) because it is exact, fast and has no fitting tolerance.
    """
    ctrl = np.asarray(ctrl, dtype=np.float64)
    t = np.linspace(0.0, 1.0, samples_per_segment, endpoint=False)
    basis = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=1) / 6.0
    idx = (np.arange(len(ctrl))[:, None] + np.arange(-1, 3)[None, :]) % len(ctrl)  # (N, 4)
    pts = np.einsum("sk,nkd->nsd", basis, ctrl[idx])
    return pts.reshape(-1, 2)


def fill_curve(curve_uv: np.ndarray, size: int) -> np.ndarray:
    """Rasterise a closed curve given in normalised coordinates (u=column, v=row in [-1, 1]).

    Vectorised even-odd scanline fill inside the curve's bounding box: a pixel centre is inside
    when an odd number of edges cross its row to the left of it (same pixels as skimage's
    polygon, without its O(area x vertices) cost).
    """
    out = np.zeros((size, size), dtype=bool)
    x = (curve_uv[:, 0] + 1.0) * 0.5 * size - 0.5
    y = (curve_uv[:, 1] + 1.0) * 0.5 * size - 0.5
    r_lo, r_hi = max(0, int(np.ceil(y.min()))), min(size, int(np.ceil(y.max())))
    c_lo, c_hi = max(0, int(np.ceil(x.min()))), min(size, int(np.ceil(x.max())))
    if r_lo >= r_hi or c_lo >= c_hi:
        return out
    x0, y0, x1, y1 = x, y, np.roll(x, -1), np.roll(y, -1)
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    r_start = np.clip(np.ceil(lo), r_lo, r_hi).astype(np.int64)  # rows r with lo <= r < hi (half-open)
    r_stop = np.clip(np.ceil(hi), r_lo, r_hi).astype(np.int64)
    counts = np.maximum(r_stop - r_start, 0)
    if counts.sum() == 0:
        return out
    width = c_hi - c_lo
    toggles = np.zeros((r_hi - r_lo, width + 1), dtype=np.int8)
    edge = np.repeat(np.arange(len(x)), counts)
    rows = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + r_start[edge]
    xs = x0[edge] + (rows - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    cols = np.clip(np.ceil(xs), c_lo, c_hi).astype(np.int64) - c_lo
    np.add.at(toggles, (rows - r_lo, cols), 1)
    out[r_lo:r_hi, c_lo:c_hi] = (np.cumsum(toggles[:, :width], axis=1, dtype=np.int16) & 1).astype(bool)
    return out


def ellipse_ctrl(rng: np.random.Generator, n: int, cx: float, cy: float, a: float, b: float,
                 jitter: float, angle: float = 0.0) -> np.ndarray:
    """``n`` control points on a jittered ellipse (centre (cx, cy), semi-axes a, b, rotated by ``angle``)."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi / n)
    r = 1.0 + rng.uniform(-jitter, jitter, n)
    x, y = a * r * np.cos(theta), b * r * np.sin(theta)
    ca, sa = np.cos(angle), np.sin(angle)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


def correlated_noise(shape: tuple[int, int], rng: np.random.Generator, sigma: float,
                     std: float = 1.0, bandpass: bool = False) -> np.ndarray:
    """Gaussian-correlated noise with standard deviation ``std`` (bandpass mimics CT's ramp-filtered noise)."""
    white = rng.standard_normal(shape).astype(np.float32)
    noise = ndimage.gaussian_filter(white, sigma, mode="wrap")
    if bandpass:  # remove the low frequencies that CT reconstruction suppresses
        noise = noise - 0.6 * ndimage.gaussian_filter(white, 3.0 * sigma, mode="wrap")
    s = float(noise.std())
    return noise * (std / s) if s > 0 else noise


def check_size(size: int) -> int:
    """``size`` as an int if it is a whole number in [MIN_SIZE, MAX_SIZE], else InputError."""
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE:
        raise InputError(f"phantom size {size!r} must be an integer in [{MIN_SIZE}, {MAX_SIZE}]")
    return int(size)

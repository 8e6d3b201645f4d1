"""Radial power spectra of image sets: the radially averaged (log-binned) spectrum and the mean power per
frequency band (:func:`spectrum_bands`, :func:`spectrum_band_ratios`), size-normalised so 256² and
512² images compare.
"""
from __future__ import annotations

import math

import numpy as np

from mcfast.errors import InputError
from mcfast.evaluate.folds import as_images

DEFAULT_BANDS = {"low": (0.0, 0.05), "mid": (0.05, 0.2), "high": (0.2, 0.5)}


def _power_2d(images: np.ndarray, chunk: int = 8):
    """Yield (start, power) per chunk: |FFT(x - mean x)|² / (H W), so white noise of variance σ²
    has power σ² at every frequency whatever the image size."""
    n, h, w = images.shape
    for s in range(0, n, chunk):
        x = images[s:s + chunk].astype(np.float64)
        x = x - x.mean((1, 2), keepdims=True)
        yield s, np.abs(np.fft.fft2(x)) ** 2 / (h * w)


def _radius(h: int, w: int) -> np.ndarray:
    fy, fx = np.fft.fftfreq(h), np.fft.fftfreq(w)
    return np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def radial_power_spectrum(images, n_bins: int = 24, f_min: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum: ``(freqs (n_bins,), power (N, n_bins))``.

    Power is ``|FFT(x - mean)|² / (H W)`` (size-normalised: white noise of variance σ² gives σ²
    in every bin at 256² and 512² alike). Bins are log-spaced in radial frequency from ``f_min``
    (default: the lowest non-zero frequency ``1 / min(H, W)``) to the Nyquist frequency 0.5
    cycles/pixel; frequencies beyond 0.5 (the FFT corners) and DC are left out. ``freqs`` are
    the geometric bin centres in cycles/pixel. Bins that hold no FFT sample (possible at the
    lowest frequencies, where the grid is coarse) are filled by log-log interpolation.
    """
    x = as_images(images, "images")
    n, h, w = x.shape
    if n_bins < 1:
        raise InputError(f"n_bins must be >= 1, got {n_bins}")
    f_min = 1.0 / min(h, w) if f_min is None else float(f_min)
    if not 0 < f_min < 0.5:
        raise InputError(f"f_min must be in (0, 0.5) cycles/pixel, got {f_min}")
    edges = np.geomspace(f_min, 0.5, n_bins + 1)
    r = _radius(h, w).ravel()
    bin_of = np.searchsorted(edges, r, side="right") - 1
    bin_of[(r > 0.5) | (r < f_min)] = -1
    bin_of[r == 0.5] = n_bins - 1  # Nyquist belongs to the last bin
    keep = bin_of >= 0
    bin_of = bin_of[keep]
    counts = np.bincount(bin_of, minlength=n_bins).astype(np.float64)
    power = np.empty((n, n_bins))
    for s, p in _power_2d(x):
        flat = p.reshape(len(p), -1)[:, keep]
        for j, row in enumerate(flat):
            power[s + j] = np.bincount(bin_of, weights=row, minlength=n_bins)
    freqs = np.sqrt(edges[:-1] * edges[1:])
    filled = counts > 0
    power[:, filled] /= counts[filled]
    if not filled.all():
        logf = np.log(freqs)
        for row in power:
            row[~filled] = np.exp(np.interp(logf[~filled], logf[filled], np.log(np.maximum(row[filled], 1e-300))))
    return freqs, power


def spectrum_bands(images, bands: dict[str, tuple[float, float]] | None = None) -> dict[str, float]:
    """Mean power (as in :func:`radial_power_spectrum`) of the FFT samples with radial frequency
    in ``[lo, hi)`` cycles/pixel, averaged over all images of the set; DC (removed by the mean
    subtraction) is left out and a band ending at 0.5 includes the Nyquist radius."""
    x = as_images(images, "images")
    bands = DEFAULT_BANDS if bands is None else bands
    r = _radius(*x.shape[1:])
    masks = {}
    for name, (lo, hi) in bands.items():
        if not 0 <= lo < hi:
            raise InputError(f"band {name!r}: need 0 <= lo < hi, got ({lo}, {hi})")
        m = (r >= lo) & ((r < hi) | ((hi >= 0.5) & (r == 0.5))) & (r > 0)
        if not m.any():
            raise InputError(f"band {name!r} ({lo}, {hi}) holds no frequency of {x.shape[1]}x{x.shape[2]} images")
        masks[name] = m
    sums = dict.fromkeys(bands, 0.0)
    for _, p in _power_2d(x):
        for name, m in masks.items():
            sums[name] += float(p[:, m].sum())
    return {name: sums[name] / (len(x) * int(m.sum())) for name, m in masks.items()}


def spectrum_band_ratios(real, other, bands: dict[str, tuple[float, float]] | None = None) -> dict[str, float]:
    """``{band: power(other) / power(real)}`` per band of :func:`spectrum_bands` (1 = same power;
    > 1 in "high" = more fine texture/noise than real, < 1 = smoother than real)."""
    pr, po = spectrum_bands(real, bands), spectrum_bands(other, bands)
    return {k: (po[k] / pr[k] if pr[k] > 0 else (1.0 if po[k] == 0 else math.inf)) for k in pr}


def foreground_counts(images: np.ndarray, size: int, background: float = -1.0,
                      tolerance: float = 1e-3) -> np.ndarray:
    """(N, H-size+1, W-size+1) int: how many pixels of the ``size``² window at (y, x) lie above
    ``background + tolerance`` (the breast or body, not the padding), from integral images."""
    s = np.pad((images > background + tolerance).astype(np.int64).cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    return s[:, size:, size:] - s[:, :-size, size:] - s[:, size:, :-size] + s[:, :-size, :-size]


def foreground_crops(images, size: int, per_image: int, seed: int = 0, background: float = -1.0,
                     tolerance: float = 1e-3) -> np.ndarray:
    """``per_image`` random ``size``² crops of every image, each lying wholly on pixels above
    ``background + tolerance`` (the breast, not the blank padding around it): (K, size, size).

    The spectrum of a whole framed mammogram mixes the tissue's texture with the breast edge and the
    blank background, so a synthetic set whose edge is too soft and whose tissue is too grainy can match
    the films' whole-image high band by cancellation; crops of the interior measure the texture alone.
    An image without any such position contributes no crop; a set without any raises ``InputError``.
    """
    x = as_images(images, "images")
    n, h, w = x.shape
    if not (isinstance(size, (int, np.integer)) and 4 <= size <= min(h, w)):
        raise InputError(f"crop size {size!r} must be an integer in [4, {min(h, w)}] for {h}x{w} images")
    if per_image < 1:
        raise InputError(f"per_image must be >= 1, got {per_image}")
    rng = np.random.default_rng(seed)
    crops = []
    for img, count in zip(x, foreground_counts(x, size, background, tolerance)):
        ys, xs = np.nonzero(count == size * size)
        if ys.size == 0:
            continue
        pick = rng.integers(0, ys.size, per_image)
        crops += [img[y:y + size, x0:x0 + size] for y, x0 in zip(ys[pick], xs[pick])]
    if not crops:
        raise InputError(f"no {size}x{size} crop lies wholly inside the foreground of any of the {n} images")
    return np.stack(crops)


def interior_band_ratios(real, other, size: int = 64, per_image: int = 16, seed: int = 0,
                         background: float = -1.0) -> dict[str, float]:
    """:func:`spectrum_band_ratios` of :func:`foreground_crops` of ``other`` over those of ``real``: the
    texture inside the breast (or body) alone, without the edge and the padding.

    Each crop is Hann-windowed before its FFT. Unwindowed, the jump between a crop's opposite sides
    (tissue density changes across 64 px) leaks power into every band; on 8 synthetic mammograms
    against 40 films that leakage made a set whose windowed high band is 1.9x the films' read 0.99x.
    """
    window = np.outer(np.hanning(size), np.hanning(size)).astype(np.float32)

    def windowed(images, crop_seed):
        crops = foreground_crops(images, size, per_image, crop_seed, background)
        return (crops - crops.mean((1, 2), keepdims=True)) * window

    return spectrum_band_ratios(windowed(real, seed), windowed(other, seed + 1))

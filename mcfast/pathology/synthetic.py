"""Procedural lesion patches (no outside data) for the embedded demo and for tests.

A lesion outline is a polar radius ``r(theta) = R (1 + sum_k a_k cos(k theta + phi_k))`` (k = 2..6,
lobulation) with an optional set of spicules: thin, tapering rays from the surface outward, as in
spiculated (often malignant) nodules and masses. The edge is soft (partial volume / blur).

- :func:`ct_nodule_patch`: a solid nodule (about 0-60 HU) on lung parenchyma (about -850 HU) with
  correlated noise, in HU.
- :func:`mg_mass_patch`: a round, lobulated or spiculated mass brighter than the surrounding
  fibro-fatty tissue, in [0, 1].
"""
from __future__ import annotations

import numpy as np

from mcfast.anatomy.breast_phantom import power_law_noise
from mcfast.anatomy.geometry import correlated_noise
from mcfast.errors import InputError
from mcfast.pathology.patches import Patch

MIN_PATCH = 8
MAX_PATCH = 1024  # recipe validation bounds pathology.size by these (synthesis.sources.patch_side_range)


def _check_patch_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not MIN_PATCH <= size <= MAX_PATCH:
        raise InputError(f"lesion patch size {size!r} must be an integer in [{MIN_PATCH}, {MAX_PATCH}]")
    return int(size)


def lesion_profile(size: int, rng: np.random.Generator, radius: float, lobulation: float = 0.15,
                   n_spicules: int = 0, spicule_length: float = 0.6, edge: float = 0.8
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft lesion ``body`` in [0, 1], ``spicules`` in [0, 1] (both (size, size)) and the hard ``mask``.

    ``radius`` in pixels; ``lobulation`` the relative amplitude of the outline harmonics;
    ``spicule_length`` relative to ``radius``; ``edge`` the soft-edge width in pixels.
    """
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    dy, dx = yy - c, xx - c
    rho = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    k = np.arange(2, 7)
    amps = rng.uniform(0, lobulation, k.size) / np.sqrt(k - 1)
    phases = rng.uniform(0, 2 * np.pi, k.size)
    outline = radius * (1.0 + (amps[:, None, None] * np.cos(k[:, None, None] * theta + phases[:, None, None])).sum(0))
    body = 1.0 / (1.0 + np.exp(-(outline - rho) / max(edge, 1e-3)))
    spicules = np.zeros((size, size), dtype=np.float32)
    for ang in rng.uniform(0, 2 * np.pi, n_spicules):
        ux, uy = np.cos(ang), np.sin(ang)
        along = dx * ux + dy * uy
        across = np.abs(-dx * uy + dy * ux)
        length = radius * spicule_length * rng.uniform(0.6, 1.3)
        width = max(0.6, 0.08 * radius) * rng.uniform(0.7, 1.2)
        t = (along - 0.8 * radius) / length
        taper = np.clip(1.0 - t, 0.0, 1.0) * (t > -0.3)
        spicules = np.maximum(spicules, np.exp(-(across / (width * (0.4 + 0.6 * taper) + 1e-6)) ** 2) * taper)
    mask = (body > 0.5) | (spicules > 0.5)
    if not mask.any():  # radius below one pixel: the centre pixel is the lesion
        mask[int(c), int(c)] = True
    return body.astype(np.float32), spicules, mask


def ct_nodule_patch(size: int = 32, rng: np.random.Generator | None = None, *, radius: float | None = None,
                    nodule_hu: float | None = None, background_hu: float = -850.0, spiculated: bool | None = None,
                    noise_hu: float = 20.0) -> Patch:
    """Solid lung nodule patch in HU: lobulated (and with probability 0.4 spiculated) nodule of
    ``nodule_hu`` ~ U(0, 60) on ``background_hu`` parenchyma with CT-like correlated noise.

    ``radius`` defaults to U(0.18, 0.32) * size pixels. Deterministic for a given ``rng`` state.
    """
    size = _check_patch_size(size)
    rng = np.random.default_rng() if rng is None else rng
    radius = float(rng.uniform(0.18, 0.32) * size) if radius is None else float(radius)
    if not 0 < radius < size / 2:
        raise InputError(f"nodule radius {radius} must be in (0, size/2 = {size / 2})")
    nodule_hu = float(rng.uniform(0.0, 60.0)) if nodule_hu is None else float(nodule_hu)
    spiculated = bool(rng.random() < 0.4) if spiculated is None else spiculated
    body, spic, mask = lesion_profile(size, rng, radius, lobulation=rng.uniform(0.05, 0.25),
                                      n_spicules=int(rng.integers(6, 14)) if spiculated else 0,
                                      spicule_length=rng.uniform(0.4, 0.9))
    tissue = np.maximum(body, 0.8 * spic)
    bg = background_hu + correlated_noise((size, size), rng, 1.5, 15.0)
    inner = nodule_hu + correlated_noise((size, size), rng, 1.0, 10.0)
    hu = bg * (1 - tissue) + inner * tissue
    if noise_hu > 0:
        hu += correlated_noise((size, size), rng, 0.7, noise_hu)
    label = "spiculated nodule" if spiculated else "nodule"
    return Patch(hu.astype(np.float32), mask, "synthetic:ct_nodule", "ct", label,
                 meta={"radius": radius, "nodule_hu": nodule_hu, "spiculated": spiculated})


def mg_mass_patch(size: int = 48, rng: np.random.Generator | None = None, *, radius: float | None = None,
                  background: float | None = None, contrast: float | None = None,
                  spiculated: bool | None = None) -> Patch:
    """Mammographic mass patch in [0, 1]: a dome-shaped mass ``contrast`` ~ U(0.15, 0.3) brighter than
    fibro-fatty ``background`` ~ U(0.35, 0.5) tissue (power-law texture); circumscribed (label "CIRC")
    or, with probability 0.4, spiculated ("SPIC") with bright radiating strands.
    """
    size = _check_patch_size(size)
    rng = np.random.default_rng() if rng is None else rng
    radius = float(rng.uniform(0.15, 0.28) * size) if radius is None else float(radius)
    if not 0 < radius < size / 2:
        raise InputError(f"mass radius {radius} must be in (0, size/2 = {size / 2})")
    background = float(rng.uniform(0.35, 0.5)) if background is None else float(background)
    contrast = float(rng.uniform(0.15, 0.3)) if contrast is None else float(contrast)
    spiculated = bool(rng.random() < 0.4) if spiculated is None else spiculated
    body, spic, mask = lesion_profile(size, rng, radius, lobulation=rng.uniform(0.03, 0.2),
                                      n_spicules=int(rng.integers(8, 18)) if spiculated else 0,
                                      spicule_length=rng.uniform(0.8, 1.4), edge=1.2 if spiculated else 0.8)
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size]
    # projected thickness of a ball: brightest in the middle
    dome = np.sqrt(np.clip(1.0 - ((yy - c) ** 2 + (xx - c) ** 2) / (1.3 * radius) ** 2, 0.0, 1.0))
    tissue = background + 0.08 * power_law_noise((size, size), rng, beta=3.0)
    img = tissue + contrast * body * (0.6 + 0.4 * dome) + 0.6 * contrast * spic * (1 - body)
    img += 0.01 * rng.standard_normal((size, size))
    label = "SPIC" if spiculated else "CIRC"
    return Patch(np.clip(img, 0.0, 1.0).astype(np.float32), mask, "synthetic:mg_mass", "mg", label,
                 meta={"radius": radius, "contrast": contrast, "background": background, "spiculated": spiculated})

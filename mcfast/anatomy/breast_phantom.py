"""MLO-like mammography phantom in [0, 1]: the training data of the embedded default MG model.

Model (all geometry in image-fraction coordinates, so a seed gives the same breast at any size):
- background ~0.02 (film/detector outside the breast) with a little noise;
- breast silhouette: a closed cubic B-spline from the chest wall (left image edge) out to the
  nipple and back, randomly perturbed (size, nipple height, sagging);
- pectoral muscle: a bright triangle in the upper-left corner with a slightly convex edge;
- fibroglandular tissue: anisotropic power-law (1/f^beta) noise, stretched toward the nipple,
  soft-thresholded into dense tissue against fat and concentrated behind the nipple; the density
  (fatty / fatty-glandular / dense, as in MIAS) is random per seed;
- compressed-breast thickness fall-off: intensity drops toward the skin line;
- fine correlated quantum/film noise.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from mcfast.anatomy.geometry import check_size, closed_bspline, correlated_noise, fill_curve

BACKGROUND = 0.02


def power_law_noise(shape: tuple[int, int], rng: np.random.Generator, beta: float = 3.0,
                    stretch: float = 1.0) -> np.ndarray:
    """Zero-mean, unit-variance noise with power spectrum ~ 1/f^beta (mammographic texture has beta ~ 3).

    ``stretch`` > 1 elongates structures along the columns (toward the nipple).
    """
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy**2 + (fx * stretch) ** 2)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2.0)
    amp[0, 0] = 0.0
    spec = (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)) * amp
    out = np.fft.irfft2(spec, s=shape).astype(np.float32)
    return (out - out.mean()) / (out.std() + 1e-12)


def breast_phantom_labels(size: int = 256, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """MLO-like breast phantom ``img`` float32 (size, size) in [0, 1] and bool masks ``breast`` (the
    whole silhouette), ``pectoral`` (the muscle) and ``tissue`` (breast without the muscle: where
    lesions belong).

    Chest wall on the left, nipple pointing right, pectoral muscle in the upper-left corner.
    Deterministic per ``seed``.
    """
    size = check_size(size)
    rng = np.random.default_rng(seed)
    geo = np.random.default_rng(rng.integers(2**63))
    tex = np.random.default_rng(rng.integers(2**63))

    # ---- silhouette (u = column, v = row in [-1, 1]; the chest wall is u = -1) ----
    nip_u = geo.uniform(0.15, 0.60)
    nip_v = geo.uniform(0.0, 0.25)
    top_v = geo.uniform(-1.3, -1.05)  # the axillary tail leaves the image at the top
    bot_v = geo.uniform(0.80, 1.00)  # inframammary fold
    sag = geo.uniform(0.0, 0.15)
    ctrl = np.array([
        (-1.3, top_v - 0.1), (-0.7, top_v + 0.05), (-0.25, top_v + 0.35 + sag), (0.5 * (nip_u - 0.25), nip_v - 0.55),
        (nip_u - 0.05, nip_v - 0.2), (nip_u, nip_v + 0.02), (nip_u - 0.08, nip_v + 0.25),
        (0.5 * (nip_u - 0.4), 0.5 * (nip_v + bot_v) + 0.15 + sag), (-0.6, bot_v), (-1.3, bot_v + 0.05), (-1.6, 0.0),
    ])
    ctrl[2:9] += geo.normal(0, 0.03, (7, 2))
    breast = fill_curve(closed_bspline(ctrl), size)

    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    u, v = coords[None, :], coords[:, None]

    # ---- pectoral muscle: convex triangle in the upper-left corner ----
    pw, ph = geo.uniform(0.4, 0.9), geo.uniform(0.9, 1.6)
    gamma = geo.uniform(1.0, 1.3)
    pect = (np.clip((u + 1) / pw, 0, None) ** gamma + np.clip((v + 1) / ph, 0, None) ** gamma) < 1.0
    pect &= breast

    # ---- fibroglandular tissue ----
    density = geo.choice([0.25, 0.5, 0.75])  # fatty, fatty-glandular, dense
    blobs = power_law_noise((size, size), tex, beta=geo.uniform(2.6, 3.2))
    # ducts and Cooper's ligaments radiate from the nipple: sample streaky noise in polar coordinates
    # around the nipple so its streaks become radial strands
    streaks = power_law_noise((size, size), tex, beta=2.8, stretch=4.0)
    theta = np.arctan2(v - nip_v, u - nip_u)
    rho = np.sqrt((v - nip_v) ** 2 + (u - nip_u) ** 2)
    radial = ndimage.map_coordinates(streaks, [theta / np.pi * size * 0.5 + size * 0.5, rho * size * 0.5],
                                     order=1, mode="wrap").astype(np.float32)
    radial /= radial.std() + 1e-6
    mix = geo.uniform(0.4, 0.7)
    texture = mix * radial + (1 - mix) * blobs
    texture /= texture.std() + 1e-6
    fine = power_law_noise((size, size), tex, beta=2.0, stretch=2.0)
    # glandular tissue is concentrated in a cone behind the nipple, thinning toward skin and chest wall
    cone_v = nip_v + (u - nip_u) * 0.1
    envelope = np.exp(-((v - cone_v) ** 2) / (2 * (0.35 + 0.25 * (nip_u - u) / 2) ** 2)) * \
        np.clip((nip_u - u + 0.1) / 0.6, 0, 1)
    bias = (density - 0.5) * 2.0
    gland = 1.0 / (1.0 + np.exp(-(texture + 0.3 * fine + bias + 1.5 * envelope - 1.2) / 0.35))
    gland = gland * np.clip(envelope * 1.6, 0, 1)

    fat_level = geo.uniform(0.30, 0.40)
    gland_level = geo.uniform(0.68, 0.80)
    img = fat_level + (gland_level - fat_level) * gland + 0.03 * fine
    muscle_level = geo.uniform(0.72, 0.85)
    muscle_tex = muscle_level + 0.03 * texture - 0.08 * ((u + 1) / pw + (v + 1) / ph)
    img = np.where(pect, muscle_tex, img)

    # ---- thickness fall-off toward the skin line (the compressed breast gets thinner) ----
    # EDT ignores the array border, so the chest wall and the axillary tail (cut by the image edge) do
    # not count as skin
    dist = ndimage.distance_transform_edt(breast)
    falloff_px = geo.uniform(0.04, 0.07) * size
    thickness = 1.0 - np.exp(-dist / falloff_px)
    img = img * (0.5 + 0.5 * thickness)
    skin = breast & (dist <= max(1.0, size / 256))
    img = np.where(skin, img + 0.05, img)

    out = np.where(breast, img, BACKGROUND).astype(np.float32)
    out = ndimage.gaussian_filter(out, 0.5 * max(size / 256, 0.6))
    out += correlated_noise((size, size), tex, 0.6 * max(size / 256, 0.5), 0.01) * np.where(breast, 1.0, 0.4)
    np.clip(out, 0.0, 1.0, out=out)
    return out, {"breast": breast, "pectoral": pect, "tissue": breast & ~pect}


def breast_phantom_with_mask(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MLO-like breast phantom float32 (size, size) in [0, 1] and its breast mask (bool, muscle included)."""
    img, labels = breast_phantom_labels(size, seed)
    return img, labels["breast"]


def breast_phantom(size: int = 256, seed: int = 0) -> np.ndarray:
    """MLO-like breast phantom float32 (size, size) in [0, 1]; see :func:`breast_phantom_with_mask`."""
    return breast_phantom_with_mask(size, seed)[0]

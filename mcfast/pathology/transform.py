"""Patch transforms: mammography intensity matching and random geometric augmentation.

Mammography matching (a lesion cut from one film must look like it belongs to another image):
1. histogram equalisation within the patch (``skimage.exposure.equalize_hist``), stretched to [0, 1];
2. linear rescale to ``[min(reference), quantile(reference, q)]`` with ``q ~ U(0.975, 0.995)``:
   the lesion spans the target's tissue range up to its bright end, without its extreme outliers;
3. Gaussian fall-off toward the patch edge: ``out = lo + (x - lo) * exp(-r^2 / (2 sigma^2))``,
   ``r`` the distance from the patch centre, so the lesion fades into the darkest tissue level at
   the border instead of ending in a hard square.

CT patches stay in HU: only the geometric augmentation, and optionally an equalisation mapped
back to the patch's own HU range.

Augmentation: random flips, a rotation by any angle about the patch centre (reflect-padded first so
the corners hold tissue, not a constant), and an integer translation that keeps the lesion mask
inside the patch. All randomness comes from the caller's ``numpy.random.Generator``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage
from skimage.exposure import equalize_hist

from mcfast.errors import InputError
from mcfast.pathology.patches import Patch

Q_RANGE = (0.975, 0.995)


def equalize01(image: np.ndarray, nbins: int = 256) -> np.ndarray:
    """Histogram-equalised copy of ``image`` stretched to exactly [0, 1] (zeros for a constant image)."""
    img = np.asarray(image, dtype=np.float64)
    if float(img.max()) <= float(img.min()):
        return np.zeros(img.shape, dtype=np.float32)
    eq = equalize_hist(img, nbins=nbins)
    lo, hi = float(eq.min()), float(eq.max())
    return ((eq - lo) / (hi - lo) if hi > lo else np.zeros_like(eq)).astype(np.float32)


def draw_q(rng: np.random.Generator, q_range: tuple[float, float] = Q_RANGE) -> float:
    """The upper quantile of the mammography rescale, ``q ~ U(q_range)``."""
    return float(rng.uniform(*q_range))


#: The low end of the range a mammography patch is rescaled to: the paper's ``"min"`` of the reference, or
#: ``"mirror"``, its quantile 1 − q (the high end's quantile mirrored).
MATCH_LOWS = ("min", "mirror")


def reference_range(reference: np.ndarray, q: float, reference_mask: np.ndarray | None = None,
                    low: str = "min") -> tuple[float, float]:
    """``(lo, quantile(reference, q))`` over the pixels of ``reference_mask`` (all when None); ``lo`` is
    ``min(reference)`` (``low = "min"``, the paper's) or ``quantile(reference, 1 − q)`` (``"mirror"``).

    Why "mirror": a minimum is set by the darkest few pixels. Under a 512² film's mass patch that is the
    skin line or a thin dark streak, not the fat the mass sits in: over 60 planned items of the film recipe
    the minimum of the tissue under the patch had median 0.08 against a tissue median of 0.61 there (its
    quantile 1 − q: 0.20), so the equalised patch's darker half, the mass's own surround, came out darker
    than the tissue it replaced (by 0.029 at the median, 0.005 with "mirror"), at worst near black around
    the mass: a dark hole."""
    if low not in MATCH_LOWS:
        raise InputError(f"match low end {low!r}: expected one of {', '.join(MATCH_LOWS)}")
    ref = np.asarray(reference, dtype=np.float64)
    if reference_mask is not None:
        m = np.asarray(reference_mask, dtype=bool)
        if m.shape != ref.shape:
            raise InputError(f"reference mask {m.shape} and reference {ref.shape} differ in shape")
        ref = ref[m]
    ref = ref.ravel()
    if ref.size == 0:
        raise InputError("reference has no pixels (empty reference mask?)")
    if not np.isfinite(ref).all():
        raise InputError("reference contains NaN or Inf")
    if not 0.0 < q <= 1.0:
        raise InputError(f"quantile q={q} must be in (0, 1]")
    lo = float(ref.min()) if low == "min" else float(np.quantile(ref, 1.0 - q))
    return lo, float(np.quantile(ref, q))


def gaussian_falloff(shape: tuple[int, int], sigma_frac: float = 0.5) -> np.ndarray:
    """Weight (h, w) = exp(-r^2 / (2 sigma^2)), r from the patch centre, sigma = sigma_frac * min(h, w) / 2.

    Peak 1 at the centre, strictly decreasing along any ray from it.
    """
    if sigma_frac <= 0:
        raise InputError(f"fall-off sigma fraction {sigma_frac} must be > 0")
    h, w = shape
    sigma = sigma_frac * min(h, w) / 2.0
    rr = np.arange(h) - (h - 1) / 2.0
    cc = np.arange(w) - (w - 1) / 2.0
    r2 = rr[:, None] ** 2 + cc[None, :] ** 2
    return np.exp(-r2 / (2.0 * sigma**2)).astype(np.float32)


def match_to_reference(image: np.ndarray, reference: np.ndarray, q: float, *, equalize: bool = True,
                       reference_mask: np.ndarray | None = None, low: str = "min") -> np.ndarray:
    """Steps 1-2 of the mammography transform: equalise, then map linearly onto [lo, quantile(ref, q)]
    (lo: :func:`reference_range`'s ``low``, the minimum by default)."""
    return _rescale(image, *reference_range(reference, q, reference_mask, low), equalize)


def _rescale(image: np.ndarray, lo: float, hi: float, equalize: bool) -> np.ndarray:
    """``image`` equalised (or min-max normalised) to [0, 1], then mapped linearly onto [lo, hi]."""
    img = np.asarray(image, dtype=np.float32)
    if equalize:
        x01 = equalize01(img)
    else:
        span = float(img.max() - img.min())
        x01 = (img - img.min()) / span if span > 0 else np.zeros_like(img)
    return (lo + x01 * (hi - lo)).astype(np.float32)


def mammo_transform(patch: Patch, reference: np.ndarray, rng: np.random.Generator, *, q: float | None = None,
                    q_range: tuple[float, float] = Q_RANGE, equalize: bool = True, falloff: bool = True,
                    sigma_frac: float = 0.5, reference_mask: np.ndarray | None = None, low: str = "min") -> Patch:
    """Match a mammography patch to ``reference`` (the target image, or its tissue via ``reference_mask``).

    ``q`` defaults to a draw from U(q_range) with ``rng``; ``low``: the range's low end
    (:func:`reference_range`). Returns a new Patch (same mask) whose ``meta`` records ``q``, ``lo``,
    ``hi``, ``match_low`` and ``sigma_frac``.
    """
    if patch.kind != "mg":
        raise InputError(f"patch {patch.source!r}: mammography transform needs an 'mg' patch, got {patch.kind!r}")
    if q is None:
        q = draw_q(rng, q_range)
    lo, hi = reference_range(reference, q, reference_mask, low)
    matched = _rescale(patch.image, lo, hi, equalize)  # match_to_reference, with the range it needs below
    if falloff:
        matched = lo + (matched - lo) * gaussian_falloff(matched.shape, sigma_frac)
    meta = {**patch.meta, "q": q, "lo": lo, "hi": hi, "match_low": low, "equalize": equalize,
            "sigma_frac": sigma_frac if falloff else None}
    return dataclasses.replace(patch, image=matched.astype(np.float32), mask=patch.mask.copy(), meta=meta)


def ct_transform(patch: Patch, *, equalize: bool = False) -> Patch:
    """CT patches stay in HU; ``equalize=True`` equalises and maps back onto the patch's own HU range."""
    if patch.kind != "ct":
        raise InputError(f"patch {patch.source!r}: CT transform needs a 'ct' patch, got {patch.kind!r}")
    img = patch.image
    if equalize:
        lo, hi = float(img.min()), float(img.max())
        img = lo + equalize01(img) * (hi - lo)
    return dataclasses.replace(patch, image=img.astype(np.float32), mask=patch.mask.copy(),
                               meta={**patch.meta, "equalize": equalize})


def _rotate_about_centre(image: np.ndarray, mask: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by ``angle`` degrees; output keeps the input size, grown only if the lesion would be cut."""
    h, w = image.shape
    diag = int(np.ceil(np.hypot(h, w)))
    pad = (diag - min(h, w)) // 2 + 2
    big = np.pad(image, pad, mode="reflect" if min(h, w) > 1 else "edge")
    big_m = np.pad(mask.astype(np.float32), pad)
    rot = ndimage.rotate(big, angle, reshape=False, order=1, mode="reflect")
    rot_m = ndimage.rotate(big_m, angle, reshape=False, order=1, mode="constant", cval=0.0) > 0.5
    if not rot_m.any():  # a tiny mask can vanish under interpolation: fall back to nearest
        rot_m = ndimage.rotate(big_m, angle, reshape=False, order=0, mode="constant", cval=0.0) > 0.5
    H, W = rot.shape
    cr, cc = (H - 1) / 2.0, (W - 1) / 2.0
    rows, cols = np.nonzero(rot_m)
    half_h = max((h - 1) / 2.0, cr - rows.min(), rows.max() - cr) if rows.size else (h - 1) / 2.0
    half_w = max((w - 1) / 2.0, cc - cols.min(), cols.max() - cc) if cols.size else (w - 1) / 2.0
    r0, r1 = int(np.floor(cr - half_h)), int(np.ceil(cr + half_h)) + 1
    c0, c1 = int(np.floor(cc - half_w)), int(np.ceil(cc + half_w)) + 1
    return rot[r0:r1, c0:c1], rot_m[r0:r1, c0:c1]


def augment(patch: Patch, rng: np.random.Generator, *, rotate: bool = True, flip: bool = True,
            max_shift: float = 0.1) -> Patch:
    """Random flips (each axis p = 0.5), rotation by U(0, 360) degrees and an integer translation of up to
    ``max_shift`` of the patch size that keeps the lesion inside the patch. ``meta`` records what was done.
    """
    img, mask = patch.image.copy(), patch.mask.astype(bool)
    flips = (bool(rng.random() < 0.5), bool(rng.random() < 0.5)) if flip else (False, False)
    if flips[0]:
        img, mask = img[:, ::-1], mask[:, ::-1]
    if flips[1]:
        img, mask = img[::-1], mask[::-1]
    angle = float(rng.uniform(0.0, 360.0)) if rotate else 0.0
    if rotate:
        img, mask = _rotate_about_centre(np.ascontiguousarray(img), np.ascontiguousarray(mask), angle)
    shift = (0, 0)
    if max_shift > 0:
        rows, cols = np.nonzero(mask)
        h, w = mask.shape
        lim_r, lim_c = int(max_shift * h), int(max_shift * w)
        dr = int(rng.integers(max(-lim_r, -rows.min()), min(lim_r, h - 1 - rows.max()) + 1))
        dc = int(rng.integers(max(-lim_c, -cols.min()), min(lim_c, w - 1 - cols.max()) + 1))
        img = ndimage.shift(img, (dr, dc), order=0, mode="reflect")
        mask = ndimage.shift(mask.astype(np.uint8), (dr, dc), order=0, mode="constant", cval=0) > 0
        shift = (dr, dc)
    meta = {**patch.meta, "flip_lr": flips[0], "flip_ud": flips[1], "angle": angle, "shift_rc": shift}
    return dataclasses.replace(patch, image=np.ascontiguousarray(img, dtype=np.float32),
                               mask=np.ascontiguousarray(mask, dtype=np.uint8), meta=meta)


def prepare_patch(patch: Patch, rng: np.random.Generator, *, reference: np.ndarray | None = None,
                  reference_mask: np.ndarray | None = None, do_augment: bool = True, equalize_ct: bool = False,
                  **mammo_kwargs) -> Patch:
    """Augment, then match intensities: MG patches to ``reference`` (required), CT patches stay in HU."""
    out = augment(patch, rng) if do_augment else patch
    if patch.kind == "mg":
        if reference is None:
            raise InputError(f"patch {patch.source!r}: a mammography patch needs a reference image to match")
        return mammo_transform(out, reference, rng, reference_mask=reference_mask, **mammo_kwargs)
    return ct_transform(out, equalize=equalize_ct)

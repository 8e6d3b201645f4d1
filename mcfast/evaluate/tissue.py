"""Tissue intensity descriptors of image sets: median HU per tissue inside the body (CT), the distance
between the breast-area intensity distributions and the intensity profile across the breast edge (MG).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.ndimage as ndi

from mcfast.anatomy.masks import body_mask, padding_mask
from mcfast.errors import InputError
from mcfast.evaluate.folds import as_images
from mcfast.io.windows import model_to_hu

#: HU ranges of :func:`tissue_hu_medians` (inclusive; bone has no upper bound below HU_MAX).
TISSUE_HU_RANGES: dict[str, tuple[float, float]] = {
    "lung": (-950.0, -500.0),
    "fat": (-150.0, -50.0),
    "soft_tissue": (10.0, 80.0),
    "bone": (250.0, math.inf),
}


def breast_intensities(images_model_space) -> np.ndarray:
    """Every breast pixel of a set of mammograms (model space), in [0, 1]; each image's breast from
    :func:`mcfast.io.mammo.breast_mask`, the mask the framing and the lesion placement use."""
    from mcfast.io.mammo import breast_mask

    x = as_images(images_model_space, "images")
    values = [((img + 1.0) / 2.0)[breast_mask(img)] for img in x]
    return np.concatenate(values) if values else np.zeros(0, np.float32)


def breast_intensity_distance(real, other, n_bins: int = 256) -> dict:
    """1-Wasserstein distance between the pooled breast-area intensity distributions ([0, 1] units:
    the mean shift in brightness it would take to turn one into the other), from ``n_bins``-bin
    histograms, plus both medians. Background padding is left out: it is the same by construction."""
    a, b = breast_intensities(real), breast_intensities(other)
    if a.size == 0 or b.size == 0:
        raise InputError("breast_intensity_distance: a set has no breast pixels")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    cdf_a = np.cumsum(np.histogram(np.clip(a, 0, 1), edges)[0]) / a.size
    cdf_b = np.cumsum(np.histogram(np.clip(b, 0, 1), edges)[0]) / b.size
    return {"wasserstein": float(np.abs(cdf_a - cdf_b).sum() / n_bins),
            "median_real": float(np.median(a)), "median_other": float(np.median(b))}


def edge_profile(images_model_space, depth: int = 6) -> list[float]:
    """Mean intensity (model space) of the pixels 1, 2, ..., ``depth`` pixels from the blank background
    (:func:`mcfast.anatomy.masks.padding_mask`; Euclidean distance rounded to the nearest pixel), pooled
    over a set: a film's skin line is a step there, a sampler's a ramp. NaN at a distance no image has."""
    from mcfast.anatomy.masks import padding_mask

    x = as_images(images_model_space, "images")
    if not (isinstance(depth, (int, np.integer)) and depth >= 1):
        raise InputError(f"edge_profile depth must be an integer >= 1, got {depth!r}")
    sums, counts = np.zeros(depth + 1), np.zeros(depth + 1)
    for img in x:
        blank = padding_mask(img)
        if not blank.any():
            continue
        ring = np.rint(ndi.distance_transform_edt(~blank)).astype(np.int64)
        inside = (ring >= 1) & (ring <= depth)
        sums += np.bincount(ring[inside], weights=img[inside].astype(np.float64), minlength=depth + 1)
        counts += np.bincount(ring[inside], minlength=depth + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return [float(v) for v in (sums / counts)[1:]]


def tissue_hu_medians(images_model_space, masks=None, ranges: dict[str, tuple[float, float]] | None = None) -> dict:
    """Median HU per tissue inside the body of CT images given in model space.

    Pixels are converted with :func:`mcfast.io.windows.model_to_hu` and selected by HU range
    (inclusive) inside a body mask: ``masks`` (N, H, W) when given, else :func:`body_mask`
    (largest connected component of HU > -500 after hole filling). Default ranges
    (:data:`TISSUE_HU_RANGES`): lung -950..-500, fat -150..-50, soft tissue (muscle) 10..80,
    bone > 250 HU.

    Returns ``median_hu`` {tissue: median over all selected pixels of the set},
    ``per_image_median_hu`` {tissue: [median per image]}, ``tissue_fraction`` {tissue: selected
    pixels / body pixels over the set}, ``ranges_hu`` (an open upper end is None) and ``n_images``; a tissue with no pixel
    gives NaN.
    """
    x = as_images(images_model_space, "images")
    ranges = TISSUE_HU_RANGES if ranges is None else ranges
    if masks is not None:
        masks = np.asarray(masks).astype(bool)
        if masks.shape != x.shape:
            raise InputError(f"masks have shape {masks.shape}, images {x.shape}")
    per_image = {t: [] for t in ranges}
    pooled = {t: [] for t in ranges}
    body_total = 0
    for i in range(len(x)):
        hu = np.asarray(model_to_hu(x[i]), np.float64)
        body = masks[i] if masks is not None else body_mask(hu)
        body_total += int(body.sum())
        values = hu[body]
        for t, (lo, hi) in ranges.items():
            sel = values[(values >= lo) & (values <= hi)]
            pooled[t].append(sel)
            per_image[t].append(float(np.median(sel)) if sel.size else math.nan)
    median, fraction = {}, {}
    for t in ranges:
        allv = np.concatenate(pooled[t]) if pooled[t] else np.zeros(0)
        median[t] = float(np.median(allv)) if allv.size else math.nan
        fraction[t] = allv.size / body_total if body_total else math.nan
    return {"median_hu": median, "per_image_median_hu": per_image, "tissue_fraction": fraction,
            "ranges_hu": {t: [lo, hi if math.isfinite(hi) else None] for t, (lo, hi) in ranges.items()}, "n_images": int(len(x))}


#: Tissues of :func:`tissue_noise_hu`: bone is left out (a bone region's high-pass is its trabecular
#: structure and cortex edges, not the scanner's noise).
NOISE_TISSUES = ("lung", "fat", "soft_tissue")


def tissue_noise_hu(images_model_space, highpass_sigma: float = 1.0, region_sigma: float = 2.0,
                    erode: int = 3) -> dict:
    """Pixel-scale texture per tissue of CT images given in model space: the standard deviation (HU) of
    ``hu - gaussian(hu, highpass_sigma)`` over each tissue's region, median over the images
    (:func:`tissue_band_hu` with no fine blur).

    In fat and muscle that is the scanner's noise (a real slice's is 10-20 HU at 0.7 mm pixels); in the
    lung it also holds the small vessels and septa.
    Why: phantom-anatomy 512² slices carry half of it in fat and muscle (4.9 / 4.8 HU for 8 slices of the
    phantom recipe, session 19, against 9.4 / 9.6 for 24 training slices and 11.2 / 8.5 for the 19
    validation slices; lung 20.3 against 24.7 / 19.8), a difference the spectrum's whole-image bands
    mix with the lung's and the air's.
    """
    return tissue_band_hu(images_model_space, 0.0, highpass_sigma, region_sigma, erode)


def tissue_mottle_hu(images_model_space, fine_sigma: float = 2.0, coarse_sigma: float = 8.0,
                     erode: int = 8) -> dict:
    """Texture a few pixels to a few tens of pixels across per tissue (:func:`tissue_band_hu` between
    Gaussian blurs of ``fine_sigma`` and ``coarse_sigma``), away from tissue edges (``erode`` px). The
    regions are drawn on the image blurred by ``coarse_sigma``, so that swirls do not carry their own
    pixels out of the tissue's HU range (muscle's is 70 HU wide) and out of the measure.

    Why: 512² real-slice images of the linear ct_real model are marbled, swirls of about ±100 HU in muscle
    and fat where a scan is smooth (docs/guidance.md); the pixel noise of :func:`tissue_noise_hu` is below
    that scale and the whole-image spectrum mixes it with every edge.
    """
    return tissue_band_hu(images_model_space, fine_sigma, coarse_sigma, coarse_sigma, erode)


def tissue_band_hu(images_model_space, fine_sigma: float, coarse_sigma: float, region_sigma: float = 2.0,
                   erode: int = 3) -> dict:
    """The standard deviation (HU) of ``gaussian(hu, fine_sigma) - gaussian(hu, coarse_sigma)`` (a fine
    sigma of 0: ``hu`` itself) over each tissue's region of CT images given in model space.

    A region is where the image smoothed by ``region_sigma`` lies in the tissue's range of
    :data:`TISSUE_HU_RANGES`, inside :func:`body_mask`, eroded by ``erode`` px so that the edges between
    tissues count as little as the band allows.

    Returns ``noise_hu`` {tissue: median over the images with at least 200 region pixels (NaN: none)},
    ``per_image_noise_hu`` {tissue: [value or NaN per image]} and ``n_images``.
    """
    x = as_images(images_model_space, "images")
    per_image: dict[str, list[float]] = {t: [] for t in NOISE_TISSUES}
    for img in x:
        hu = np.asarray(model_to_hu(img), np.float64)
        fine = ndi.gaussian_filter(hu, fine_sigma) if fine_sigma > 0 else hu
        band = fine - ndi.gaussian_filter(hu, coarse_sigma)
        smooth = ndi.gaussian_filter(hu, region_sigma)
        body = body_mask(hu)
        for t in NOISE_TISSUES:
            lo, hi = TISSUE_HU_RANGES[t]
            region = ndi.binary_erosion(body & (smooth >= lo) & (smooth <= hi), iterations=erode)
            per_image[t].append(float(band[region].std()) if region.sum() >= 200 else math.nan)
    noise = {t: float(np.nanmedian(v)) if np.isfinite(v).any() else math.nan
             for t, v in ((t, np.asarray(values)) for t, values in per_image.items())}
    return {"noise_hu": noise, "per_image_noise_hu": per_image, "n_images": int(len(x))}


#: Air pixels above this HU count as "not flat air" in :func:`air_outside_body` (air is about -1000 HU).
AIR_STRUCTURE_HU = -900.0


def air_outside_body(images_model_space, margin: int = 6) -> dict:
    """The air around a CT body: the pixels outside :func:`body_mask` grown by ``margin`` px and off the
    scanner padding (:func:`mcfast.anatomy.masks.padding_mask`), pooled over the set.

    Returns ``median_hu``, ``share_above`` (of those pixels above :data:`AIR_STRUCTURE_HU`: threads,
    blankets, the table's edge), ``n_pixels`` and ``n_images`` (images with any such air); NaN without air.
    """
    x = as_images(images_model_space, "images")
    pooled = []
    for img in x:
        hu = np.asarray(model_to_hu(img), np.float32)
        air = ~ndi.binary_dilation(body_mask(hu), iterations=margin) & ~padding_mask(img)
        if air.any():
            pooled.append(hu[air])
    values = np.concatenate(pooled) if pooled else np.zeros(0, np.float32)
    if not values.size:
        return {"median_hu": math.nan, "share_above": math.nan, "n_pixels": 0, "n_images": 0}
    return {"median_hu": float(np.median(values)), "share_above": float((values > AIR_STRUCTURE_HU).mean()),
            "n_pixels": int(values.size), "n_images": len(pooled)}

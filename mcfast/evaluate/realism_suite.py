"""One realism comparison: a candidate set (synthetic, or real slices of other patients) against the
held-out real set, with every number the realism reports give.

The same function scores the real-vs-real floor (training-split real slices against validation real
slices) and each synthetic set, so each number has its floor measured the same way in the same run:
two two-sample tests with intervals (patch-level CNN, hand features), the Fréchet distance on
features of an autoencoder trained here on real training slices, radial power spectrum bands,
tissue HU medians (CT) or the breast-area intensity distance (MG), and the memorization audit (nearest training slice by NCC after a high-pass,
with inserted lesions blanked).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mcfast.evaluate import two_sample
from mcfast.evaluate.memorization import highpass, max_ncc
from mcfast.evaluate.realism import FeatureAutoencoder, frechet_feature_distance


@dataclass
class SuiteSettings:
    crop: int = 48
    crops_per_image: int = 32
    folds: int = 5
    cnn_epochs: int | None = None        # None: two_sample.patch_cnn_test's default
    cnn_repeats: int = 1                 # CNNs trained per fold, their scores averaged (patch_cnn_test's repeats)
    memorization_threshold: float = 0.95
    memorization_highpass_sigma: float = 2.0
    memorization_max_shift: int = 4
    seed: int = 0
    n_boot: int = 1000


def blank_lesions(images: np.ndarray, masks: np.ndarray | None, dilate: int = 3) -> np.ndarray:
    """High-passed images with each inserted lesion (dilated by ``dilate`` px) set to 0, so the
    memorization score is about the anatomy and texture the model made, not the pasted lesion."""
    if masks is None:
        return images
    out = images.copy()
    for k, m in enumerate(masks):
        if m.any():
            out[k][ndimage.binary_dilation(m > 0, iterations=dilate)] = 0.0
    return out


def memorization(candidates: np.ndarray, training: np.ndarray, settings: SuiteSettings,
                 masks: np.ndarray | None = None, own_reference=None) -> dict:
    """Nearest training image by shift-aligned NCC of high-passed images (lesions blanked).

    ``own_reference``: per candidate, the index in ``training`` of the image that guided its anatomy
    (-1: none, e.g. a phantom). Such an image holds its reference's layout by design, so its nearest
    training image is usually that one; ``"other"`` then scores the nearest *other* training image, the
    question a memorization audit asks (did the model copy someone?), and ``"nearest_is_own_reference"``
    says how often the overall nearest was the image's own reference."""
    sigma = settings.memorization_highpass_sigma
    hp_candidates, hp_training = blank_lesions(highpass(candidates, sigma), masks), highpass(training, sigma)
    res = max_ncc(hp_candidates, hp_training, settings.memorization_max_shift)
    out = {"threshold": settings.memorization_threshold, "highpass_sigma": sigma,
           "max_shift": settings.memorization_max_shift, **_ncc_summary(res["ncc"], settings.memorization_threshold)}
    own = None if own_reference is None else np.asarray(own_reference, np.int64)
    if own is not None and (own >= 0).any():
        other = max_ncc(hp_candidates, hp_training, settings.memorization_max_shift, exclude=own)
        out["other"] = _ncc_summary(other["ncc"], settings.memorization_threshold)
        guided = own >= 0
        out["nearest_is_own_reference"] = float((res["index"][guided] == own[guided]).mean())
    return out


def _ncc_summary(ncc: np.ndarray, threshold: float) -> dict:
    return {"median_ncc": float(np.median(ncc)), "max_ncc": float(ncc.max()),
            "rate_above_threshold": float((ncc > threshold).mean()), "ncc": [round(float(v), 4) for v in ncc]}


def memorization_rate(audit: dict) -> float:
    """The share of images above the audit's threshold that the targets use: against training images other
    than each image's own anatomy reference where it has one (:func:`memorization`), else against all."""
    return audit.get("other", audit)["rate_above_threshold"]


def compare(candidates: np.ndarray, real: np.ndarray, training: np.ndarray, feature_net: FeatureAutoencoder,
            settings: SuiteSettings, *, modality: str = "ct", groups_candidates=None, groups_real=None,
            masks: np.ndarray | None = None, own_reference=None) -> dict:
    """All realism numbers of ``candidates`` against ``real`` (both (N, H, W) model space, one size).

    ``training``: the model's training images at the same size, for the memorization audit.
    ``groups_*``: patient ids, so no patient is on both sides of a fold (default: one group per image).
    ``own_reference``: per candidate, the index in ``training`` of its anatomy reference or -1
    (:func:`memorization`).
    """
    common = dict(folds=settings.folds, seed=settings.seed, n_boot=settings.n_boot,
                  groups_a=groups_real, groups_b=groups_candidates)
    cnn_kwargs = dict(crop=settings.crop, crops_per_image=settings.crops_per_image, repeats=settings.cnn_repeats)
    if settings.cnn_epochs is not None:
        cnn_kwargs["epochs"] = settings.cnn_epochs
    out = {
        "n_candidates": int(len(candidates)), "n_real": int(len(real)),
        "patch_cnn": two_sample.patch_cnn_test(real, candidates, **common, **cnn_kwargs),
        "hand_features": two_sample.hand_feature_test(real, candidates, **common),
        "frechet": float(frechet_feature_distance(feature_net, real, candidates)),
        "spectrum_ratio": two_sample.spectrum_band_ratios(real, candidates),
        "memorization": memorization(candidates, training, settings, masks, own_reference),
    }
    if modality == "ct":
        out["tissue_hu"] = two_sample.tissue_hu_medians(candidates)
        out["tissue_noise"] = two_sample.tissue_noise_hu(candidates)
    elif modality == "mg":
        out["breast_intensity"] = two_sample.breast_intensity_distance(real, candidates)
    return out

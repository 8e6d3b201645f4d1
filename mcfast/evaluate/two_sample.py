"""Honest two-sample realism tests between REAL images and OTHER images, plus simple descriptors.

``other`` is a synthetic set, or real images of other patients (the "real-vs-real floor": the
AUC that sampling noise and patient variation alone give). Images are (N, H, W) float arrays
in model space [-1, 1] (CT: :func:`mcfast.io.windows.model_to_hu`). Everything is seeded,
deterministic and runs on the CPU.

- :func:`patch_cnn_test`: a patch-level CNN classifier two-sample test (Lopez-Paz & Oquab 2017,
  "Revisiting classifier two-sample tests"), made strong: many random crops per image, a small
  CNN trained from scratch per fold, K-fold cross-validation grouped by image (or patient) so no
  image/patient is on both sides of a fold, each held-out image scored by the mean logit of its
  crops, one AUC over all out-of-fold scores with a stratified bootstrap interval. An AUC of 0.5
  means this classifier cannot tell the sets apart; compare with the real-vs-real floor.
- :func:`hand_feature_test`: the same protocol with hand-crafted features (intensity histogram,
  radial log power spectrum, gradient-magnitude histogram) and an L2 logistic regression; it
  says *which kind* of difference exists and is hard to overfit.
- :func:`spectrum_bands` / :func:`spectrum_band_ratios`: mean power per radial frequency band.
- :func:`tissue_hu_medians`: median HU of lung, fat, soft tissue and bone inside the body (CT).
- :func:`tissue_noise_hu`: pixel-scale texture (high-pass standard deviation, HU) per tissue (CT).
- :func:`breast_intensity_distance`: distance between the breast-area intensity histograms (MG).

Cross-validated out-of-fold scores of different folds' models are pooled into one AUC (as asked
for a single number per comparison); fold models differ slightly in calibration, which can only
pull the pooled AUC towards 0.5, so the pooling is conservative, never optimistic.

The code lives in one module per job; this module is their one import path
(``from mcfast.evaluate.two_sample import patch_cnn_test``): :mod:`mcfast.evaluate.folds` (input
checks, groups, :func:`grouped_folds`), :mod:`mcfast.evaluate.patch_cnn`, :mod:`mcfast.evaluate.hand_features`,
:mod:`mcfast.evaluate.spectrum` (radial spectrum, bands) and :mod:`mcfast.evaluate.tissue` (CT tissue HU,
MG breast intensities).
"""
from __future__ import annotations

from mcfast.evaluate.folds import grouped_folds
from mcfast.evaluate.hand_features import gradient_histogram, hand_feature_test, hand_features, intensity_histogram
from mcfast.evaluate.patch_cnn import _sample_crops, _valid_positions  # noqa: F401  (tests/test_two_sample.py)
from mcfast.evaluate.patch_cnn import PatchCNN, patch_cnn_test
from mcfast.evaluate.spectrum import DEFAULT_BANDS, radial_power_spectrum, spectrum_band_ratios, spectrum_bands
from mcfast.anatomy.masks import BODY_THRESHOLD_HU, body_mask
from mcfast.evaluate.tissue import (TISSUE_HU_RANGES, breast_intensities, breast_intensity_distance, tissue_hu_medians,
                                    tissue_noise_hu)

__all__ = [
    "grouped_folds", "PatchCNN", "patch_cnn_test",
    "intensity_histogram", "gradient_histogram", "hand_features", "hand_feature_test",
    "DEFAULT_BANDS", "radial_power_spectrum", "spectrum_bands", "spectrum_band_ratios",
    "TISSUE_HU_RANGES", "BODY_THRESHOLD_HU", "body_mask", "breast_intensities", "breast_intensity_distance",
    "tissue_hu_medians", "tissue_noise_hu",
]

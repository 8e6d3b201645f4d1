"""Binary classification metrics (ROC AUC, F1), stratified bootstrap intervals and a paired bootstrap
test of two arms (any per-unit metric), in numpy.

Small exact versions so the evaluation needs no scikit-learn: the AUC is the Mann–Whitney
statistic with average ranks for ties (identical to the area under the empirical ROC curve).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import rankdata

from mcfast.errors import InputError


def _check_binary(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise InputError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if not np.isin(y, (0, 1)).all():
        raise InputError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise InputError("scores contain NaN or infinity")
    return y, s


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, s = _check_binary(y_true, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks: a tie between classes counts one half
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def f1_score(y_true, y_pred) -> float:
    """F1 of the positive class (0 when there are no true positives)."""
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(y_pred).astype(np.int64).ravel()
    tp = int(((p == 1) & (y == 1)).sum())
    fp = int(((p == 1) & (y == 0)).sum())
    fn = int(((p == 0) & (y == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def best_f1_threshold(y_true, scores) -> float:
    """The score threshold (predict positive when score >= threshold) with the highest F1.

    Chosen on validation data and then applied unchanged to the test set, so the test F1
    is not optimistically tuned. Ties go to the higher threshold (fewer positives).
    """
    y, s = _check_binary(y_true, scores)
    best_t, best_f = 0.5, -1.0
    for t in np.unique(s)[::-1]:
        f = f1_score(y, s >= t)
        if f > best_f:
            best_t, best_f = float(t), f
    return best_t


def bootstrap_interval(statistic: Callable[[np.ndarray], float], y_true, n_boot: int = 1000,
                       ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``statistic(indices)`` over stratified bootstrap resamples.

    Positives and negatives are resampled separately (keeping their counts), so every
    resample has both classes and the AUC is always defined. ``statistic`` gets an index
    array into the test set, which lets one resample serve several seeds' predictions.
    """
    if not 0 < ci < 1:
        raise InputError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise InputError(f"n_boot must be >= 1, got {n_boot}")
    y = np.asarray(y_true).astype(np.int64).ravel()
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size, replace=True) if pos.size else pos,
                              rng.choice(neg, neg.size, replace=True) if neg.size else neg])
        values[b] = statistic(idx)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - ci) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def auc_with_interval(y_true, scores, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict:
    """``{"auc", "auc_lo", "auc_hi"}`` for one set of scores."""
    y, s = _check_binary(y_true, scores)
    lo, hi = bootstrap_interval(lambda idx: roc_auc(y[idx], s[idx]), y, n_boot, ci, seed)
    return {"auc": roc_auc(y, s), "auc_lo": lo, "auc_hi": hi}


def paired_bootstrap_test(metric: Callable[[np.ndarray, np.ndarray], float], y_true, scores_a, scores_b,
                          n_boot: int = 2000, ci: float = 0.95, seed: int = 0, stratify: bool = True,
                          resample_seeds: bool = True) -> dict:
    """Paired two-level bootstrap test of ``mean_s metric(y, a_s) − mean_s metric(y, b_s)``.

    Generic over the metric and the unit: ``scores_a`` and ``scores_b`` are (n_seeds, n_units) arrays
    (or one 1-D row each) of per-unit outputs of two arms, paired by seed (row ``s`` of ``a`` and row
    ``s`` of ``b`` share a training seed) and by unit (column ``j`` is the same test image / patient in
    both). ``metric(y[idx], scores[idx])`` turns the units of one resample into a number: ``roc_auc``
    for classifier scores, or e.g. ``lambda y, d: d.mean()`` for per-image Dice values (``y_true`` may
    then be ``None``; it is passed through and, with ``stratify``, resampled within its classes).

    Each resample draws the units with replacement (stratified by ``y_true`` when it is binary and
    ``stratify``), the same units for both arms, and — with ``resample_seeds`` and more than one seed —
    the seed pairs with replacement, so the interval holds both test-set and training-seed variation.
    Returns the observed difference ``delta``, its percentile interval ``delta_lo``/``delta_hi``
    (level ``ci``) and the two-sided bootstrap p-value ``p`` = 2·min(P*(Δ ≤ 0), P*(Δ ≥ 0)) with the
    +1 correction, (1 + #)/(1 + B): the smallest p the test can report is 2/(B + 1), and p < 1 − ci
    exactly when the interval excludes 0. Also ``per_seed_delta`` (each seed pair's difference) and
    ``n_boot``.
    """
    a = np.atleast_2d(np.asarray(scores_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(scores_b, dtype=np.float64))
    if a.shape != b.shape:
        raise InputError(f"paired arms differ in shape: {a.shape} vs {b.shape} (seeds × units)")
    if not 0 < ci < 1:
        raise InputError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise InputError(f"n_boot must be >= 1, got {n_boot}")
    n_seeds, n_units = a.shape
    y = None if y_true is None else np.asarray(y_true).ravel()
    if y is not None and y.size != n_units:
        raise InputError(f"labels ({y.size}) and units ({n_units}) differ in length")

    def diffs(idx: np.ndarray) -> np.ndarray:
        yy = None if y is None else y[idx]
        return np.array([metric(yy, a[s, idx]) - metric(yy, b[s, idx]) for s in range(n_seeds)])

    all_units = np.arange(n_units)
    per_seed = diffs(all_units)
    delta = float(np.mean(per_seed))
    if y is not None and stratify and np.isin(y, (0, 1)).all():
        strata = [np.flatnonzero(y == 0), np.flatnonzero(y == 1)]
    else:
        strata = [all_units]
    strata = [s for s in strata if s.size]
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for k in range(n_boot):
        idx = np.concatenate([rng.choice(s, s.size, replace=True) for s in strata])
        d = diffs(idx)
        pick = rng.integers(0, n_seeds, n_seeds) if resample_seeds and n_seeds > 1 else np.arange(n_seeds)
        values[k] = float(np.mean(d[pick]))
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"delta": delta, "delta_lo": float("nan"), "delta_hi": float("nan"), "p": float("nan"),
                "per_seed_delta": per_seed.tolist(), "n_boot": 0}
    alpha = (1 - ci) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    below = (1 + int((values <= 0).sum())) / (1 + values.size)
    above = (1 + int((values >= 0).sum())) / (1 + values.size)
    return {"delta": delta, "delta_lo": float(lo), "delta_hi": float(hi), "p": float(min(1.0, 2 * min(below, above))),
            "per_seed_delta": [float(v) for v in per_seed], "n_boot": int(values.size)}

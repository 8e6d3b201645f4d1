"""Binary classification metrics (ROC AUC, F1) and stratified bootstrap intervals, in numpy.

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

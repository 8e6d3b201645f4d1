"""AUC, F1 and bootstrap intervals against direct definitions."""
from __future__ import annotations

import numpy as np
import pytest

from mcfast.errors import InputError
from mcfast.evaluate.metrics import auc_with_interval, best_f1_threshold, bootstrap_interval, f1_score, roc_auc


def _pairwise_auc(y, s):
    pos, neg = s[y == 1], s[y == 0]
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


def test_auc_equals_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 40)
        s = np.round(rng.normal(size=40) + y, 1)  # rounding makes ties
        assert roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s))
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    with pytest.raises(InputError):
        roc_auc([0, 2], [0.1, 0.2])


def test_f1_and_threshold():
    assert f1_score([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert f1_score([1, 0], [0, 0]) == 0.0
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.1, 0.6, 0.5, 0.7, 0.9])
    t = best_f1_threshold(y, s)
    assert f1_score(y, s >= t) == max(f1_score(y, s >= c) for c in s)


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    res = auc_with_interval(y, s, n_boot=300, seed=4)
    assert res["auc_lo"] < res["auc"] < res["auc_hi"]
    assert res == auc_with_interval(y, s, n_boot=300, seed=4)
    lo, hi = bootstrap_interval(lambda idx: float(y[idx].mean()), y, 50)
    assert lo == hi == pytest.approx(y.mean())  # stratified: class counts are kept
    with pytest.raises(InputError):
        bootstrap_interval(lambda idx: 0.0, y, 10, ci=1.5)

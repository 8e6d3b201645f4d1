"""Turing test statistics against hand-computed and published values."""
import math

import numpy as np
import pytest

from mcfast.evaluate.turing.stats import (binomial_p_value, fleiss_kappa, performance, rating_table,
                                          wilson_interval)


def test_wilson_interval_known_values():
    # 8/10: the textbook Wilson interval (also scipy's proportion_ci(method="wilson")).
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4901625, abs=1e-6) and high == pytest.approx(0.9433178, abs=1e-6)
    # 0/10: lower bound 0, upper bound z²/n / (1 + z²/n) = 0.27753.
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775328, abs=1e-6)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(1 - 0.2775328, abs=1e-6)   # symmetric to 0/10
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_binomial_p_value_exact():
    assert binomial_p_value(9, 10) == pytest.approx(22 / 1024)   # 2 · (C(10,9) + C(10,10)) / 2^10
    assert binomial_p_value(5, 10) == pytest.approx(1.0)
    tail = sum(math.comb(30, k) for k in range(20, 31)) / 2 ** 30
    assert binomial_p_value(20, 30) == pytest.approx(2 * tail)
    assert binomial_p_value(10, 30) == pytest.approx(2 * tail)
    assert math.isnan(binomial_p_value(0, 0))


def test_performance_counts():
    truths = ["real", "real", "real", "synthetic", "synthetic", "synthetic", "synthetic"]
    answers = ["real", "synthetic", "real", "synthetic", "synthetic", "real", "synthetic"]
    perf = performance(truths, answers, [1, 2, 3, 4, 5, 5, 5])
    assert (perf.accuracy.successes, perf.accuracy.trials) == (5, 7)
    assert (perf.sensitivity.successes, perf.sensitivity.trials) == (3, 4)   # synthetic called Fake
    assert (perf.specificity.successes, perf.specificity.trials) == (2, 3)   # real called Real
    assert perf.accuracy.value == pytest.approx(5 / 7)
    assert perf.mean_confidence == pytest.approx(25 / 7)
    assert perf.p_value == pytest.approx(binomial_p_value(5, 7))
    with pytest.raises(ValueError):
        performance(["real"], ["maybe"])


def test_fleiss_kappa_hand_computed_binary():
    # 4 images, 3 readers. P_i = 1, 1, 1/3, 1/3 → P̄ = 2/3; p_real = p_fake = 1/2 → P̄e = 1/2; κ = (2/3 − 1/2) / (1/2).
    table = [[3, 0], [0, 3], [2, 1], [1, 2]]
    assert fleiss_kappa(table) == pytest.approx(1 / 3)


def test_fleiss_kappa_published_example():
    # Fleiss (1971) style example from Wikipedia: 10 subjects, 14 raters, 5 categories; P̄ = 0.378, P̄e = 0.213.
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)


def test_fleiss_kappa_edges():
    assert fleiss_kappa([[2, 0], [0, 2]]) == pytest.approx(1.0)          # perfect agreement
    assert math.isnan(fleiss_kappa([[2, 0], [2, 0]]))                      # chance agreement is total
    assert fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0)          # systematic disagreement of 2 raters
    with pytest.raises(ValueError):
        fleiss_kappa([[2, 0], [1, 0]])                                     # unequal numbers of raters


def test_rating_table_uses_common_items():
    ratings = {"b": {"x": "real", "y": "synthetic", "z": "real"}, "a": {"x": "real", "y": "real"}}
    table, items, raters = rating_table(ratings)
    assert items == ["x", "y"] and raters == ["a", "b"]
    np.testing.assert_array_equal(table, [[2, 0], [1, 1]])

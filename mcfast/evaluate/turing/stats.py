"""Statistics of a Visual Turing Test: proportions with Wilson intervals, exact binomial tests, Fleiss' kappa.

Convention: "positive" means synthetic. Sensitivity is the share of synthetic images called Fake, specificity the
share of real images called Real, accuracy the share of all answers that are right. A reader who cannot tell the
classes apart has accuracy 0.5; the binomial test asks whether the observed accuracy differs from that.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy.stats import binomtest, norm


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) when there are no trials."""
    if trials == 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= trials:
        raise ValueError(f"successes {successes} outside 0..{trials}")
    z = float(norm.ppf(0.5 + confidence / 2.0))
    p = successes / trials
    denom = 1.0 + z * z / trials
    center = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # The bounds at 0/n and n/n are exactly 0 and 1; rounding would put them a hair inside.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == trials else min(1.0, center + half)
    return (low, high)


def binomial_p_value(successes: int, trials: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test of ``successes`` out of ``trials`` against probability ``p``."""
    if trials == 0:
        return math.nan
    return float(binomtest(successes, trials, p, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class Proportion:
    """``successes`` / ``trials`` with its Wilson interval."""
    successes: int
    trials: int
    value: float
    low: float
    high: float

    @classmethod
    def of(cls, successes: int, trials: int, confidence: float = 0.95) -> "Proportion":
        low, high = wilson_interval(successes, trials, confidence)
        return cls(successes, trials, successes / trials if trials else math.nan, low, high)


@dataclass(frozen=True)
class Performance:
    """How well one set of answers (one reader, or all pooled) separates real from synthetic."""
    answers: int
    accuracy: Proportion
    sensitivity: Proportion
    specificity: Proportion
    p_value: float          # exact binomial test of accuracy against 0.5
    mean_confidence: float

    def to_dict(self) -> dict:
        return asdict(self)


def performance(truths: Sequence[str], answers: Sequence[str], confidences: Sequence[int] | None = None,
                confidence: float = 0.95) -> Performance:
    """Accuracy, sensitivity, specificity (Wilson intervals) and the binomial test for paired truths / answers.

    Labels are ``"real"`` or ``"synthetic"``; synthetic is the positive class.
    """
    if len(truths) != len(answers):
        raise ValueError(f"{len(truths)} truths but {len(answers)} answers")
    labels = {"real", "synthetic"}
    if not set(truths) <= labels or not set(answers) <= labels:
        raise ValueError(f"labels must be 'real' or 'synthetic', got {sorted(set(truths) | set(answers))}")
    pairs = list(zip(truths, answers))
    correct = sum(t == a for t, a in pairs)
    true_fake = sum(t == a == "synthetic" for t, a in pairs)
    true_real = sum(t == a == "real" for t, a in pairs)
    n_fake = sum(t == "synthetic" for t in truths)
    n_real = len(truths) - n_fake
    mean_conf = float(np.mean(confidences)) if confidences is not None and len(confidences) else math.nan
    return Performance(
        answers=len(pairs),
        accuracy=Proportion.of(correct, len(pairs), confidence),
        sensitivity=Proportion.of(true_fake, n_fake, confidence),
        specificity=Proportion.of(true_real, n_real, confidence),
        p_value=binomial_p_value(correct, len(pairs)),
        mean_confidence=mean_conf,
    )


def fleiss_kappa(counts: np.ndarray | Iterable[Iterable[int]]) -> float:
    """Fleiss' kappa from an (items, categories) table of how many raters put each item in each category.

    Every item must have the same number of raters (>= 2). Returns nan when agreement by chance is total
    (all ratings in one category), where kappa is undefined.
    """
    table = np.asarray(counts, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] < 2:
        raise ValueError(f"counts must be an (items, categories) table with >= 2 categories, got {table.shape}")
    if (table < 0).any() or not np.allclose(table, np.round(table)):
        raise ValueError("counts must be non-negative integers")
    raters = table.sum(axis=1)
    if not np.all(raters == raters[0]) or raters[0] < 2:
        raise ValueError(f"every item needs the same number (>= 2) of raters, got {sorted(set(raters.tolist()))}")
    n = raters[0]
    p_category = table.sum(axis=0) / table.sum()                               # p_j
    p_item = ((table * table).sum(axis=1) - n) / (n * (n - 1))                 # P_i
    p_bar, p_expected = p_item.mean(), float((p_category ** 2).sum())          # P̄, P̄e
    if math.isclose(p_expected, 1.0):
        return math.nan
    return float((p_bar - p_expected) / (1.0 - p_expected))


def rating_table(ratings: dict[str, dict[str, str]], categories: Sequence[str] = ("real", "synthetic"),
                 ) -> tuple[np.ndarray, list[str], list[str]]:
    """Counts table for :func:`fleiss_kappa` from ``{rater: {item: category}}``.

    Uses the items every given rater answered; returns (table, items, raters).
    """
    raters = sorted(ratings)
    common = set.intersection(*(set(ratings[r]) for r in raters)) if raters else set()
    items = sorted(common)
    index = {c: j for j, c in enumerate(categories)}
    table = np.zeros((len(items), len(categories)), dtype=np.int64)
    for i, item in enumerate(items):
        for rater in raters:
            table[i, index[ratings[rater][item]]] += 1
    return table, items, raters

"""The input checks every function of :mod:`mcfast.evaluate.two_sample` starts with (an (N, H, W) finite
image set, a pair of them for a K-fold test), one group id per image, and K folds grouped by image or
patient and stratified by set (:func:`grouped_folds`).
"""
from __future__ import annotations

import numpy as np

from mcfast.errors import InputError


def as_images(x, name: str) -> np.ndarray:
    """``x`` as an (N, H, W) float32 array; InputError naming ``name`` when it is not numeric, finite images."""
    arr = np.asarray(x)
    if arr.ndim != 3:
        raise InputError(f"{name}: expected an (N, H, W) image array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{name}: expected numeric images, got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise InputError(f"{name}: {bad} pixel(s) are NaN or infinite")
    return arr


def check_pair(a, b, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as images of one size, each with at least two images per fold."""
    if not isinstance(folds, (int, np.integer)) or folds < 2:
        raise InputError(f"folds must be an integer >= 2, got {folds!r}")
    a, b = as_images(a, "set a"), as_images(b, "set b")
    if a.shape[1:] != b.shape[1:]:
        raise InputError(f"sets differ in image size: a is {a.shape[1]}x{a.shape[2]}, b is {b.shape[1]}x{b.shape[2]}")
    for name, arr in (("a", a), ("b", b)):
        if len(arr) < 2 * folds:
            raise InputError(f"set {name} has {len(arr)} images; a {folds}-fold test needs at least {2 * folds} per set")
    return a, b


def image_groups(groups_a, groups_b, n_a: int, n_b: int) -> np.ndarray:
    """One group id per image; ``None`` = each image its own group. Ids are shared between sets:
    the same id in a and b is one group (one patient in both sets stays on one side of a fold)."""
    if (groups_a is None) != (groups_b is None):
        raise InputError("give both groups_a and groups_b, or neither")
    if groups_a is None:
        return np.array([f"a{i}" for i in range(n_a)] + [f"b{i}" for i in range(n_b)], dtype=object)
    ga, gb = list(np.asarray(groups_a, dtype=object).ravel()), list(np.asarray(groups_b, dtype=object).ravel())
    if len(ga) != n_a:
        raise InputError(f"groups_a has {len(ga)} entries for {n_a} images in set a")
    if len(gb) != n_b:
        raise InputError(f"groups_b has {len(gb)} entries for {n_b} images in set b")
    return np.array([str(g) for g in ga + gb], dtype=object)


def grouped_folds(labels, groups, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds as ``[(train_indices, test_indices), ...]``: every group lies wholly on one side.

    Stratified at group level: groups whose items all have label 0, all label 1, or both
    labels form three strata; each stratum is shuffled (numpy Generator from ``seed``), sorted
    by size (largest first, stable) and dealt greedily to the fold holding the fewest items of
    that stratum, so every fold's test side gets images of both sets and the folds are of
    near-equal size. Raises :class:`InputError` when a fold would miss a class on its test side.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    groups = np.asarray(groups, dtype=object).ravel()
    if labels.shape != groups.shape:
        raise InputError(f"labels ({labels.size}) and groups ({groups.size}) differ in length")
    if not np.isin(labels, (0, 1)).all():
        raise InputError("fold labels must be 0 or 1")
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise InputError(f"folds must be an integer >= 2, got {k!r}")
    keys = np.array([str(g) for g in groups], dtype=object)
    unique, inverse = np.unique(keys, return_inverse=True)
    has0 = np.bincount(inverse, weights=(labels == 0), minlength=unique.size) > 0
    has1 = np.bincount(inverse, weights=(labels == 1), minlength=unique.size) > 0
    sizes = np.bincount(inverse, minlength=unique.size)
    for cls, has in ((0, has0), (1, has1)):
        if int(has.sum()) < k:
            raise InputError(f"{k} folds need at least {k} groups with label {cls}, got {int(has.sum())}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(unique.size, np.int64)
    for stratum in (has0 & ~has1, has1 & ~has0, has0 & has1):
        members = np.flatnonzero(stratum)
        members = members[rng.permutation(members.size)]
        members = members[np.argsort(-sizes[members], kind="stable")]
        load = np.zeros(k, np.int64)
        for g in members:
            f = int(np.argmin(load))  # first fold among the least loaded
            fold_of[g] = f
            load[f] += sizes[g]
    item_fold = fold_of[inverse]
    out = []
    for f in range(k):
        test = np.flatnonzero(item_fold == f)
        train = np.flatnonzero(item_fold != f)
        if np.unique(labels[test]).size < 2 or np.unique(labels[train]).size < 2:
            raise InputError(f"fold {f} lacks one class; use fewer folds or more groups")
        out.append((train, test))
    return out

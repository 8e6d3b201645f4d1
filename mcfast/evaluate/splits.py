"""Patient-level (group) train/validation/test splits, stratified and seeded; MIAS labels and women.

Images of one person must never be split across train and test: in MIAS the two breasts
``mdb2k-1`` and ``mdb2k`` belong to one woman, so the split is made over women.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mcfast.errors import InputError

SPLIT_NAMES = ("train", "val", "test")
_MIAS_CLASSES = {"CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM"}


def mias_labels(info_path: str | Path) -> dict[str, int]:
    """``{"mdb001": 0|1}`` from MIAS ``Info.txt``: 0 = NORM (normal), 1 = any abnormality.

    An image with several lines is abnormal if any line names an abnormality.
    """
    info_path = Path(info_path)
    if not info_path.is_file():
        raise InputError(f"{info_path}: MIAS Info.txt not found")
    labels: dict[str, int] = {}
    for lineno, line in enumerate(info_path.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts or not re.fullmatch(r"mdb\d{3}", parts[0]):
            continue  # header prose
        if len(parts) < 3 or parts[2] not in _MIAS_CLASSES:
            raise InputError(f"{info_path}:{lineno}: expected 'mdbNNN TISSUE CLASS ...', got {line.strip()!r}")
        abnormal = int(parts[2] != "NORM")
        labels[parts[0]] = max(labels.get(parts[0], 0), abnormal)
    if not labels:
        raise InputError(f"{info_path}: no 'mdbNNN' lines found")
    return labels


def mias_woman(name: str) -> int:
    """Woman index of a MIAS image name: mdb001 and mdb002 -> 1, mdb003 and mdb004 -> 2."""
    m = re.fullmatch(r"mdb(\d{3})", Path(name).stem)
    if not m:
        raise InputError(f"{name!r} is not a MIAS image name (mdbNNN)")
    return (int(m.group(1)) + 1) // 2


def group_split(labels, groups, fractions=(0.6, 0.2, 0.2), seed: int = 0) -> dict[str, np.ndarray]:
    """Split item indices into train/val/test so that every group lies in one split.

    Stratified at group level: a group counts as positive if any of its items is positive,
    and positive and negative groups are each shuffled (numpy Generator from ``seed``) and
    cut by ``fractions`` (rounded, every split gets at least one group of each class when
    there are enough groups). Returns sorted index arrays keyed by ``SPLIT_NAMES``.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    groups = np.asarray(groups).ravel()
    if labels.shape != groups.shape:
        raise InputError(f"labels ({labels.size}) and groups ({groups.size}) differ in length")
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise InputError(f"split fractions must be three non-negative numbers summing to 1, got {fractions.tolist()}")
    rng = np.random.default_rng(seed)
    unique_groups = np.unique(groups)
    group_label = np.array([labels[groups == g].max() for g in unique_groups])
    assigned: dict[str, list] = {name: [] for name in SPLIT_NAMES}
    for cls in (0, 1):
        members = unique_groups[group_label == cls]
        members = members[rng.permutation(members.size)]
        counts = _allocate(members.size, fractions)
        start = 0
        for name, count in zip(SPLIT_NAMES, counts):
            assigned[name].extend(members[start:start + count].tolist())
            start += count
    out = {}
    for name in SPLIT_NAMES:
        out[name] = np.flatnonzero(np.isin(groups, np.asarray(assigned[name], dtype=groups.dtype)))
    return out


def _allocate(n: int, fractions: np.ndarray) -> list[int]:
    """Integer counts summing to n, close to n*fractions; each non-zero fraction gets >= 1 if n allows."""
    counts = np.floor(n * fractions).astype(int)
    wanted = fractions > 0
    for i in np.flatnonzero(wanted & (counts == 0)):
        if counts.sum() < n:
            counts[i] = 1
    # hand the remainder to the largest fractional parts (train first on ties)
    order = np.argsort(-(n * fractions - counts), kind="stable")
    i = 0
    while counts.sum() < n:
        if wanted[order[i % 3]]:
            counts[order[i % 3]] += 1
        i += 1
    while counts.sum() > n:  # only possible after the >=1 bumps
        j = int(np.argmax(counts))
        counts[j] -= 1
    return counts.tolist()

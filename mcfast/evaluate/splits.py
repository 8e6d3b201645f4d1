"""Patient-level (group) train/validation/test splits, stratified and seeded; MIAS labels and women.

Images of one person must never be split across train and test: in MIAS the two breasts
``mdb2k-1`` and ``mdb2k`` belong to one woman, so the split is made over women.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mcfast.errors import InputError
from mcfast.io.annotations import MIAS_MASS_CLASSES

SPLIT_NAMES = ("train", "val", "test")
_MIAS_CLASSES = {"CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM"}


ABNORMAL_RULES = ("any", "mass")


def mias_classes(info_path: str | Path) -> dict[str, set]:
    """``{"mdb001": {"CIRC"}, ...}``: every class an image's ``Info.txt`` lines name."""
    info_path = Path(info_path)
    if not info_path.is_file():
        raise InputError(f"{info_path}: MIAS Info.txt not found")
    classes: dict[str, set] = {}
    for lineno, line in enumerate(info_path.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts or not re.fullmatch(r"mdb\d{3}", parts[0]):
            continue  # header prose
        if len(parts) < 3 or parts[2] not in _MIAS_CLASSES:
            raise InputError(f"{info_path}:{lineno}: expected 'mdbNNN TISSUE CLASS ...', got {line.strip()!r}")
        classes.setdefault(parts[0], set()).add(parts[2])
    if not classes:
        raise InputError(f"{info_path}: no 'mdbNNN' lines found")
    return classes


def mias_label_of(classes: set, abnormal: str = "any") -> int | None:
    """0 / 1 / None (left out) of an image with these Info.txt classes under rule ``abnormal``.

    "any": NORM = 0, anything else = 1. "mass": a mass (CIRC, SPIC, MISC) = 1, NORM = 0, and an image
    whose only abnormalities are calcifications, architectural distortion or asymmetry is left out
    (None): it is neither a mass nor normal.
    """
    if abnormal not in ABNORMAL_RULES:
        raise InputError(f"abnormal rule must be one of {', '.join(ABNORMAL_RULES)}, got {abnormal!r}")
    if abnormal == "any":
        return int(classes != {"NORM"})
    if classes & set(MIAS_MASS_CLASSES):
        return 1
    return 0 if classes == {"NORM"} else None


def mias_labels(info_path: str | Path, abnormal: str = "any") -> dict[str, int]:
    """``{"mdb001": 0|1}`` from MIAS ``Info.txt``: 0 = NORM (normal), 1 = any abnormality.

    An image with several lines is abnormal if any line names an abnormality. With
    ``abnormal="mass"`` 1 = a mass (CIRC, SPIC, MISC) and images with other abnormalities only are
    left out of the mapping (see :func:`mias_label_of`).
    """
    out = {}
    for name, cls in mias_classes(info_path).items():
        label = mias_label_of(cls, abnormal)
        if label is not None:
            out[name] = label
    return out


def mias_woman(name: str) -> int:
    """Woman index of a MIAS image name: mdb001 and mdb002 -> 1, mdb003 and mdb004 -> 2."""
    m = re.fullmatch(r"mdb(\d{3})", Path(name).stem)
    if not m:
        raise InputError(f"{name!r} is not a MIAS image name (mdbNNN)")
    return (int(m.group(1)) + 1) // 2


def group_name(group) -> str:
    """How a split group is written in configs: MIAS women (ints) as ``woman002``, anything else as is."""
    if isinstance(group, (int, np.integer)):
        return f"woman{int(group):03d}"
    return str(group)


def read_test_groups(path: str | Path) -> list[str]:
    """The held-out groups of a prepare config's ``[split] validation_patients`` (configs/mg_mias_data.toml):
    the women held out from training the shipped MIAS model are the classifier study's test women."""
    from mcfast.evaluate.config import read_toml

    raw = read_toml(path, "test_groups_from file")
    groups = raw.get("split", {}).get("validation_patients")
    if not isinstance(groups, list) or not groups or not all(isinstance(g, str) for g in groups):
        raise InputError(f"{path}: needs [split] validation_patients = [\"woman002\", ...]")
    return groups


def fixed_test_split(labels, groups, test_groups, fractions=(0.8, 0.2, 0.0), seed: int = 0,
                     strict: bool = True) -> dict[str, np.ndarray]:
    """Train/val/test indices with the test split fixed to ``test_groups`` (names as :func:`group_name`).

    The other groups are split into train and val by :func:`group_split` (stratified, seeded) in the
    ratio ``fractions[0] : fractions[1]`` (``fractions[2]`` is not used). With ``strict`` a listed
    group that no item belongs to is an error (a typo would silently move a woman out of the test set).
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    groups = np.asarray(groups).ravel()
    names = np.array([group_name(g) for g in groups], dtype=object)
    wanted = {str(g) for g in test_groups}
    if strict:
        missing = sorted(wanted - set(names.tolist()))
        if missing:
            raise InputError(f"test groups not in the data: {', '.join(missing[:8])}"
                             + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    in_test = np.isin(names, np.array(sorted(wanted), dtype=object))
    rest = np.flatnonzero(~in_test)
    f = np.asarray(fractions, dtype=np.float64)[:2]
    if f.sum() <= 0 or (f < 0).any():
        raise InputError(f"split fractions for train and val must be non-negative and not both 0, got {f.tolist()}")
    sub = group_split(labels[rest], groups[rest], (f[0] / f.sum(), f[1] / f.sum(), 0.0), seed)
    return {"train": rest[sub["train"]], "val": rest[sub["val"]], "test": np.flatnonzero(in_test)}


def configured_test_groups(data_cfg) -> list[str]:
    """The fixed test groups a ``[data]`` section names (``test_groups`` or ``test_groups_from``), else []."""
    if getattr(data_cfg, "test_groups_from", ""):
        return read_test_groups(data_cfg.test_groups_from)
    return [str(g) for g in getattr(data_cfg, "test_groups", [])]


def study_split(labels, groups, data_cfg) -> dict[str, np.ndarray]:
    """The split a study's ``[data]`` section asks for: a fixed test list (:func:`fixed_test_split`) when
    it names one, else :func:`group_split` with ``split_fractions`` and ``split_seed``."""
    test = configured_test_groups(data_cfg)
    if test:
        return fixed_test_split(labels, groups, test, data_cfg.split_fractions, data_cfg.split_seed)
    return group_split(labels, groups, data_cfg.split_fractions, data_cfg.split_seed)


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

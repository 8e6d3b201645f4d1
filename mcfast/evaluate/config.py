"""Configuration of the evaluation studies: one TOML with sections ``study``, ``data``, ``train``,
``realism``, ``memorization`` and ``synthesis`` (see configs/eval_classifier_*.toml), read into dataclasses and checked.
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from mcfast.errors import InputError
from mcfast.io.windows import WINDOWS as CT_WINDOWS

@dataclass
class DataConfig:
    dataset: str = "mias"              # "mias" | "ct" | "folder"
    root: str = "../shared/data/mias"  # MIAS folder, Lung-PET-CT-Dx patient folder, or labelled folder
    image_size: int = 128
    synthetic_dir: str = ""            # labelled folder of synthetic images ("" = none)
    split_seed: int = 0
    split_fractions: list = field(default_factory=lambda: [0.6, 0.2, 0.2])
    ct_window: str = "lung"
    # "film": the whole 1024² MIAS film shrunk; "breast": cropped to the breast, chest wall left
    # (mcfast.io.mammo.prepare_mammogram) — the framing of mcfast's synthetic mammograms.
    mg_framing: str = "film"
    ct_patch_px: int = 96              # native-resolution patch side for the CT variant
    ct_group_slices: int = 2           # consecutive slice positions that form one split group
    ct_negatives_per_positive: float = 1.5
    ct_positives_per_box: int = 3
    # MIAS label rule (mcfast.evaluate.splits.mias_label_of): "any" abnormality vs NORM, or "mass"
    # (CIRC, SPIC, MISC) vs NORM with calcification / distortion / asymmetry-only films left out.
    abnormal: str = "any"
    # A fixed test split: the groups (women "woman002", ...) listed in test_groups, or in the
    # [split] validation_patients of the TOML named by test_groups_from (configs/mg_mias_data.toml:
    # the women held out from training the shipped MIAS model). The other groups are split into
    # train / val by split_fractions[0] : split_fractions[1].
    test_groups_from: str = ""
    test_groups: list = field(default_factory=list)


CLASSIFIER_PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    model: str = "convnext_atto"
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.05
    augment: bool = True
    flip: bool = True                  # horizontal flips in the augmentation (off for chest-wall-left framing)
    # "bf16": forward passes under CPU bfloat16 autocast, weights and optimiser in float32; about
    # 1.5x faster for convnext_atto at 224² on an AVX-512-BF16 CPU. "fp32" keeps earlier studies' numerics.
    precision: str = "fp32"


@dataclass
class StudyConfig:
    name: str = "classifier_study"
    output_dir: str = "runs/eval_classifier"
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    increments: list = field(default_factory=lambda: [0.0, 0.33, 0.67, 1.0, 1.33])
    n_bootstrap: int = 1000
    ci: float = 0.95
    threads: int = 1
    # Abnormal share of the synthetic images added at every increment (a stratified pick from the
    # synthetic pool); -1 = the real training split's share, so adding images keeps the class balance.
    synthetic_abnormal_share: float = -1.0
    # Resampling of the paired test of each row against real-only (metrics.paired_bootstrap_test).
    n_paired_bootstrap: int = 2000
    # Save every (increment, seed) result in output_dir/runs/ as it finishes and skip saved ones.
    resume: bool = True
    # Also write the table, JSON and plot as report_dir/report_name.{md,json,png} (e.g. docs/results);
    # "" = only into the output folder.
    report_dir: str = ""
    report_name: str = "classifier_study"


@dataclass
class SynthesisConfig:
    """How scripts/synth_classifier_set.py makes the synthetic pool from training-split women only."""
    checkpoint: str = "mcfast/assets/mg_mias"
    recipe: str = "configs/mammo_mias512.toml"   # anatomy and mass sources replaced by the split's filters
    prepared: str = "data/mg_mias/all"           # prepared films of every woman (scripts/prepare_real.py)
    image_size: int = 512                        # sampled at this size, resized to data.image_size
    n_abnormal: int = 0                          # synthetic images with one placed mass
    n_normal: int = 0                            # synthetic images without a lesion
    anatomy: str = "normal"                      # anatomy films: "normal" (NORM films only) or "all"
    seed: int = 0
    precision: str = "bf16"
    batch_size: int = 2


@dataclass
class RealismConfig:
    model: str = "convnext_atto"
    epochs: int = 8
    batch_size: int = 16
    lr: float = 1e-3
    test_fraction: float = 0.5
    seed: int = 0
    feature_epochs: int = 20           # autoencoder epochs for the Fréchet features
    msssim_pairs: int = 200


@dataclass
class MemorizationConfig:
    max_shift: int = 8                 # pixels, at image_size
    threshold: float = 0.95            # NCC above which a pair is flagged
    highpass_sigma: float = 0.0        # > 0: compare image − Gaussian blur (texture, not silhouette)
    top_k: int = 8
    reference: str = "all"             # "all" real images or only the "train" split


@dataclass
class EvalConfig:
    study: StudyConfig = field(default_factory=StudyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    realism: RealismConfig = field(default_factory=RealismConfig)
    memorization: MemorizationConfig = field(default_factory=MemorizationConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _fill(cls, values: dict, where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    obj = cls()
    for key, value in values.items():
        default = getattr(obj, key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise InputError(f"{where}.{key}: expected true/false, got {value!r}")
        elif isinstance(default, (int, float)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InputError(f"{where}.{key}: expected a number, got {value!r}")
            if isinstance(default, int):
                if not float(value).is_integer():
                    raise InputError(f"{where}.{key}: expected an integer, got {value!r}")
                value = int(value)
            else:
                value = float(value)
        if isinstance(default, str) and not isinstance(value, str):
            raise InputError(f"{where}.{key}: expected a string, got {value!r}")
        if isinstance(default, list) and not isinstance(value, list):
            raise InputError(f"{where}.{key}: expected a list, got {value!r}")
        setattr(obj, key, value)
    return obj


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """The TOML file at ``path`` as a dict; a missing or unparsable file is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: invalid TOML ({' '.join(str(exc).split())})") from None


def config_from_toml(cls, path: str | Path):
    """A config dataclass ``cls`` whose fields are section dataclasses, filled from the TOML at ``path``:
    unknown sections or keys, a section that is not a table and a value of the wrong kind are one line."""
    raw = read_toml(path)
    sections = [f.name for f in fields(cls)]
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise InputError(f"{path}: unknown section(s) {', '.join(unknown)}; known: {', '.join(sections)}")
    for name in sections:
        if not isinstance(raw.get(name, {}), dict):
            raise InputError(f"{path}: [{name}] must be a table")
    defaults = cls()
    return cls(**{name: _fill(type(getattr(defaults, name)), raw.get(name, {}), f"{path}[{name}]")
                  for name in sections})


def load_config(path: str | Path) -> EvalConfig:
    """Read an evaluation TOML (sections ``study``, ``data``, ``train``, ``realism``, ``memorization``,
    ``synthesis``)."""
    cfg = config_from_toml(EvalConfig, path)
    validate_config(cfg, str(path))
    return cfg


def validate_config(cfg: EvalConfig, where: str = "config") -> None:
    d, s, t = cfg.data, cfg.study, cfg.train
    if d.dataset not in ("mias", "ct", "folder"):
        raise InputError(f"{where}: data.dataset must be 'mias', 'ct' or 'folder', got {d.dataset!r}")
    if d.image_size < 8:
        raise InputError(f"{where}: data.image_size must be >= 8, got {d.image_size}")
    if d.mg_framing not in ("film", "breast"):
        raise InputError(f"{where}: data.mg_framing must be 'film' or 'breast', got {d.mg_framing!r}")
    if d.ct_window not in CT_WINDOWS:
        raise InputError(f"{where}: data.ct_window must be one of {sorted(CT_WINDOWS)}, got {d.ct_window!r}")
    if not s.seeds or any(not isinstance(x, int) for x in s.seeds):
        raise InputError(f"{where}: study.seeds must be a non-empty list of integers, got {s.seeds!r}")
    if not s.increments or any(not isinstance(x, (int, float)) or x < 0 for x in s.increments):
        raise InputError(f"{where}: study.increments must be non-negative numbers, got {s.increments!r}")
    if t.epochs < 1 or t.batch_size < 1 or t.lr <= 0:
        raise InputError(f"{where}: train.epochs, train.batch_size and train.lr must be positive")
    if t.precision not in CLASSIFIER_PRECISIONS:
        raise InputError(f"{where}: train.precision must be one of {', '.join(CLASSIFIER_PRECISIONS)}, "
                         f"got {t.precision!r}")
    if d.abnormal not in ("any", "mass"):
        raise InputError(f"{where}: data.abnormal must be 'any' or 'mass', got {d.abnormal!r}")
    if d.test_groups_from and d.test_groups:
        raise InputError(f"{where}: give data.test_groups_from or data.test_groups, not both")
    if any(not isinstance(g, str) for g in d.test_groups):
        raise InputError(f"{where}: data.test_groups must be strings (e.g. \"woman002\")")
    if (d.test_groups_from or d.test_groups) and not sum(d.split_fractions[:2]) > 0:
        raise InputError(f"{where}: with a fixed test split, split_fractions[0:2] give the train : val ratio")
    if not (s.synthetic_abnormal_share == -1 or 0 <= s.synthetic_abnormal_share <= 1):
        raise InputError(f"{where}: study.synthetic_abnormal_share must be in [0, 1] or -1 (the real share)")
    if not s.report_name or any(c in s.report_name for c in "/\\"):
        raise InputError(f"{where}: study.report_name must be a file stem without folders, got {s.report_name!r}")
    if s.n_paired_bootstrap < 1:
        raise InputError(f"{where}: study.n_paired_bootstrap must be >= 1")
    y = cfg.synthesis
    if y.n_abnormal < 0 or y.n_normal < 0 or y.image_size < 8:
        raise InputError(f"{where}: synthesis.n_abnormal / n_normal must be >= 0 and image_size >= 8")
    if y.anatomy not in ("normal", "all"):
        raise InputError(f"{where}: synthesis.anatomy must be 'normal' or 'all', got {y.anatomy!r}")
    if cfg.memorization.highpass_sigma < 0 or cfg.memorization.max_shift < 0:
        raise InputError(f"{where}: memorization.highpass_sigma and max_shift must be >= 0")
    if cfg.memorization.reference not in ("all", "train"):
        raise InputError(f"{where}: memorization.reference must be 'all' or 'train'")
    if not 0 < cfg.realism.test_fraction < 1:
        raise InputError(f"{where}: realism.test_fraction must be in (0, 1)")

"""Lung-CT segmentation study: does adding mcfast's annotated synthetic crops help a tumour segmenter?

A MONAI 2-D U-Net (``monai.networks.nets.BasicUNet``, ``monai.losses.DiceLoss``) is trained on real
annotated crops (MSD lung-tumour patches, split by case), then on real plus synthetic crops adding
+33 %, +67 %, +100 %, +133 % of the real training count (the paper's schedule), for several seeds, the
real-only row in the same job. Measured on the held-out real cases: Dice (``monai.metrics.DiceMetric``)
and lesion-level sensitivity (rule fixed in ``[metrics]``), with bootstrap intervals over held-out
cases and a paired test of each row against real-only (:mod:`mcfast.evaluate.segmentation_report`).
Data and the synthetic cache: :mod:`mcfast.evaluate.segmentation_data`. Every (row, seed) is saved
atomically as it finishes; a re-run skips finished ones. Config: ``configs/eval_segmentation_ct.toml``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from mcfast.errors import InputError
from mcfast.evaluate.config import config_from_toml
from mcfast.evaluate.segmentation_data import SegCrops
from mcfast.evaluate.splits import SPLIT_NAMES, group_split

FOUND_RULES = ("overlap", "iou")
LOSSES = ("dice", "dice_ce")
LESION_SOURCES = ("msd", "lidc")


# --------------------------------------------------------------------------- configuration
@dataclass
class SegStudyConfig:
    name: str = "Lung CT tumour segmentation, real vs real + synthetic"
    output_dir: str = "runs/eval_segmentation_ct"      # per-(row, seed) results (resumable)
    report_dir: str = "docs/results"                   # the JSON, table and plot
    report_name: str = "segmentation_ct"
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    increments: list = field(default_factory=lambda: [0.0, 0.33, 0.67, 1.0, 1.33])
    n_bootstrap: int = 1000
    ci: float = 0.95
    threads: int = 1


@dataclass
class SegDataConfig:
    msd_path: str = "../shared/data/msd-lung-patches/val_patches.h5"
    image_size: int = 48
    window: str = "lung"
    case_block: int = 10                # consecutive MSD patches of one case
    case_merge_fraction: float = 0.5    # merge blocks whose patches mostly resemble another block (0 = never)
    split_seed: int = 0
    split_fractions: list = field(default_factory=lambda: [0.6, 0.0, 0.4])


@dataclass
class SegSynthesisConfig:
    ckpt: str = "mcfast/assets/ct_real"
    anatomy: str = "data/ct_real/train"  # prepared training split of the CT model's patients
    cache_dir: str = "runs/eval_segmentation_ct/synthetic"
    image_size: int = 256
    crop_px: int = 68
    lesions_per_slice: int = 2
    lesion_size: list = field(default_factory=lambda: [14, 34])
    min_overlap: float = 0.7
    lesion_sources: list = field(default_factory=lambda: ["msd", "lidc"])
    lidc_root: str = "../shared/data/lidc-nodule-slices"
    method: str = "ddim"
    eta: float = 0.5
    x0_guidance: bool = True
    fast_calls: int = 10                 # > 0: respacing that makes this many calls from start_step; 0: steps
    steps: str = "50"
    start_step: int = 500
    anatomy_factor: int = 4
    anatomy_stop_step: int = 100
    batch_size: int = 4
    seed: int = 0


@dataclass
class SegTrainConfig:
    model: str = "basic_unet"
    features: list = field(default_factory=lambda: [16, 16, 32, 64, 128, 16])
    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: str = "dice"
    augment: bool = True                 # flips and 90° rotations


@dataclass
class SegMetricsConfig:
    threshold: float = 0.5               # sigmoid probability → mask
    found_rule: str = "iou"              # "overlap": >= min_overlap_px shared pixels; "iou": IoU > iou_threshold
    min_overlap_px: int = 1
    iou_threshold: float = 0.1
    connectivity: int = 2                # lesions = connected components (1: 4-, 2: 8-neighbourhood)


@dataclass
class SegConfig:
    study: SegStudyConfig = field(default_factory=SegStudyConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    synthesis: SegSynthesisConfig = field(default_factory=SegSynthesisConfig)
    train: SegTrainConfig = field(default_factory=SegTrainConfig)
    metrics: SegMetricsConfig = field(default_factory=SegMetricsConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def load_segmentation_config(path: str | Path) -> SegConfig:
    """Read a segmentation-study TOML (sections study, data, synthesis, train, metrics) and check it."""
    cfg = config_from_toml(SegConfig, path)
    validate_segmentation_config(cfg, str(path))
    return cfg


def validate_segmentation_config(cfg: SegConfig, where: str = "config") -> None:
    from mcfast.io.windows import WINDOWS

    s, d, y, t, m = cfg.study, cfg.data, cfg.synthesis, cfg.train, cfg.metrics

    def fail(msg):
        raise InputError(f"{where}: {msg}")

    if not s.seeds or any(not isinstance(x, int) or isinstance(x, bool) for x in s.seeds) or len(set(s.seeds)) < len(s.seeds):
        fail(f"study.seeds must be a non-empty list of distinct integers, got {s.seeds!r}")
    if not s.increments or any(not isinstance(x, (int, float)) or isinstance(x, bool) or x < 0 for x in s.increments):
        fail(f"study.increments must be non-negative numbers, got {s.increments!r}")
    if 0 not in [float(x) for x in s.increments]:
        fail("study.increments must include 0 (the real-only row every other row is compared with)")
    if s.n_bootstrap < 1 or not 0 < s.ci < 1 or s.threads < 1:
        fail("study.n_bootstrap and study.threads must be >= 1 and study.ci in (0, 1)")
    if d.image_size < 16 or d.image_size % 16:
        fail(f"data.image_size must be a multiple of 16 (the U-Net halves it 4 times), got {d.image_size}")
    if d.window not in WINDOWS:
        fail(f"data.window must be one of {', '.join(sorted(WINDOWS))}, got {d.window!r}")
    if d.case_block < 1 or not 0 <= d.case_merge_fraction <= 1:
        fail("data.case_block must be >= 1 and data.case_merge_fraction in [0, 1]")
    fr = d.split_fractions
    if (len(fr) != 3 or any(not isinstance(x, (int, float)) or x < 0 for x in fr) or not math.isclose(sum(fr), 1.0)
            or fr[0] <= 0 or fr[2] <= 0):
        fail(f"data.split_fractions must be [train, val, test] >= 0 summing to 1 with train, test > 0, got {fr!r}")
    if y.crop_px < 8 or y.crop_px > y.image_size or y.lesions_per_slice < 1:
        fail("synthesis.crop_px must be in [8, synthesis.image_size] and synthesis.lesions_per_slice >= 1")
    if len(y.lesion_size) != 2 or not all(isinstance(v, int) and v >= 3 for v in y.lesion_size) or y.lesion_size[0] > y.lesion_size[1]:
        fail(f"synthesis.lesion_size must be [min, max] integers >= 3, got {y.lesion_size!r}")
    if not y.lesion_sources or any(v not in LESION_SOURCES for v in y.lesion_sources):
        fail(f"synthesis.lesion_sources must be a non-empty list of {', '.join(LESION_SOURCES)}, got {y.lesion_sources!r}")
    if y.fast_calls < 0 or not 1 <= y.start_step <= 1000:
        fail("synthesis.fast_calls must be >= 0 and synthesis.start_step in [1, 1000]")
    if t.model != "basic_unet":
        fail(f"train.model must be 'basic_unet', got {t.model!r}")
    if len(t.features) != 6 or any(not isinstance(v, int) or v < 1 for v in t.features):
        fail(f"train.features must be 6 positive integers (BasicUNet), got {t.features!r}")
    if t.epochs < 1 or t.batch_size < 1 or t.lr <= 0 or t.weight_decay < 0:
        fail("train.epochs, train.batch_size and train.lr must be positive, train.weight_decay >= 0")
    if t.loss not in LOSSES:
        fail(f"train.loss must be one of {', '.join(LOSSES)}, got {t.loss!r}")
    if not 0 < m.threshold < 1 or m.found_rule not in FOUND_RULES or m.min_overlap_px < 1:
        fail(f"metrics.threshold must be in (0, 1), metrics.found_rule one of {', '.join(FOUND_RULES)}, "
             "metrics.min_overlap_px >= 1")
    if not 0 <= m.iou_threshold < 1 or m.connectivity not in (1, 2):
        fail("metrics.iou_threshold must be in [0, 1) and metrics.connectivity 1 or 2")


def _monai(what: str):
    from mcfast.extras import require

    return require(what, extra="eval", feature="the segmentation study")


# --------------------------------------------------------------------------- model and training
def create_segmenter(t: SegTrainConfig, seed: int) -> torch.nn.Module:
    nets = _monai("monai.networks.nets")
    with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()):  # BasicUNet prints
        torch.manual_seed(seed)
        return nets.BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=tuple(t.features))


def _augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random flips and 90° rotation on each image and its mask."""
    xs, ys = [], []
    for xi, yi, (fh, fv, k) in zip(x, y, torch.stack([torch.randint(0, 2, (len(x),), generator=g),
                                                      torch.randint(0, 2, (len(x),), generator=g),
                                                      torch.randint(0, 4, (len(x),), generator=g)], 1).tolist()):
        dims = [d for d, f in ((-1, fh), (-2, fv)) if f]
        if dims:
            xi, yi = xi.flip(dims), yi.flip(dims)
        xs.append(torch.rot90(xi, k, (-2, -1)))
        ys.append(torch.rot90(yi, k, (-2, -1)))
    return torch.stack(xs), torch.stack(ys)


def train_segmenter(images: np.ndarray, masks: np.ndarray, t: SegTrainConfig, seed: int,
                    say: Callable[[str], None] | None = None) -> tuple[torch.nn.Module, list]:
    """AdamW + cosine decay on a MONAI Dice (or Dice + BCE) loss, fixed epochs (no selection on held-out data)."""
    losses = _monai("monai.losses")
    g = torch.Generator().manual_seed(seed)
    model = create_segmenter(t, seed)
    loss_fn = (losses.DiceLoss(sigmoid=True, batch=True) if t.loss == "dice"
               else losses.DiceCELoss(sigmoid=True, batch=True))
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs * math.ceil(len(images) / t.batch_size))
    x_all = torch.from_numpy(np.ascontiguousarray(images)).float()[:, None]
    y_all = torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None]
    history = []
    for epoch in range(t.epochs):
        model.train()
        order = torch.randperm(len(x_all), generator=g)
        total = 0.0
        for i in range(0, len(order), t.batch_size):
            idx = order[i:i + t.batch_size]
            x, y = (_augment(x_all[idx], y_all[idx], g) if t.augment else (x_all[idx], y_all[idx]))
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(round(total / len(x_all), 5))
        if say:
            say(f"  epoch {epoch + 1}/{t.epochs}: loss {history[-1]:.4f}")
    return model, history


@torch.no_grad()
def predict_masks(model: torch.nn.Module, images: np.ndarray, threshold: float, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = [(torch.sigmoid(model(torch.from_numpy(images[i:i + batch_size]).float()[:, None]))[:, 0] > threshold).numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.uint8) if out else np.zeros((0,) + images.shape[1:], np.uint8)


# --------------------------------------------------------------------------- metrics
def dice_per_image(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """MONAI ``DiceMetric`` per image of binary (N, H, W) masks; NaN where the truth is empty."""
    metrics = _monai("monai.metrics")
    metric = metrics.DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    p = torch.from_numpy(np.asarray(pred) > 0).float()[:, None]
    t = torch.from_numpy(np.asarray(truth) > 0).float()[:, None]
    return metric(p, t).numpy()[:, 0].astype(np.float64)


def lesion_detection(pred: np.ndarray, truth: np.ndarray, m: SegMetricsConfig) -> list[dict]:
    """Per image: each true lesion (connected component) found or not, its IoU with the predicted
    components touching it, and the number of predicted components touching no lesion (false positives)."""
    structure = ndimage.generate_binary_structure(2, m.connectivity)
    out = []
    for p, t in zip(np.asarray(pred) > 0, np.asarray(truth) > 0):
        lab_t, n_t = ndimage.label(t, structure)
        lab_p, n_p = ndimage.label(p, structure)
        found, ious = [], []
        for k in range(1, n_t + 1):
            lesion = lab_t == k
            touching = np.setdiff1d(np.unique(lab_p[lesion]), [0])
            predicted = np.isin(lab_p, touching) if touching.size else np.zeros_like(lesion)
            inter = int((lesion & p).sum())
            iou = float((lesion & predicted).sum() / (lesion | predicted).sum())
            ious.append(round(iou, 4))
            found.append(bool(inter >= m.min_overlap_px) if m.found_rule == "overlap" else bool(iou > m.iou_threshold))
        hit_components = np.unique(lab_p[t])
        fp = int(n_p - np.count_nonzero(hit_components))
        out.append({"found": found, "iou": ious, "false_positives": fp})
    return out


# --------------------------------------------------------------------------- the study
def split_real(cfg: SegConfig, real: SegCrops) -> dict[str, np.ndarray]:
    """Train/val/test indices by case (group), from data.split_seed; every case lies in one split."""
    labels = real.masks.reshape(len(real), -1).any(1).astype(int)
    sp = group_split(labels, real.groups, cfg.data.split_fractions, cfg.data.split_seed)
    for a in SPLIT_NAMES:
        for b in SPLIT_NAMES:
            if a < b and set(real.groups[sp[a]]) & set(real.groups[sp[b]]):
                raise AssertionError(f"{a} and {b} share a case")  # group_split guarantees it
    if not sp["train"].size or not sp["test"].size:
        raise InputError(f"{len(set(real.groups.tolist()))} cases are too few for split {cfg.data.split_fractions}")
    return sp


def n_synthetic_rows(cfg: SegConfig, n_real_train: int) -> dict[float, int]:
    return {float(inc): int(round(float(inc) * n_real_train)) for inc in sorted(cfg.study.increments)}


def study_fingerprint(cfg: SegConfig, train: SegCrops, test: SegCrops, synthetic: SegCrops | None) -> str:
    """What a saved (row, seed) result depends on: a changed setting or split never reuses it."""
    d = cfg.to_dict()
    d["synthesis"].pop("cache_dir")
    src = {k: d[k] for k in ("data", "synthesis", "train", "metrics")}
    src.update(train_crops=list(train.names), test_crops=list(test.names),
               synthetic_crops=None if synthetic is None else list(synthetic.names))
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()[:16]


def run_file(out_dir: Path, inc: float, seed: int) -> Path:
    return Path(out_dir) / "runs" / f"inc{inc:.2f}_seed{seed}.json"


def run_segmentation_study(cfg: SegConfig, real: SegCrops, synthetic: SegCrops | None, out_dir: str | Path,
                           say: Callable[[str], None] = lambda m: None, progress: bool = True,
                           verbose: bool = False) -> Path:
    """Train and evaluate every pending (increment, seed), saving each result as it finishes; returns
    the folder of results (``study.json`` + ``runs/*.json``) that :mod:`segmentation_report` reads."""
    from tqdm import tqdm

    from mcfast.atomic import write_text
    from mcfast.evaluate.classifier import choose_synthetic

    out_dir = Path(out_dir)
    sp = split_real(cfg, real)
    train, test = real.subset(sp["train"]), real.subset(sp["test"])
    wanted = n_synthetic_rows(cfg, len(train))
    if synthetic is not None and len(synthetic) < max(wanted.values()):
        say(f"only {len(synthetic)} synthetic crops for up to {max(wanted.values())}: larger rows are capped")
    fp = study_fingerprint(cfg, train, test, synthetic)
    jobs = []
    for inc, n_syn in wanted.items():
        for seed in cfg.study.seeds:
            path = run_file(out_dir, inc, seed)
            if path.is_file():
                old = json.loads(path.read_text())
                if old.get("fingerprint") != fp:
                    raise InputError(f"{path}: a result of another configuration or split; use another "
                                     "study.output_dir (or --output) to keep both")
                continue
            if n_syn > 0 and synthetic is None:
                continue  # reported as pending
            jobs.append((inc, n_syn, seed, path))
    write_text(out_dir / "study.json", json.dumps({
        "fingerprint": fp, "config": cfg.to_dict(),
        "splits": {k: {"n": int(sp[k].size), "cases": sorted(set(real.groups[sp[k]].tolist())),
                       "with_tumour": int(sum(bool(m.any()) for m in real.masks[sp[k]]))} for k in SPLIT_NAMES},
        "test_names": test.names, "test_groups": test.groups.tolist(),
        "synthetic_available": 0 if synthetic is None else len(synthetic)}, indent=1))
    say(f"{len(jobs)} run(s) to do, {len(wanted) * len(cfg.study.seeds) - len(jobs)} finished or pending")
    for inc, n_syn, seed, path in tqdm(jobs, desc="segmentation runs", unit="run", disable=not progress):
        t0 = time.time()
        pick = choose_synthetic(synthetic, n_syn, seed) if n_syn > 0 else np.zeros(0, np.int64)
        x = np.concatenate([train.images] + ([synthetic.images[pick]] if pick.size else []))
        y = np.concatenate([train.masks] + ([synthetic.masks[pick]] if pick.size else []))
        model, history = train_segmenter(x, y, cfg.train, seed, say if verbose else None)
        pred = predict_masks(model, test.images, cfg.metrics.threshold)
        dice = dice_per_image(pred, test.masks)
        write_text(path, json.dumps({
            "fingerprint": fp, "increment": inc, "seed": seed, "n_real_train": len(train),
            "n_synthetic_wanted": n_syn, "n_synthetic": int(pick.size),
            "dice": [None if not np.isfinite(v) else round(float(v), 6) for v in dice],
            "lesions": lesion_detection(pred, test.masks, cfg.metrics),
            "train_loss": history, "elapsed_s": round(time.time() - t0, 1)}))
    return out_dir


def run_study_command(config: str | Path, output: Path | None = None, report_dir: Path | None = None,
                      report_only: bool = False, threads: int | None = None, verbose: bool = False,
                      argv: list | None = None, progress: bool = True) -> int:
    """``mcfast evaluate segmentation``: real crops, the (cached) synthetic pool, pending runs, the report."""
    import sys

    from mcfast.evaluate.classifier import machine_info
    from mcfast.evaluate.segmentation_data import load_msd_crops, synthetic_pool
    from mcfast.evaluate.segmentation_report import table_markdown, write_report

    def say(msg: str) -> None:
        if verbose or not msg.startswith("  "):
            print(msg, file=sys.stderr, flush=True)

    cfg = load_segmentation_config(config)
    out = Path(output or cfg.study.output_dir)
    if not report_only:
        torch.set_num_threads(threads or cfg.study.threads)
        d = cfg.data
        real = load_msd_crops(d.msd_path, d.image_size, d.window, d.case_block, d.case_merge_fraction)
        sp = split_real(cfg, real)
        say(f"real: {len(real)} crops of {len(set(real.groups.tolist()))} cases; train {sp['train'].size} "
            f"({len(set(real.groups[sp['train']].tolist()))} cases), test {sp['test'].size} "
            f"({len(set(real.groups[sp['test']].tolist()))} cases)")
        n_needed = max(n_synthetic_rows(cfg, int(sp["train"].size)).values())
        synthetic = synthetic_pool(cfg.data, cfg.synthesis, sp["train"], n_needed, say) if n_needed > 0 else None
        t0 = time.time()
        run_segmentation_study(cfg, real, synthetic, out, say, progress=progress, verbose=verbose)
        say(f"runs finished in {time.time() - t0:.0f} s")
    paths = write_report(out, report_dir, extra={"argv": argv or [], "machine": machine_info()})
    print(table_markdown(json.loads(paths["json"].read_text())))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0

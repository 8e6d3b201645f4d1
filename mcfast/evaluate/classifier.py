"""Classifier augmentation study (the paper's Table 1): real-only vs real + synthetic increments.

A timm ConvNeXt (``pretrained=False``, ``in_chans=1``, one logit) is trained on real images,
then on real plus synthetic images adding +33 %, +67 %, +100 %, +133 % of the real training
count, for several seeds; AUC and F1 (threshold chosen on validation) with stratified
bootstrap intervals are measured on the real test set. Splits are made per patient/woman
(:mod:`mcfast.evaluate.splits`). The configuration is :mod:`mcfast.evaluate.config`, the images
:mod:`mcfast.evaluate.data`.
"""
from __future__ import annotations

import copy
import json
import math
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mcfast.errors import InputError
from mcfast.evaluate.config import EvalConfig, TrainConfig
from mcfast.evaluate.data import LabeledImages, read_provenance
from mcfast.evaluate.metrics import best_f1_threshold, bootstrap_interval, f1_score, roc_auc
from mcfast.evaluate.splits import SPLIT_NAMES, group_split

# --------------------------------------------------------------------------- training
def create_classifier(name: str, seed: int) -> torch.nn.Module:
    """A timm model from scratch (no downloaded weights), one input channel, one logit."""
    import timm

    try:
        with torch.random.fork_rng(devices=[]):  # timm initialises from the global RNG
            torch.manual_seed(seed)
            return timm.create_model(name, pretrained=False, in_chans=1, num_classes=1)
    except RuntimeError as exc:
        raise InputError(f"model {name!r}: {exc}") from None


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and small translations (reflect-padded), per image."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = max(1, x.shape[-1] // 16)
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    out = torch.empty_like(x)
    shifts = torch.randint(0, 2 * pad + 1, (x.shape[0], 2), generator=g)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = xp[i, :, dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
    return out


@torch.no_grad()
def predict_scores(model: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Sigmoid probabilities of the positive class for (N, H, W) model-space images."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).float()[:, None]
        out.append(torch.sigmoid(model(x)[:, 0]).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def train_binary_classifier(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None,
                            y_val: np.ndarray | None, settings: TrainConfig, seed: int,
                            progress: Callable[[str], None] | None = None) -> tuple[torch.nn.Module, dict]:
    """Train ``settings.model`` with AdamW + cosine decay and class-balanced BCE.

    With validation data, the weights of the epoch with the best validation AUC are kept
    (the first best on ties). Returns the model and a history dict.
    """
    if len(np.unique(y_train)) < 2:
        raise InputError("training set needs both classes")
    g = torch.Generator().manual_seed(seed)
    model = create_classifier(settings.model, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(y_train) / settings.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs * steps_per_epoch)
    n_pos = float(y_train.sum())
    pos_weight = torch.tensor([(len(y_train) - n_pos) / n_pos])
    x_all = torch.from_numpy(x_train).float()[:, None]
    y_all = torch.from_numpy(y_train).float()
    history = {"train_loss": [], "val_auc": [], "best_epoch": None}
    best_auc, best_state = -1.0, None
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(y_all), generator=g)
        total = 0.0
        for i in range(0, len(order), settings.batch_size):
            idx = order[i:i + settings.batch_size]
            x = _augment(x_all[idx], g) if settings.augment else x_all[idx]
            loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y_all[idx], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history["train_loss"].append(total / len(y_all))
        if x_val is not None and len(x_val):
            auc = roc_auc(y_val, predict_scores(model, x_val))
            history["val_auc"].append(auc)
            if np.isfinite(auc) and auc > best_auc:
                best_auc, best_state = auc, copy.deepcopy(model.state_dict())
                history["best_epoch"] = epoch + 1
        if progress:
            va = f", val AUC {history['val_auc'][-1]:.3f}" if history["val_auc"] else ""
            progress(f"  epoch {epoch + 1}/{settings.epochs}: loss {history['train_loss'][-1]:.4f}{va}")
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        history["best_epoch"] = settings.epochs
    return model, history


# --------------------------------------------------------------------------- the study
def choose_synthetic(synthetic: LabeledImages, n: int, seed: int) -> np.ndarray:
    """The first ``n`` of a seeded permutation: increments are nested (+33 % ⊂ +67 % ⊂ ...)."""
    order = np.random.default_rng(seed).permutation(len(synthetic))
    return order[:min(n, len(synthetic))]


def run_classifier_study(cfg: EvalConfig, real: LabeledImages, synthetic: LabeledImages | None,
                         progress: Callable[[str], None] | None = None) -> dict:
    """Train and evaluate every (increment, seed); return the results dict (see docs/evaluation.md)."""
    t0 = time.time()
    say = progress or (lambda msg: None)
    splits = group_split(real.labels, real.groups, cfg.data.split_fractions, cfg.data.split_seed)
    tr, va, te = (real.subset(splits[k]) for k in SPLIT_NAMES)
    for name, part in zip(SPLIT_NAMES, (tr, va, te)):
        if len(np.unique(part.labels)) < 2:
            raise InputError(f"{name} split has only one class ({len(part)} images); use more data or other fractions")
    increments = sorted(float(x) for x in cfg.study.increments)
    rows, skipped = [], []
    for inc in increments:
        n_syn_wanted = int(round(inc * len(tr)))
        if n_syn_wanted > 0 and synthetic is None:
            skipped.append({"increment": inc, "reason": "no synthetic_dir given"})
            continue
        seed_results, test_scores = [], []
        for seed in cfg.study.seeds:
            say(f"increment +{inc:.0%} ({n_syn_wanted} synthetic), seed {seed}")
            if n_syn_wanted > 0:
                pick = choose_synthetic(synthetic, n_syn_wanted, seed)
                x_train = np.concatenate([tr.images, synthetic.images[pick]])
                y_train = np.concatenate([tr.labels, synthetic.labels[pick]])
            else:
                pick = np.zeros(0, dtype=np.int64)
                x_train, y_train = tr.images, tr.labels
            model, hist = train_binary_classifier(x_train, y_train, va.images, va.labels, cfg.train, seed, say)
            val_scores = predict_scores(model, va.images)
            threshold = best_f1_threshold(va.labels, val_scores)
            scores = predict_scores(model, te.images)
            test_scores.append(scores)
            y = te.labels
            auc_lo, auc_hi = bootstrap_interval(lambda i: roc_auc(y[i], scores[i]), y,
                                                cfg.study.n_bootstrap, cfg.study.ci, seed)
            f1_lo, f1_hi = bootstrap_interval(lambda i: f1_score(y[i], scores[i] >= threshold), y,
                                              cfg.study.n_bootstrap, cfg.study.ci, seed)
            seed_results.append({
                "seed": seed, "n_synthetic": int(pick.size),
                "n_synthetic_abnormal": int(synthetic.labels[pick].sum()) if pick.size else 0,
                "auc": roc_auc(y, scores), "auc_lo": auc_lo, "auc_hi": auc_hi,
                "f1": f1_score(y, scores >= threshold), "f1_lo": f1_lo, "f1_hi": f1_hi,
                "threshold": threshold, "best_epoch": hist["best_epoch"],
                "val_auc": max(hist["val_auc"]) if hist["val_auc"] else None,
                "train_loss": hist["train_loss"], "test_scores": [round(float(s), 6) for s in scores],
            })
        rows.append(_aggregate(inc, len(tr), n_syn_wanted, seed_results, test_scores, te.labels, cfg))
    return {
        "name": cfg.study.name,
        "config": cfg.to_dict(),
        "splits": {k: {"n": int(len(p)), "abnormal": int(p.labels.sum()), "groups": int(len(set(p.groups.tolist())))}
                   for k, p in zip(SPLIT_NAMES, (tr, va, te))},
        "test_names": te.names,
        "test_labels": te.labels.tolist(),
        "synthetic_available": 0 if synthetic is None else len(synthetic),
        "rows": rows,
        "skipped": skipped,
        "provenance": read_provenance(cfg.data.synthetic_dir),
        "machine": machine_info(),
        "elapsed_s": round(time.time() - t0, 1),
    }


def _aggregate(inc, n_real, n_wanted, seed_results, test_scores, y, cfg) -> dict:
    """Mean over seeds; the interval is the bootstrap (over test images) of the seed-mean metric."""
    thresholds = [r["threshold"] for r in seed_results]

    def mean_auc(idx):
        return float(np.mean([roc_auc(y[idx], s[idx]) for s in test_scores]))

    def mean_f1(idx):
        return float(np.mean([f1_score(y[idx], s[idx] >= t) for s, t in zip(test_scores, thresholds)]))

    auc_lo, auc_hi = bootstrap_interval(mean_auc, y, cfg.study.n_bootstrap, cfg.study.ci, 12345)
    f1_lo, f1_hi = bootstrap_interval(mean_f1, y, cfg.study.n_bootstrap, cfg.study.ci, 12345)
    aucs = np.array([r["auc"] for r in seed_results])
    f1s = np.array([r["f1"] for r in seed_results])
    n_syn = int(np.mean([r["n_synthetic"] for r in seed_results]))
    return {
        "increment": inc, "n_real_train": n_real, "n_synthetic_wanted": n_wanted, "n_synthetic": n_syn,
        "capped": n_syn < n_wanted, "synthetic_share": n_syn / (n_real + n_syn),
        "auc_mean": float(aucs.mean()), "auc_std": float(aucs.std(ddof=1)) if aucs.size > 1 else 0.0,
        "auc_lo": auc_lo, "auc_hi": auc_hi,
        "f1_mean": float(f1s.mean()), "f1_std": float(f1s.std(ddof=1)) if f1s.size > 1 else 0.0,
        "f1_lo": f1_lo, "f1_hi": f1_hi,
        "seeds": seed_results,
    }


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    import os

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_name(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available(), "python": platform.python_version()}


def results_table_markdown(results: dict) -> str:
    """The study table in markdown (one row per increment; mean over seeds, bootstrap interval)."""
    ci = int(round(results["config"]["study"]["ci"] * 100))
    seeds = results["config"]["study"]["seeds"]
    lines = [f"| synthetic added | real train | synthetic | share | AUC mean ± sd | AUC {ci}% CI | F1 mean ± sd | F1 {ci}% CI |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        cap = " (capped)" if r["capped"] else ""
        lines.append(f"| +{r['increment']:.0%} | {r['n_real_train']} | {r['n_synthetic']}{cap} | "
                     f"{r['synthetic_share']:.2f} | {r['auc_mean']:.3f} ± {r['auc_std']:.3f} | "
                     f"[{r['auc_lo']:.3f}, {r['auc_hi']:.3f}] | {r['f1_mean']:.3f} ± {r['f1_std']:.3f} | "
                     f"[{r['f1_lo']:.3f}, {r['f1_hi']:.3f}] |")
    for s in results["skipped"]:
        lines.append(f"| +{s['increment']:.0%} | – | – | – | pending: {s['reason']} | | | |")
    sp = results["splits"]
    lines.append("")
    lines.append(f"Seeds {seeds}; test set {sp['test']['n']} images ({sp['test']['abnormal']} abnormal, "
                 f"{sp['test']['groups']} split groups); intervals: stratified bootstrap over test images of the "
                 f"seed-mean metric ({results['config']['study']['n_bootstrap']} resamples). "
                 "F1 at the threshold that maximised F1 on the validation split.")
    return "\n".join(lines) + "\n"


def write_results(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """results.json, table.md, auc_vs_synthetic.png and the synthetic provenance copy."""
    from mcfast.atomic import write_text
    from mcfast.evaluate.plots import plot_auc_vs_share

    out = Path(out_dir)
    paths = {"json": out / "results.json", "table": out / "table.md", "plot": out / "auc_vs_synthetic.png"}
    write_text(paths["json"], json.dumps(results, indent=1))
    write_text(paths["table"], f"# {results['name']}\n\n" + results_table_markdown(results))
    plot_auc_vs_share(results, paths["plot"])
    if results.get("provenance"):
        paths["provenance"] = out / "synthetic_provenance.json"
        write_text(paths["provenance"], json.dumps(results["provenance"]["content"], indent=1))
    return paths

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
from mcfast.evaluate.metrics import (best_f1_threshold, bootstrap_interval, f1_score, paired_bootstrap_test,
                                     roc_auc)
from mcfast.evaluate.splits import SPLIT_NAMES, group_name, study_split

# --------------------------------------------------------------------------- training
def create_classifier(name: str, seed: int) -> torch.nn.Module:
    """A timm model from scratch (no downloaded weights), one input channel, one logit."""
    from mcfast.extras import require

    timm = require("timm", extra="eval", feature="the realism classifier")

    try:
        with torch.random.fork_rng(devices=[]):  # timm initialises from the global RNG
            torch.manual_seed(seed)
            return timm.create_model(name, pretrained=False, in_chans=1, num_classes=1)
    except RuntimeError as exc:
        raise InputError(f"model {name!r}: {exc}") from None


def _augment(x: torch.Tensor, g: torch.Generator, flips: bool = True) -> torch.Tensor:
    """Random horizontal flips (unless ``flips`` is False) and small translations (reflect-padded), per image."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5  # drawn either way: the shifts stay the same
    if flips:
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
            x = _augment(x_all[idx], g, settings.flip) if settings.augment else x_all[idx]
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
def choose_synthetic(synthetic: LabeledImages, n: int, seed: int, abnormal_share: float | None = None) -> np.ndarray:
    """Indices of ``n`` synthetic images (all of them when the pool is smaller); nested in ``n``.

    Without ``abnormal_share``: the first ``n`` of a seeded permutation. With it: round(n · share)
    abnormal and the rest normal, each the first ones of its class's seeded permutation (topped up
    from the other class when one runs out), so +33 % ⊂ +67 % ⊂ ... and every increment keeps the
    class balance.
    """
    rng = np.random.default_rng(seed)
    if abnormal_share is None:
        order = rng.permutation(len(synthetic))
        return order[:min(n, len(synthetic))]
    pos = np.flatnonzero(synthetic.labels == 1)
    neg = np.flatnonzero(synthetic.labels == 0)
    pos, neg = pos[rng.permutation(pos.size)], neg[rng.permutation(neg.size)]
    n = min(n, len(synthetic))
    n_pos = min(int(round(n * abnormal_share)), pos.size)
    n_neg = min(n - n_pos, neg.size)
    n_pos = min(n - n_neg, pos.size)
    return np.sort(np.concatenate([pos[:n_pos], neg[:n_neg]]))


def _digest(*arrays) -> str:
    import hashlib

    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, np.ndarray) and a.dtype != object:
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        else:
            h.update(json.dumps(a if not isinstance(a, np.ndarray) else a.tolist(), default=str).encode())
    return h.hexdigest()


def study_fingerprint(cfg: EvalConfig, parts: dict[str, LabeledImages], synthetic: LabeledImages | None,
                      abnormal_share: float | None) -> str:
    """What one saved (increment, seed) result depends on: the training settings, the split's images
    and labels, the synthetic pool and its class rule. Not: seeds / increments lists, bootstrap sizes,
    names, threads (a run saved under another list of seeds is still valid)."""
    items = [json.dumps(cfg.to_dict()["train"], sort_keys=True), abnormal_share]
    for name in SPLIT_NAMES:
        p = parts[name]
        items += [name, p.names, p.labels, p.images]
    if synthetic is not None:
        items += ["synthetic", synthetic.names, synthetic.labels, synthetic.images]
    return _digest(*items)


def run_file(run_dir: str | Path, inc: float, seed: int) -> Path:
    """``runs/inc033_seed2.json``: one (increment, seed) result."""
    return Path(run_dir) / f"inc{int(round(inc * 100)):03d}_seed{seed}.json"


def _load_run(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # never written half (atomic), but a hand-edited file is redone
    if rec.get("fingerprint") != fingerprint:
        raise InputError(f"{path}: saved by a study with other data, split or training settings; "
                         "use another --output (or delete its runs/ folder) to start afresh")
    return rec


def split_parts(cfg: EvalConfig, real: LabeledImages) -> dict[str, LabeledImages]:
    """The real train / val / test sets of the study (``[data]``: fixed test groups or fractions)."""
    splits = study_split(real.labels, real.groups, cfg.data)
    parts = {k: real.subset(splits[k]) for k in SPLIT_NAMES}
    for name, part in parts.items():
        if len(np.unique(part.labels)) < 2:
            raise InputError(f"{name} split has only one class ({len(part)} images); use more data or other fractions")
    seen: dict = {}
    for name, part in parts.items():  # a woman / patient in two splits would leak
        for g in set(part.groups.tolist()):
            if seen.setdefault(g, name) != name:
                raise InputError(f"group {group_name(g)} is in both the {seen[g]} and the {name} split")
    return parts


def run_classifier_study(cfg: EvalConfig, real: LabeledImages, synthetic: LabeledImages | None,
                         progress: Callable[[str], None] | None = None, run_dir: str | Path | None = None,
                         progress_bar: bool = False) -> dict:
    """Train and evaluate every (increment, seed); return the results dict (see docs/evaluation.md).

    With ``run_dir`` (and ``study.resume``) every (increment, seed) result is written atomically to
    ``run_dir/runs/incNNN_seedS.json`` as it finishes, with ``run_dir/runs/study.json`` (the split and
    its labels), and a saved result is loaded instead of retrained; :func:`results_from_saved` turns the
    saved files back into the results without the images.
    """
    from mcfast.atomic import write_text

    t0 = time.time()
    say = progress or (lambda msg: None)
    parts = split_parts(cfg, real)
    tr, va, te = (parts[k] for k in SPLIT_NAMES)
    share = None
    if synthetic is not None:
        share = float(tr.labels.mean()) if cfg.study.synthetic_abnormal_share < 0 else cfg.study.synthetic_abnormal_share
    fingerprint = study_fingerprint(cfg, parts, synthetic, share)
    store = Path(run_dir) / "runs" if run_dir is not None and cfg.study.resume else None
    meta = study_meta(cfg, parts, synthetic, share, fingerprint)
    if store is not None:
        write_text(store / "study.json", json.dumps(meta, indent=1))
    increments = sorted(float(x) for x in cfg.study.increments)
    tasks, skipped = [], []
    for inc in increments:
        n_syn_wanted = int(round(inc * len(tr)))
        if n_syn_wanted > 0 and synthetic is None:
            skipped.append({"increment": inc, "reason": "no synthetic_dir given"})
            continue
        tasks += [(inc, n_syn_wanted, seed) for seed in cfg.study.seeds]
    records = []
    bar = _bar(len(tasks), progress_bar)
    for inc, n_syn_wanted, seed in tasks:
        path = run_file(store, inc, seed) if store is not None else None
        rec = _load_run(path, fingerprint) if path is not None else None
        if rec is not None:
            say(f"increment +{inc:.0%}, seed {seed}: saved in {path}, skipped")
        else:
            say(f"increment +{inc:.0%} ({n_syn_wanted} synthetic), seed {seed}")
            rec = _one_run(cfg, tr, va, te, synthetic, inc, n_syn_wanted, seed, share, say)
            rec["fingerprint"] = fingerprint
            if path is not None:
                write_text(path, json.dumps(rec))
        records.append(rec)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    results = assemble_results(cfg, meta, records, skipped)
    results["provenance"] = read_provenance(cfg.data.synthetic_dir)
    results["elapsed_s"] = round(time.time() - t0, 1)
    return results


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="classifier runs", unit="run", dynamic_ncols=True)


def _one_run(cfg, tr, va, te, synthetic, inc, n_syn_wanted, seed, share, say) -> dict:
    started = time.time()
    if n_syn_wanted > 0:
        pick = choose_synthetic(synthetic, n_syn_wanted, seed, share)
        x_train = np.concatenate([tr.images, synthetic.images[pick]])
        y_train = np.concatenate([tr.labels, synthetic.labels[pick]])
    else:
        pick = np.zeros(0, dtype=np.int64)
        x_train, y_train = tr.images, tr.labels
    model, hist = train_binary_classifier(x_train, y_train, va.images, va.labels, cfg.train, seed, say)
    val_scores = predict_scores(model, va.images)
    threshold = best_f1_threshold(va.labels, val_scores)
    scores = predict_scores(model, te.images)
    return {
        "increment": inc, "seed": seed, "n_real_train": len(tr), "n_synthetic_wanted": n_syn_wanted,
        "n_synthetic": int(pick.size),
        "n_synthetic_abnormal": int(synthetic.labels[pick].sum()) if pick.size else 0,
        "synthetic_names": [synthetic.names[i] for i in pick] if pick.size else [],
        "threshold": threshold, "best_epoch": hist["best_epoch"],
        "val_auc": max(hist["val_auc"]) if hist["val_auc"] else None, "val_aucs": hist["val_auc"],
        "train_loss": hist["train_loss"],
        "val_scores": [round(float(v), 6) for v in val_scores],
        "test_scores": [round(float(v), 6) for v in scores],
        "seconds": round(time.time() - started, 1), "torch_threads": torch.get_num_threads(),
    }


def study_meta(cfg: EvalConfig, parts: dict[str, LabeledImages], synthetic: LabeledImages | None,
               share: float | None, fingerprint: str) -> dict:
    """The split (names, labels, groups per split), the synthetic pool's balance and the config."""
    return {
        "fingerprint": fingerprint, "config": cfg.to_dict(),
        "splits": {k: {"n": len(p), "abnormal": int(p.labels.sum()), "groups": len(set(p.groups.tolist())),
                       "group_names": sorted({group_name(g) for g in p.groups.tolist()}),
                       "names": list(p.names), "labels": p.labels.tolist()} for k, p in parts.items()},
        "synthetic": None if synthetic is None else {
            "n": len(synthetic), "abnormal": int(synthetic.labels.sum()), "abnormal_share_used": share},
    }


def assemble_results(cfg: EvalConfig, meta: dict, records: list[dict], skipped: list | None = None) -> dict:
    """Rows (seed means, bootstrap intervals) and paired tests against real-only from per-run records."""
    te = meta["splits"]["test"]
    y = np.asarray(te["labels"], dtype=np.int64)
    by_inc: dict[float, list[dict]] = {}
    for rec in records:
        by_inc.setdefault(float(rec["increment"]), []).append(rec)
    rows = []
    for inc in sorted(by_inc):
        runs = sorted(by_inc[inc], key=lambda r: r["seed"])
        rows.append(_aggregate(inc, runs, y, cfg))
    base = next((r for r in rows if r["increment"] == 0.0), None)
    for r in rows:
        r["paired_vs_real_only"] = None if base is None or r is base else paired_vs_baseline(r, base, y, cfg)
    splits = {k: {key: v[key] for key in ("n", "abnormal", "groups", "group_names")} for k, v in meta["splits"].items()}
    return {
        "name": cfg.study.name,
        "config": cfg.to_dict(),
        "splits": splits,
        "test_names": te["names"],
        "test_labels": te["labels"],
        "synthetic_available": 0 if meta.get("synthetic") is None else meta["synthetic"]["n"],
        "synthetic_pool": meta.get("synthetic"),
        "rows": rows,
        "skipped": list(skipped or []),
        "provenance": read_provenance(cfg.data.synthetic_dir),
        "machine": machine_info(),
        "run_seconds": round(sum(float(rec.get("seconds", 0)) for rec in records), 1),
    }


def paired_vs_baseline(row: dict, base: dict, y: np.ndarray, cfg: EvalConfig) -> dict:
    """AUC and F1 of ``row`` minus real-only: :func:`metrics.paired_bootstrap_test` over the seeds both
    rows ran (paired by seed) and the test images (paired by image)."""
    seeds = [s["seed"] for s in row["seeds"] if s["seed"] in {b["seed"] for b in base["seeds"]}]
    if not seeds:
        return {"note": "no seed in common with the real-only row"}
    a = {s["seed"]: s for s in row["seeds"]}
    b = {s["seed"]: s for s in base["seeds"]}
    sa = np.array([a[k]["test_scores"] for k in seeds])
    sb = np.array([b[k]["test_scores"] for k in seeds])
    pa = np.array([np.asarray(a[k]["test_scores"]) >= a[k]["threshold"] for k in seeds])
    pb = np.array([np.asarray(b[k]["test_scores"]) >= b[k]["threshold"] for k in seeds])
    nb, ci = cfg.study.n_paired_bootstrap, cfg.study.ci
    out = {"seeds": seeds,
           "auc": paired_bootstrap_test(roc_auc, y, sa, sb, nb, ci, seed=2024),
           "f1": paired_bootstrap_test(f1_score, y, pa, pb, nb, ci, seed=2025)}
    return out


def results_from_saved(cfg: EvalConfig, run_dir: str | Path) -> dict:
    """The results of a study from its saved runs (``run_dir/runs``) alone, no images loaded: the rows
    of every (increment, seed) of the config that has a saved result; missing ones are listed."""
    store = Path(run_dir) / "runs"
    meta_path = store / "study.json"
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: no saved study here (run `mcfast evaluate classifier` first)")
    meta = json.loads(meta_path.read_text())
    records, missing = [], []
    for inc in sorted(float(x) for x in cfg.study.increments):
        for seed in cfg.study.seeds:
            rec = _load_run(run_file(store, inc, seed), meta["fingerprint"])
            if rec is None:
                missing.append((inc, seed))
            else:
                records.append(rec)
    skipped = []
    for inc in sorted({m[0] for m in missing}):
        seeds = [s for i, s in missing if i == inc]
        skipped.append({"increment": inc, "reason": f"not run yet for seeds {seeds}"})
    results = assemble_results(cfg, meta, records, skipped)
    results["elapsed_s"] = results["run_seconds"]
    results["from_saved"] = str(store)
    return results


def _aggregate(inc, runs, y, cfg) -> dict:
    """Mean over seeds; the interval is the bootstrap (over test images) of the seed-mean metric."""
    test_scores = [np.asarray(r["test_scores"], dtype=np.float64) for r in runs]
    thresholds = [r["threshold"] for r in runs]
    seed_results = []
    for r, scores, t in zip(runs, test_scores, thresholds):
        auc_lo, auc_hi = bootstrap_interval(lambda i: roc_auc(y[i], scores[i]), y,
                                            cfg.study.n_bootstrap, cfg.study.ci, r["seed"])
        f1_lo, f1_hi = bootstrap_interval(lambda i: f1_score(y[i], scores[i] >= t), y,
                                          cfg.study.n_bootstrap, cfg.study.ci, r["seed"])
        seed_results.append({**{k: v for k, v in r.items() if k != "fingerprint"},
                             "auc": roc_auc(y, scores), "auc_lo": auc_lo, "auc_hi": auc_hi,
                             "f1": f1_score(y, scores >= t), "f1_lo": f1_lo, "f1_hi": f1_hi})

    def mean_auc(idx):
        return float(np.mean([roc_auc(y[idx], s[idx]) for s in test_scores]))

    def mean_f1(idx):
        return float(np.mean([f1_score(y[idx], s[idx] >= t) for s, t in zip(test_scores, thresholds)]))

    auc_lo, auc_hi = bootstrap_interval(mean_auc, y, cfg.study.n_bootstrap, cfg.study.ci, 12345)
    f1_lo, f1_hi = bootstrap_interval(mean_f1, y, cfg.study.n_bootstrap, cfg.study.ci, 12345)
    aucs = np.array([r["auc"] for r in seed_results])
    f1s = np.array([r["f1"] for r in seed_results])
    n_real = int(runs[0]["n_real_train"])
    n_wanted = int(runs[0]["n_synthetic_wanted"])
    n_syn = int(np.mean([r["n_synthetic"] for r in runs]))
    n_syn_abn = float(np.mean([r["n_synthetic_abnormal"] for r in runs]))
    return {
        "increment": inc, "n_real_train": n_real, "n_synthetic_wanted": n_wanted, "n_synthetic": n_syn,
        "n_synthetic_abnormal": n_syn_abn,
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


def _fmt_p(p: float) -> str:
    return "–" if p is None or not np.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else "< 0.001")


def results_table_markdown(results: dict) -> str:
    """The study table in markdown (one row per increment; mean over seeds, bootstrap interval, paired test)."""
    ci = int(round(results["config"]["study"]["ci"] * 100))
    seeds = results["config"]["study"]["seeds"]
    lines = [f"| synthetic added | real train (abnormal) | synthetic (abnormal) | share | AUC mean ± sd | AUC {ci}% CI | "
             f"F1 mean ± sd | F1 {ci}% CI | ΔAUC vs real-only [{ci}% CI], p | ΔF1 vs real-only [{ci}% CI], p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    n_real_abn = results["splits"]["train"]["abnormal"]
    for r in results["rows"]:
        cap = " (capped)" if r["capped"] else ""
        pt = r.get("paired_vs_real_only")
        if pt and "auc" in pt:
            a, f = pt["auc"], pt["f1"]
            d_auc = f"{a['delta']:+.3f} [{a['delta_lo']:+.3f}, {a['delta_hi']:+.3f}], p {_fmt_p(a['p'])}"
            d_f1 = f"{f['delta']:+.3f} [{f['delta_lo']:+.3f}, {f['delta_hi']:+.3f}], p {_fmt_p(f['p'])}"
        else:
            d_auc = d_f1 = "(reference)" if r["increment"] == 0 else "–"
        lines.append(f"| +{r['increment']:.0%} | {r['n_real_train']} ({n_real_abn}) | "
                     f"{r['n_synthetic']} ({r.get('n_synthetic_abnormal', 0):g}){cap} | "
                     f"{r['synthetic_share']:.2f} | {r['auc_mean']:.3f} ± {r['auc_std']:.3f} | "
                     f"[{r['auc_lo']:.3f}, {r['auc_hi']:.3f}] | {r['f1_mean']:.3f} ± {r['f1_std']:.3f} | "
                     f"[{r['f1_lo']:.3f}, {r['f1_hi']:.3f}] | {d_auc} | {d_f1} |")
    for s in results["skipped"]:
        lines.append(f"| +{s['increment']:.0%} | – | – | – | pending: {s['reason']} | | | | | |")
    sp = results["splits"]
    lines.append("")
    lines.append("Split (women / images / abnormal): " + "; ".join(
        f"{k} {sp[k]['groups']} / {sp[k]['n']} / {sp[k]['abnormal']} ({sp[k]['abnormal'] / max(sp[k]['n'], 1):.0%})"
        for k in ("train", "val", "test")) + ".")
    pool = results.get("synthetic_pool")
    if pool:
        share = pool.get("abnormal_share_used")
        lines.append(f"Synthetic pool: {pool['n']} images, {pool['abnormal']} abnormal "
                     f"({pool['abnormal'] / max(pool['n'], 1):.0%}); each increment draws "
                     + (f"{share:.0%} abnormal (the real training share)" if share is not None else "at random")
                     + ", nested across increments.")
    n_pb = results["config"]["study"].get("n_paired_bootstrap", "")
    lines.append(f"Seeds {seeds}; intervals: stratified bootstrap over test images of the "
                 f"seed-mean metric ({results['config']['study']['n_bootstrap']} resamples). "
                 "F1 at the threshold that maximised F1 on the validation split. Δ vs real-only: paired "
                 f"two-level bootstrap ({n_pb} resamples of test images, stratified, and of seed pairs; each "
                 "row's seed s is paired with real-only seed s), two-sided p.")
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

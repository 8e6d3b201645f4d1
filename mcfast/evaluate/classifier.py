"""Classifier augmentation study (the paper's Table 1): real-only vs real + synthetic increments.

A timm ConvNeXt (``pretrained=False``, ``in_chans=1``, one logit) is trained on real images,
then on real plus synthetic images adding +33 %, +67 %, +100 %, +133 % of the real training
count, for several seeds; AUC and F1 (threshold chosen on validation) with stratified
bootstrap intervals are measured on the real test set. Splits are made per patient/woman
(:mod:`mcfast.evaluate.splits`). The configuration is :mod:`mcfast.evaluate.config`, the images
:mod:`mcfast.evaluate.data`, the classifier's training :mod:`mcfast.evaluate.binary_classifier`, the table
and output files :mod:`mcfast.evaluate.classifier_report`; this module runs the study (resumable, one
saved result per increment and seed) and aggregates its rows, and re-exports those names.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mcfast.errors import InputError
from mcfast.evaluate.binary_classifier import create_classifier, predict_scores, train_binary_classifier
from mcfast.evaluate.classifier_report import results_table_markdown, write_results
from mcfast.evaluate.config import EvalConfig
from mcfast.evaluate.data import LabeledImages, read_provenance
from mcfast.evaluate.machine import cpu_name, machine_info
from mcfast.evaluate.metrics import best_f1_threshold, bootstrap_interval, f1_score, paired_bootstrap_test, roc_auc
from mcfast.evaluate.splits import SPLIT_NAMES, group_name, study_split

# The study's names and the ones it re-exports: the import path of realism, segmentation, the scripts and the CLI.
__all__ = ["create_classifier", "predict_scores", "train_binary_classifier", "results_table_markdown",
           "write_results", "cpu_name", "machine_info",
           "choose_synthetic", "study_fingerprints", "synthetic_count", "run_fingerprint", "run_file",
           "split_parts", "run_classifier_study", "study_meta",
           "assemble_results", "paired_vs_baseline", "results_from_saved"]


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


def study_fingerprints(cfg: EvalConfig, parts: dict[str, LabeledImages], synthetic: LabeledImages | None,
                       abnormal_share: float | None) -> tuple[str, str]:
    """What one saved (increment, seed) result depends on, as (real-only, with synthetic images): the
    training settings and the split's images and labels; for the rows that add synthetic images also the
    pool and its class rule. A real-only run does not see the pool, so it stays valid when the pool is
    made or remade. Not: seeds / increments lists, bootstrap sizes, names, threads (a run saved under
    another list of seeds is still valid)."""
    items = [json.dumps(cfg.to_dict()["train"], sort_keys=True)]
    for name in SPLIT_NAMES:
        p = parts[name]
        items += [name, p.names, p.labels, p.images]
    real_only = _digest(*items)
    if synthetic is None:
        return real_only, real_only
    return real_only, _digest(real_only, abnormal_share, "synthetic", synthetic.names, synthetic.labels,
                              synthetic.images)


def synthetic_count(increment: float, n_real: int) -> int:
    """Synthetic images a row asks for: ``increment`` times the real training count, rounded."""
    return int(round(increment * n_real))


def run_fingerprint(meta: dict, n_synthetic: int) -> str:
    """The fingerprint a saved (increment, seed) result must carry: the real-only one for a run without
    synthetic images (studies saved before it existed have only ``fingerprint``)."""
    if n_synthetic == 0:
        return meta.get("real_only_fingerprint", meta["fingerprint"])
    return meta["fingerprint"]


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
    store = Path(run_dir) / "runs" if run_dir is not None and cfg.study.resume else None
    meta = study_meta(cfg, parts, synthetic, share, study_fingerprints(cfg, parts, synthetic, share))
    if store is not None:
        write_text(store / "study.json", json.dumps(meta, indent=1))
    increments = sorted(float(x) for x in cfg.study.increments)
    tasks, skipped = [], []
    for inc in increments:
        n_syn_wanted = synthetic_count(inc, len(tr))
        if n_syn_wanted > 0 and synthetic is None:
            skipped.append({"increment": inc, "reason": "no synthetic_dir given"})
            continue
        tasks += [(inc, n_syn_wanted, seed) for seed in cfg.study.seeds]
    records = []
    bar = _bar(len(tasks), progress_bar)
    for inc, n_syn_wanted, seed in tasks:
        path = run_file(store, inc, seed) if store is not None else None
        run_fp = run_fingerprint(meta, n_syn_wanted)
        rec = _load_run(path, run_fp) if path is not None else None
        if rec is not None:
            say(f"increment +{inc:.0%}, seed {seed}: saved in {path}, skipped")
        else:
            say(f"increment +{inc:.0%} ({n_syn_wanted} synthetic), seed {seed}")
            rec = _one_run(cfg, tr, va, te, synthetic, inc, n_syn_wanted, seed, share, say)
            rec["fingerprint"] = run_fp
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
    val_scores = predict_scores(model, va.images, precision=cfg.train.precision)
    threshold = best_f1_threshold(va.labels, val_scores)
    scores = predict_scores(model, te.images, precision=cfg.train.precision)
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
               share: float | None, fingerprints: tuple[str, str]) -> dict:
    """The split (names, labels, groups per split), the synthetic pool's balance, the config and the
    (real-only, with synthetic) fingerprints of :func:`study_fingerprints`."""
    return {
        "fingerprint": fingerprints[1], "real_only_fingerprint": fingerprints[0], "config": cfg.to_dict(),
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
            n_syn = synthetic_count(inc, meta["splits"]["train"]["n"])
            rec = _load_run(run_file(store, inc, seed), run_fingerprint(meta, n_syn))
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

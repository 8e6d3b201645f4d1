"""Time the classifier study's training on this machine and estimate the whole study's runtime.

    OMP_NUM_THREADS=1 python scripts/time_classifier_epoch.py --config configs/eval_classifier_mias224.toml

Loads the real training and validation split exactly as the study does, trains ``train.model`` on the
real-only training set for ``--epochs`` epoch(s) (default 1) with the config's batch size and
augmentation, times the training pass and the validation scoring, and extrapolates to every
(increment, seed) run of the config: run time = epochs x (train images x s per training image + val
images x s per scored image) + one val and one test scoring. Prints a JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def estimate_seconds(cfg, n_real: int, n_val: int, n_test: int, s_train_img: float, s_score_img: float) -> dict:
    """Seconds of every row and of the whole study, from per-image training and scoring times."""
    from mcfast.evaluate.classifier import synthetic_count

    rows = {}
    for inc in sorted(float(x) for x in cfg.study.increments):
        n_train = n_real + synthetic_count(inc, n_real)
        per_run = cfg.train.epochs * (n_train * s_train_img + n_val * s_score_img) + (n_val + n_test) * s_score_img
        rows[f"+{inc:.0%}"] = round(per_run * len(cfg.study.seeds), 1)
    return {"rows_s": rows, "total_s": round(sum(rows.values()), 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    from mcfast.evaluate import classifier as clf
    from mcfast.evaluate.config import load_config

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    t0 = time.perf_counter()
    from mcfast.evaluate.data import load_real

    real = load_real(cfg)
    load_s = time.perf_counter() - t0
    parts = clf.split_parts(cfg, real)
    tr, va, te = parts["train"], parts["val"], parts["test"]
    settings = cfg.train
    timing_cfg = type(settings)(**{**settings.__dict__, "epochs": args.epochs})
    t0 = time.perf_counter()
    model, _ = clf.train_binary_classifier(tr.images, tr.labels, None, None, timing_cfg, seed=0)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    clf.predict_scores(model, va.images)
    score_s = time.perf_counter() - t0
    s_train_img = train_s / (args.epochs * len(tr))
    s_score_img = score_s / len(va)
    est = estimate_seconds(cfg, len(tr), len(va), len(te), s_train_img, s_score_img)
    # epochs that would fit a 2.5-hour session at this speed
    per_epoch_all = sum(len(cfg.study.seeds) * (len(tr) + int(round(float(i) * len(tr))))
                        for i in cfg.study.increments) * s_train_img \
        + len(cfg.study.increments) * len(cfg.study.seeds) * len(va) * s_score_img
    fit = math.floor(2.5 * 3600 / per_epoch_all)
    out = {"config": str(args.config), "model": settings.model, "image_size": cfg.data.image_size,
           "threads": torch.get_num_threads(), "cpu": clf.cpu_name(), "load_real_s": round(load_s, 1),
           "n_train": len(tr), "n_val": len(va), "n_test": len(te), "timed_epochs": args.epochs,
           "epoch_s": round(train_s / args.epochs, 1), "s_per_train_image": round(s_train_img, 4),
           "s_per_scored_image": round(s_score_img, 4), "config_epochs": cfg.train.epochs,
           "estimate": est, "estimate_h": round(est["total_s"] / 3600, 2), "epochs_fitting_2.5h": fit}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())

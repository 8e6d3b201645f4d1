"""Figures of the evaluation: AUC vs synthetic share, NCC histograms, top memorization pairs.

matplotlib with the Agg backend (no display); every figure is written atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mcfast.atomic import atomic_path


def _pyplot():
    from mcfast.extras import require

    matplotlib = require("matplotlib", extra="eval", feature="the evaluation plots")

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(path)


def plot_auc_vs_share(results: dict, path: str | Path) -> Path:
    """Test AUC (seed mean, bootstrap interval, per-seed dots) against synthetic images added."""
    plt = _pyplot()
    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = np.array([100 * r["n_synthetic"] / r["n_real_train"] for r in rows])
    mean = np.array([r["auc_mean"] for r in rows])
    lo = np.array([r["auc_lo"] for r in rows])
    hi = np.array([r["auc_hi"] for r in rows])
    ci = int(round(results["config"]["study"]["ci"] * 100))
    ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt="o-", capsize=4,
                label=f"mean over seeds, {ci}% bootstrap CI")
    for xi, r in zip(x, rows):
        ax.plot([xi] * len(r["seeds"]), [s["auc"] for s in r["seeds"]], "k.", alpha=0.5)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("synthetic images added (% of real training images)")
    ax.set_ylabel("test AUC (real images)")
    ax.set_ylim(0, 1)
    planned = [100 * float(v) for v in results["config"]["study"]["increments"]]
    ax.set_xlim(min(planned + [0]) - 10, max(planned + list(x)) + 10)
    if results.get("skipped"):
        ax.text(0.02, 0.04, "pending: " + ", ".join(f"+{s['increment']:.0%}" for s in results["skipped"]),
                transform=ax.transAxes, fontsize=7, color="grey")
    ax.set_title(results["name"], fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_ncc_histogram(synthetic_ncc: np.ndarray, threshold: float, path: str | Path,
                       reference_ncc: np.ndarray | None = None) -> Path:
    """Histogram of each synthetic image's best NCC to the training set (and a real held-out reference)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    lo = min(float(np.min(synthetic_ncc)), float(np.min(reference_ncc)) if reference_ncc is not None and len(reference_ncc) else 1.0)
    bins = np.linspace(min(lo, threshold) - 0.02, 1.0, 40)
    ax.hist(synthetic_ncc, bins=bins, alpha=0.7, label=f"synthetic → nearest training (n={len(synthetic_ncc)})")
    if reference_ncc is not None and len(reference_ncc):
        ax.hist(reference_ncc, bins=bins, alpha=0.5, label=f"real held-out → nearest training (n={len(reference_ncc)})")
    ax.axvline(threshold, color="red", ls="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("max normalised cross-correlation over shifts")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_top_pairs(synthetic: np.ndarray, training: np.ndarray, pairs: list[dict], path: str | Path) -> Path:
    """Synthetic image (top row) over its nearest training image (bottom row) for the given pairs."""
    plt = _pyplot()
    k = max(len(pairs), 1)
    fig, axes = plt.subplots(2, k, figsize=(1.8 * k, 4), squeeze=False)
    for j in range(k):
        for row in (0, 1):
            axes[row, j].axis("off")
        if j >= len(pairs):
            continue
        p = pairs[j]
        axes[0, j].imshow(synthetic[p["synthetic_index"]], cmap="gray", vmin=-1, vmax=1)
        axes[0, j].set_title(f"NCC {p['ncc']:.3f}", fontsize=8)
        axes[1, j].imshow(training[p["training_index"]], cmap="gray", vmin=-1, vmax=1)
        axes[1, j].set_title(str(p["training_name"])[-14:], fontsize=7)
    fig.suptitle("synthetic (top) and nearest training image (bottom)", fontsize=9)
    return _save(fig, path)


def plot_step_study(results: dict, path: str | Path) -> Path:
    """Three panels against network calls (log axis), one line per sampler: patch-CNN AUC (with the
    real-vs-real floor), anatomy low-frequency error, seconds per image."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    by_sampler: dict[str, list[dict]] = {}
    for r in results["sets"].values():
        by_sampler.setdefault(r["sampler"], []).append(r)
    panels = (("patch-CNN AUC", lambda r: r["patch_cnn"]["auc"]),
              ("anatomy error (model space)", lambda r: r["fidelity"]["anatomy"]["mean_mae"]),
              ("seconds / image", lambda r: r.get("seconds_per_image", float("nan"))))
    for ax, (label, value) in zip(axes, panels):
        for name, rows in by_sampler.items():
            rows = sorted(rows, key=lambda r: r["calls"])
            ax.plot([r["calls"] for r in rows], [value(r) for r in rows], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("network calls per image")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].axhline(results["floor"]["patch_cnn"]["auc"], color="grey", ls="--", label="real vs real floor")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results['size']}², {results['n']} images per set, model step {results['checkpoint_step']}")
    return _save(fig, path)

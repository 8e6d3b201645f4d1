"""`mcfast evaluate classifier|realism|memorization`: the evaluation suite on real vs synthetic images.

All three read one TOML config (see configs/eval_classifier_mias.toml and docs/evaluation.md):
``[data]`` names the real set and the synthetic folder, the other sections the settings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HELP = "Evaluate synthetic images: classifier augmentation study, realism, memorization."


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help=HELP, description=HELP)
    sub = p.add_subparsers(dest="evaluate_command", metavar="WHAT", required=True)

    def common(q):
        q.add_argument("--config", required=True, type=Path, help="evaluation TOML (sections study, data, train, "
                                                                   "realism, memorization)")
        q.add_argument("--synthetic-dir", type=Path, default=None,
                       help="labelled folder of synthetic PNG/NPY (overrides data.synthetic_dir)")
        q.add_argument("--output", type=Path, default=None, help="result folder (default: study.output_dir[/what])")
        q.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: study.threads)")
        q.add_argument("--image-size", type=int, default=None,
                       help="override data.image_size (match the synthetic images' resolution)")
        q.add_argument("--verbose", action="store_true", help="print one line per training epoch")

    c = sub.add_parser("classifier", help="ConvNeXt trained on real vs real + synthetic increments (Table 1)",
                       description="Train a timm ConvNeXt on real images, then on real plus synthetic increments, "
                                   "for several seeds; AUC and F1 with bootstrap intervals on the real test split. "
                                   "Writes results.json, table.md, auc_vs_synthetic.png.")
    common(c)
    c.add_argument("--seeds", type=int, nargs="+", default=None, help="override study.seeds")
    c.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    c.add_argument("--increments", type=float, nargs="+", default=None,
                   help="override study.increments (fractions of the real training count, e.g. 0 0.33 1.0)")
    c.add_argument("--report", action="store_true",
                   help="only regenerate results.json, table.md and the plot from the saved runs (no training)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=run_classifier)

    r = sub.add_parser("realism", help="two-sample classifier test, Fréchet distance, MS-SSIM diversity",
                       description="Real vs synthetic: held-out AUC of a real-vs-synthetic classifier "
                                   "(0.5 = indistinguishable), Fréchet distance on features of an autoencoder "
                                   "trained on the real images, and MS-SSIM diversity. Writes realism.json/.md.")
    common(r)
    r.set_defaults(func=run_realism)

    m = sub.add_parser("memorization", help="nearest training image of every synthetic image (shift-aligned NCC)",
                       description="For every synthetic image, its nearest real training image by normalised "
                                   "cross-correlation maximised over small shifts; flags pairs above a threshold. "
                                   "Writes memorization.json/.md, ncc_histogram.png, top_pairs.png.")
    common(m)
    m.add_argument("--threshold", type=float, default=None, help="override memorization.threshold")
    m.set_defaults(func=run_memorization)

    s = sub.add_parser("segmentation", help="MONAI U-Net on real vs real + synthetic CT crops (Dice, sensitivity)",
                       description="Train a MONAI BasicUNet on real MSD lung-tumour crops (split by case), then on "
                                   "real plus mcfast synthetic crops with exact masks, for several seeds; Dice and "
                                   "lesion sensitivity with case-bootstrap intervals and a paired test against "
                                   "real-only. Resumable; writes <report_name>.json/.md/.png in study.report_dir.")
    s.add_argument("--config", required=True, type=Path, help="segmentation TOML (configs/eval_segmentation_ct.toml)")
    s.add_argument("--output", type=Path, default=None, help="per-run results folder (default: study.output_dir)")
    s.add_argument("--report-dir", type=Path, default=None, help="where the JSON/table/plot go (default: study.report_dir)")
    s.add_argument("--report-only", "--report", dest="report_only", action="store_true",
                   help="only regenerate JSON, table and plot from the saved runs (no training)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: study.threads)")
    s.add_argument("--verbose", action="store_true", help="print one line per training epoch")
    s.set_defaults(func=run_segmentation)


def _setup(args, what: str | None):
    import torch

    from mcfast.errors import InputError
    from mcfast.evaluate.config import load_config, validate_config

    cfg = load_config(args.config)
    if args.synthetic_dir is not None:
        cfg.data.synthetic_dir = str(args.synthetic_dir)
    torch.set_num_threads(args.threads or cfg.study.threads)
    out = args.output or (Path(cfg.study.output_dir) / what if what else Path(cfg.study.output_dir))
    for key in ("seeds", "epochs", "increments", "threshold", "image_size"):
        if getattr(args, key, None) is not None:
            section = {"seeds": cfg.study, "increments": cfg.study, "epochs": cfg.train,
                       "threshold": cfg.memorization, "image_size": cfg.data}[key]
            setattr(section, key, list(getattr(args, key)) if key in ("seeds", "increments") else getattr(args, key))
    validate_config(cfg, str(args.config))
    if what and not cfg.data.synthetic_dir:
        raise InputError(f"{args.config}: {what} needs a synthetic folder (data.synthetic_dir or --synthetic-dir)")
    return cfg, out


def _say(verbose: bool):
    def say(msg: str) -> None:
        if verbose or not msg.startswith("  "):
            print(msg, file=sys.stderr, flush=True)
    return say


def run_classifier(args: argparse.Namespace) -> int:
    """Train (resuming saved (increment, seed) runs in OUTPUT/runs/) or, with --report, only rebuild the
    table, plot and JSON from them."""
    from mcfast.evaluate.classifier import (results_from_saved, results_table_markdown, run_classifier_study,
                                            write_results)
    from mcfast.evaluate.data import load_real, load_synthetic

    cfg, out = _setup(args, None)
    if args.report:
        results = results_from_saved(cfg, out)
    else:
        verbose = args.verbose

        def say(msg: str) -> None:  # through tqdm, so lines do not break the progress bar
            if verbose or not msg.startswith("  "):
                try:
                    from tqdm import tqdm
                    tqdm.write(msg, file=sys.stderr)
                except ImportError:
                    print(msg, file=sys.stderr, flush=True)

        real = load_real(cfg)
        synthetic = None
        if cfg.data.synthetic_dir and Path(cfg.data.synthetic_dir).exists():
            synthetic = load_synthetic(cfg)
        elif cfg.data.synthetic_dir:
            say(f"synthetic folder {cfg.data.synthetic_dir} not found: running the real-only baseline; "
                "increments are reported as pending")
        say(f"real: {len(real)} images ({int(real.labels.sum())} abnormal); "
            f"synthetic: {0 if synthetic is None else len(synthetic)}"
            + ("" if synthetic is None else f" ({int(synthetic.labels.sum())} abnormal)"))
        results = run_classifier_study(cfg, real, synthetic, say, run_dir=out, progress_bar=not args.no_progress)
    results["argv"] = list(sys.argv)  # the exact command line, for the results' record
    paths = list(write_results(results, out).values())
    if cfg.study.report_dir:
        paths += write_results(results, cfg.study.report_dir, cfg.study.report_name).values()
    print(results_table_markdown(results))
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def run_realism(args: argparse.Namespace) -> int:
    from mcfast.atomic import write_text
    from mcfast.evaluate.classifier import machine_info
    from mcfast.evaluate.data import load_real, load_synthetic, read_provenance
    from mcfast.evaluate.realism import realism_report

    cfg, out = _setup(args, "realism")
    say = _say(args.verbose)
    t0 = time.time()
    real, synthetic = load_real(cfg), load_synthetic(cfg)
    rep = realism_report(real.images, synthetic.images, cfg.realism, cfg.study.n_bootstrap, cfg.study.ci, say)
    rep.update({"argv": list(sys.argv), "config": cfg.to_dict(), "provenance": read_provenance(cfg.data.synthetic_dir),
                "machine": machine_info(), "elapsed_s": round(time.time() - t0, 1)})
    write_text(out / "realism.json", json.dumps(rep, indent=1))
    md = realism_markdown(rep)
    write_text(out / "realism.md", md)
    print(md)
    print(f"wrote {out / 'realism.json'}, {out / 'realism.md'}")
    return 0


def realism_markdown(rep: dict) -> str:
    t, fd, div = rep["two_sample"], rep["frechet"], rep["ms_ssim_diversity"]
    return "\n".join([
        f"# Realism ({rep['n_real']} real, {rep['n_synthetic']} synthetic)", "",
        "| measure | value |", "|---|---|",
        f"| two-sample classifier AUC (held out) | {t['auc']:.3f} [{t['auc_lo']:.3f}, {t['auc_hi']:.3f}] |",
        f"| Fréchet distance synthetic vs real | {fd['synthetic_vs_real']:.4g} |",
        f"| Fréchet distance real half vs real half (floor) | {fd['real_half_vs_real_half']:.4g} |",
        f"| MS-SSIM within synthetic (mean ± sd) | {div['synthetic']['mean']:.3f} ± {div['synthetic']['std']:.3f} |",
        f"| MS-SSIM within real (mean ± sd) | {div['real']['mean']:.3f} ± {div['real']['std']:.3f} |",
        "", f"Features: {fd['features']}.", ""])


def run_memorization(args: argparse.Namespace) -> int:
    from mcfast.atomic import write_text
    from mcfast.evaluate.classifier import machine_info
    from mcfast.evaluate.data import load_real, load_synthetic, read_provenance
    from mcfast.evaluate.memorization import memorization_report
    from mcfast.evaluate.plots import plot_ncc_histogram, plot_top_pairs
    from mcfast.evaluate.splits import group_split

    cfg, out = _setup(args, "memorization")
    say = _say(args.verbose)
    t0 = time.time()
    real, synthetic = load_real(cfg), load_synthetic(cfg)
    mc = cfg.memorization
    if mc.reference == "train":
        sp = group_split(real.labels, real.groups, cfg.data.split_fractions, cfg.data.split_seed)
        training, reference, reference_training = real.subset(sp["train"]), real.subset(sp["test"]), None
        ref_note = "real test-split patients vs the training split"
    else:
        # The generator saw all real images: audit against all of them; the reference distribution
        # compares the patients of one half with the other half.
        sp = group_split(real.labels, real.groups, (0.5, 0.0, 0.5), cfg.data.split_seed)
        training, reference, reference_training = real, real.subset(sp["test"]), real.subset(sp["train"]).images
        ref_note = "real patients of one half vs the other half"
    rep = memorization_report(synthetic.images, training.images, mc.threshold, mc.max_shift, mc.top_k,
                              synthetic.names, training.names, reference.images, reference_training,
                              mc.highpass_sigma, say)
    rep.update({"argv": list(sys.argv), "reference_note": ref_note, "config": cfg.to_dict(),
                "provenance": read_provenance(cfg.data.synthetic_dir), "machine": machine_info(),
                "elapsed_s": round(time.time() - t0, 1)})
    write_text(out / "memorization.json", json.dumps(rep, indent=1))
    plot_ncc_histogram(np.array(rep["ncc"]), mc.threshold, out / "ncc_histogram.png", np.array(rep["reference_ncc"]))
    plot_top_pairs(synthetic.images, training.images, rep["top"], out / "top_pairs.png")
    md = "\n".join([
        f"# Memorization ({rep['n_synthetic']} synthetic vs {rep['n_training']} training images)", "",
        f"- measure: max normalised cross-correlation over shifts up to ±{mc.max_shift} px (overlap-normalised)"
        + (f", on image − Gaussian blur σ {mc.highpass_sigma:g} px" if mc.highpass_sigma > 0 else ""),
        f"- flagged (NCC ≥ {mc.threshold}): {rep['n_flagged']} ({rep['rate']:.1%})",
        "- synthetic NCC median / 90% / 99%: " + " / ".join(f"{v:.3f}" for v in rep["ncc_quantiles"].values()),
        f"- reference ({ref_note}): median / 90% / 99%: "
        + " / ".join(f"{v:.3f}" for v in rep["reference_quantiles"].values())
        + f", rate above threshold {rep['reference_rate']:.1%}", ""])
    write_text(out / "memorization.md", md)
    print(md)
    print(f"wrote {out / 'memorization.json'}, {out / 'memorization.md'}, {out / 'ncc_histogram.png'}, "
          f"{out / 'top_pairs.png'}")
    return 0


def run_segmentation(args: argparse.Namespace) -> int:
    from mcfast.evaluate.segmentation import run_study_command

    return run_study_command(args.config, output=args.output, report_dir=args.report_dir,
                             report_only=args.report_only, threads=args.threads, verbose=args.verbose,
                             argv=list(sys.argv), progress=not args.no_progress)

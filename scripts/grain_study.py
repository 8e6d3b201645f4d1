"""Where the sampler stops adding noise, and how much fine texture it keeps (training films only).

    python scripts/grain_study.py [--config configs/grain_mg.toml] [--threads 1]
    python scripts/grain_study.py --report-only      # rewrite the .md from the .json

The recipe's sampler at each (``sampler.deterministic_below``, ``sampler.eps_scale``) pair of the
config's grid (steps below that timestep are DDIM η = 0 steps: no fresh noise where the network cannot
remove it again; ε divided by eps_scale: more fine texture), the same items (recipe seed, indices
0..n-1) for every pair; each set framed like the films and compared with training
films, one per woman first (the validation women are never read): the hand-feature and patch-CNN
two-sample tests, the radial power spectrum bands of the whole image and of crops inside the breast
(mcfast.evaluate.spectrum.interior_band_ratios) and the gradient-magnitude histogram, beside a floor
row (as many training films of other women against the same films). The config's rule picks one
pair. Writes docs/results/<[report] name>.{json,md}; the synthetic sets stay under --out.
"""
from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

from mcfast.atomic import write_text
from mcfast.evaluate.classifier import machine_info
from mcfast.evaluate.hand_features import gradient_histogram, hand_feature_test
from mcfast.evaluate.patch_cnn import patch_cnn_test
from mcfast.evaluate.realism_sets import (anatomy_groups, checkpoint_fields, floor_subset, load_split, machine_line,
                                          model_steps)
from mcfast.evaluate.spectrum import interior_band_ratios
from mcfast.evaluate.two_sample import DEFAULT_BANDS, spectrum_band_ratios
from mcfast.io.mammo import frame_model_images
from mcfast.train.checkpoint import read_config

REPO = Path(__file__).resolve().parent.parent


def make_set(cfg: dict, below: int, eps_scale: float, out: Path) -> tuple[np.ndarray, list[str], float]:
    """The recipe's ``n`` items with these sampler settings (resumed from ``out``), framed; the anatomy
    reference of each; and the seconds per image of the images made in this call (NaN when all were there)."""
    from mcfast.api import Synthesizer, build_recipe

    d, n = cfg["data"], cfg["synthesis"]["n"]
    recipe = build_recipe(REPO / d["recipe"], deterministic_below=below, eps_scale=eps_scale, formats=["npy"])
    synthesizer = Synthesizer.from_pretrained(REPO / d["checkpoint"], recipe=recipe, precision=d["precision"])
    t0 = time.perf_counter()
    result = synthesizer.synthesize(n, out, progress=True)
    per_image = (time.perf_counter() - t0) / result.written if result.written else float("nan")
    images = np.stack([np.load(out / f"{k:06d}" / "image.npy") for k in range(n)])
    anatomy = [json.loads((out / f"{k:06d}" / "meta.json").read_text())["anatomy"] for k in range(n)]
    framed, _ = frame_model_images(images)
    return framed, anatomy, per_image


def score(real: np.ndarray, groups: list[str], candidates: np.ndarray, cand_groups: list[str], s: dict) -> dict:
    """The two two-sample tests of ``candidates`` against ``real`` (hand features and the patch CNN; folds
    grouped by woman: a synthetic image belongs to the woman whose film guided it), the whole-image
    spectrum bands, the bands of crops inside the breast (the texture without the edge) and the
    gradient-histogram L1 distance."""
    test = hand_feature_test(real, candidates, folds=s["folds"], seed=s["seed"], n_boot=s["n_boot"],
                             groups_a=groups, groups_b=cand_groups)
    cnn = patch_cnn_test(real, candidates, folds=s["folds"], seed=s["seed"], n_boot=s["n_boot"],
                         groups_a=groups, groups_b=cand_groups)
    ratios = spectrum_band_ratios(real, candidates)
    interior = interior_band_ratios(real, candidates, s["interior_crop"], s["interior_per_image"], s["seed"])
    grad_l1 = float(np.abs(gradient_histogram(candidates).mean(0) - gradient_histogram(real).mean(0)).sum())
    return {"hand_feature_auc": round(test["auc"], 4), "auc_lo": round(test["auc_lo"], 4),
            "auc_hi": round(test["auc_hi"], 4), "patch_cnn_auc": round(cnn["auc"], 4),
            "patch_cnn_lo": round(cnn["auc_lo"], 4), "patch_cnn_hi": round(cnn["auc_hi"], 4),
            **{b: round(ratios[b], 4) for b in DEFAULT_BANDS},
            **{f"interior_{b}": round(interior[b], 4) for b in DEFAULT_BANDS},
            "gradient_hist_l1": round(grad_l1, 4)}


def pick(rows: list[dict], synthesis: dict) -> dict:
    """The config's rule (``pick_by``): the smallest ``"hand_feature_auc"`` or ``"patch_cnn_auc"``
    (rounded to 0.01); ties: the earlier grid entry."""
    by = synthesis.get("pick_by", "hand_feature_auc")
    if by not in ("hand_feature_auc", "patch_cnn_auc"):
        raise SystemExit(f"unknown pick_by {by!r}: hand_feature_auc or patch_cnn_auc")
    best = min(range(len(rows)), key=lambda k: (round(rows[k][by], 2), k))
    return {k: rows[best][k] for k in ("deterministic_below", "eps_scale")}


def run(cfg: dict, out: Path) -> dict:
    d, s = cfg["data"], cfg["scoring"]
    images, women, files = load_split(REPO / d["prepared"])
    ref_idx = floor_subset(women, s["n_reference"], s["seed"])
    real, groups = images[ref_idx], [women[k] for k in ref_idx]
    # The floor: as many films as each set has, one each from women outside the reference.
    others = [k for k in floor_subset(women, len(women), s["seed"] + 1) if women[k] not in set(groups)]
    floor_idx = others[:cfg["synthesis"]["n"]]
    rows = [{"deterministic_below": None, "eps_scale": None, "set": "floor: training films of other women",
             **score(real, groups, images[floor_idx], [women[k] for k in floor_idx], s), "s_per_image": None}]
    for below, eps_scale in cfg["synthesis"]["grid"]:
        below, eps_scale = int(below), float(eps_scale)
        synthetic, anatomy, per_image = make_set(cfg, below, eps_scale, out / f"below_{below}_eps_{eps_scale:.2f}")
        synthetic_groups = anatomy_groups(anatomy, files, women)
        rows.append({"deterministic_below": below, "eps_scale": eps_scale,
                     **score(real, groups, synthetic, synthetic_groups, s),
                     "s_per_image": None if np.isnan(per_image) else round(per_image, 1)})
        print(json.dumps(rows[-1]))
    config = read_config(REPO / d["checkpoint"])  # config.json only: the weights need not be read again
    return {"config": cfg, "checkpoint": d["checkpoint"], **checkpoint_fields(config), "machine": machine_info(),
            "n_reference": len(real), "n_reference_women": len(set(groups)), "rows": rows,
            "pick": pick(rows[1:], cfg["synthesis"])}


def write_report(res: dict, path: Path) -> None:
    cfg = res["config"]
    lines = [f"# {cfg['report']['title']}", "",
             f"Generated by `python scripts/grain_study.py --config {res['config_path']}`; every number is in "
             f"`{cfg['report']['name']}.json` beside this file.",
             f"Recipe `{cfg['data']['recipe']}`, model `{res['checkpoint']}`, {model_steps(res)}; "
             f"{cfg['synthesis']['n']} images per value (the same items), framed like the films, against "
             f"{res['n_reference']} training films of {res['n_reference_women']} women (the validation women "
             "are never read). " + machine_line(res["machine"]), "",
             "| deterministic_below | eps_scale | hand-feature AUC [95 %] | patch-CNN AUC [95 %] | "
             "spectrum " + " / ".join(DEFAULT_BANDS) + " (× real) | inside the breast " + " / ".join(DEFAULT_BANDS)
             + " (× real) | gradient histogram L1 | s / image |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        head = (r["set"] + " | – | " if r["deterministic_below"] is None
                else f"{r['deterministic_below']} | {r['eps_scale']:.2f} | ")
        bands = " / ".join(f"{r[b]:.2f}" for b in DEFAULT_BANDS)
        interior = " / ".join(f"{r[f'interior_{b}']:.2f}" for b in DEFAULT_BANDS) if "interior_high" in r else "–"
        cnn = (f"{r['patch_cnn_auc']:.2f} [{r['patch_cnn_lo']:.2f}, {r['patch_cnn_hi']:.2f}]"
               if "patch_cnn_auc" in r else "–")
        lines.append(f"| {head}{r['hand_feature_auc']:.2f} [{r['auc_lo']:.2f}, {r['auc_hi']:.2f}] | {cnn}"
                     f" | {bands} | {interior} | {r['gradient_hist_l1']:.3f} | {r['s_per_image'] or ''} |")
    lines += ["", f"Rule (the config's; its comments tell how it was chosen): {cfg['synthesis']['rule']} "
              f"**Pick: deterministic_below = {res['pick']['deterministic_below']}, "
              f"eps_scale = {res['pick']['eps_scale']:.2f}.**",
              "An empty s / image: that set was made earlier (by an interrupted call of the script, or by another run"
              " of the same recipe, seed and sampler settings) and reused.", ""]
    write_text(path, "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "grain_mg.toml")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "grain_mg", help="synthetic sets (kept, resumed)")
    ap.add_argument("--results", type=Path, default=REPO / "docs" / "results")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    cfg = tomllib.loads(args.config.read_text())
    name = cfg["report"]["name"]
    if args.report_only:
        res = json.loads((args.results / f"{name}.json").read_text())
    else:
        torch.set_num_threads(args.threads)
        res = {"config_path": str(args.config.resolve().relative_to(REPO)), **run(cfg, args.out)}
        args.results.mkdir(parents=True, exist_ok=True)
        write_text(args.results / f"{name}.json", json.dumps(res, indent=1, default=float) + "\n")
    write_report(res, args.results / f"{name}.md")


if __name__ == "__main__":
    main()

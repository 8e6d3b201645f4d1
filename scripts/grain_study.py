"""Where the sampler stops adding noise, and how much fine texture it keeps (training split only).

    python scripts/grain_study.py [--config configs/grain_mg.toml] [--threads 1]
    python scripts/grain_study.py --config configs/grain_ct.toml --out out/grain_ct --generate-only 0
    python scripts/grain_study.py --report-only      # rewrite the .md from the .json

The recipe at each entry of the config's grid (``sampler.deterministic_below``: steps below that
timestep are DDIM η = 0 steps, no fresh noise where the network cannot remove it again;
``sampler.eps_scale``: ε divided by it, more fine texture; ``sampler.steps`` / ``start_step``: the
respacing and the SDEdit start; ``anatomy.padding_band`` / ``factor`` / ``stop_step`` / ``filter`` /
``outside_factor`` / ``outside_stop_step``; a CT phantom's ``phantom_wall`` / ``phantom_blood_hu``), the same items
(recipe seed, indices 0..n-1) for every entry; each set (mammograms framed like the films) compared with
training images, one per patient / woman first (the validation split is never read): the hand-feature
test (and each of its feature families alone) and the patch-CNN test, the radial power spectrum bands of the whole
image and of crops inside the foreground (the breast; for CT the scan circle:
mcfast.evaluate.spectrum.interior_band_ratios) and the gradient-magnitude histogram (CT with ``[scoring]
tissue_noise``: also the pixel noise per tissue), beside a floor row (as many training images of other
patients / women against the same reference images). The config's rule picks one entry. Writes
docs/results/<[report] name>.{json,md}; the synthetic sets stay under --out. ``--generate-only K`` makes
grid entry K's set and stops (two such processes fill both cores); a later full run reuses the sets and
the seconds per image they recorded.
"""
from __future__ import annotations

import argparse
import json
import math
import time
import tomllib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mcfast.atomic import write_text
from mcfast.diffusion.samplers import network_calls
from mcfast.evaluate.hand_features import FEATURE_GROUPS, gradient_histogram, hand_feature_test
from mcfast.evaluate.patch_cnn import patch_cnn_test
from mcfast.evaluate.lesion_contrast import mass_contrasts
from mcfast.evaluate.seams import seam_summary
from mcfast.evaluate.realism_sets import (anatomy_groups, checkpoint_fields, floor_subset, fmt_auc, fmt_noise,
                                          load_split, machine_line, model_steps, record_timing, scoring_machine,
                                          seconds_per_image)
from mcfast.evaluate.spectrum import interior_band_ratios
from mcfast.evaluate.tissue import edge_profile, tissue_mottle_hu, tissue_noise_hu
from mcfast.evaluate.two_sample import DEFAULT_BANDS, spectrum_band_ratios
from mcfast.io.mammo import frame_model_images
from mcfast.synthesis.recipe import load_recipe
from mcfast.train.checkpoint import read_config

REPO = Path(__file__).resolve().parent.parent


#: The settings a grid entry may set, and the recipe section each belongs to.
GRID_KEYS = {"deterministic_below": "sampler", "eps_scale": "sampler", "padding_band": "anatomy", "steps": "sampler",
             "start_step": "sampler", "factor": "anatomy", "stop_step": "anatomy", "filter": "anatomy", "outside_factor": "anatomy",
             "outside_stop_step": "anatomy", "phantom_wall": "anatomy", "phantom_blood_hu": "anatomy",
             "sigma_scale": "pathology", "checkpoint": "model"}
#: How a grid entry's value is read, where it is not an integer.
GRID_TYPES = {"steps": str, "filter": str, "checkpoint": str, "phantom_wall": str, "phantom_blood_hu": lambda v: [int(x) for x in v], "sigma_scale": float}
#: Beside deterministic_below and eps_scale (always shown), in this order; None: the recipe's own.
OPTIONAL_KEYS = tuple(key for key in GRID_KEYS if key not in ("deterministic_below", "eps_scale"))
#: Settings that change how many network calls an image takes (the report shows the count beside them).
CALLS_KEYS = ("steps", "start_step")


def grid_entries(cfg: dict) -> list[dict]:
    """The config's grid as settings. An entry is [deterministic_below, eps_scale], [..., padding_band]
    or a table of any of ``GRID_KEYS`` (``steps``: the sampler's respacing, e.g. "50+tail9"); a setting
    an entry leaves out is the recipe's own."""
    recipe = load_recipe(REPO / cfg["data"]["recipe"])
    entries = []
    for k, item in enumerate(cfg["synthesis"]["grid"]):
        if isinstance(item, dict):
            unknown = set(item) - set(GRID_KEYS)
            if unknown:
                raise SystemExit(f"grid entry {k}: unknown setting(s) {', '.join(sorted(unknown))}; "
                                 f"expected some of {', '.join(GRID_KEYS)}")
            entry = {"deterministic_below": int(item.get("deterministic_below", recipe.sampler.deterministic_below)),
                     "eps_scale": float(item.get("eps_scale", recipe.sampler.eps_scale))}
            entry.update({key: GRID_TYPES.get(key, int)(item[key]) if key in item else None for key in OPTIONAL_KEYS})
        elif len(item) in (2, 3):
            entry = {"deterministic_below": int(item[0]), "eps_scale": float(item[1]),
                     **dict.fromkeys(OPTIONAL_KEYS), "padding_band": int(item[2]) if len(item) == 3 else None}
        else:
            raise SystemExit(f"grid entry {k} = {item!r}: [deterministic_below, eps_scale], [..., padding_band] "
                             f"or a table of {', '.join(GRID_KEYS)}")
        entries.append(entry)
    return entries


def set_folder(out: Path, entry: dict) -> Path:
    """The set's folder: named by its settings (the list form's names are those of the earlier studies)."""
    short = {"padding_band": "band", "steps": "steps", "phantom_wall": "wall", "phantom_blood_hu": "blood",
             "checkpoint": "model"}

    def text(key: str, value) -> str:
        if key == "checkpoint":
            return Path(value).name
        return "_".join(map(str, value)) if isinstance(value, list) else str(value)

    extra = "".join(f"_{short.get(key, key)}_{text(key, entry[key])}" for key in OPTIONAL_KEYS if entry.get(key) is not None)
    return out / f"below_{entry['deterministic_below']}_eps_{entry['eps_scale']:.2f}{extra}"


def make_set(cfg: dict, entry: dict, out: Path) -> tuple[np.ndarray, list[str], float]:
    """The recipe's ``n`` items with a grid entry's settings (resumed from ``out``), mammograms framed; the
    anatomy reference of each; and the seconds per image (this call's, else the one recorded by the call
    that made them; NaN when unknown)."""
    from mcfast.api import Synthesizer, build_recipe

    d, n = cfg["data"], cfg["synthesis"]["n"]
    anatomy = {key: entry[key] for key in OPTIONAL_KEYS if GRID_KEYS[key] == "anatomy" and entry[key] is not None}
    pathology = {key: entry[key] for key in OPTIONAL_KEYS if GRID_KEYS[key] == "pathology" and entry[key] is not None}
    lesions = [{**asdict(p), **pathology} for p in load_recipe(REPO / d["recipe"]).pathology] if pathology else None
    recipe = build_recipe(REPO / d["recipe"], deterministic_below=entry["deterministic_below"],
                          eps_scale=entry["eps_scale"], steps=entry["steps"], start_step=entry["start_step"],
                          anatomy=anatomy or None, lesions=lesions, formats=["npy"])
    synthesizer = Synthesizer.from_pretrained(REPO / (entry.get("checkpoint") or d["checkpoint"]), recipe=recipe, precision=d["precision"],
                                              channels_last=True)
    t0 = time.perf_counter()
    result = synthesizer.synthesize(n, out, progress=True)
    if result.written:
        record_timing(out, (time.perf_counter() - t0) / result.written, result.written)
    per_image = seconds_per_image(out)
    per_image = float("nan") if per_image is None else per_image
    images = np.stack([np.load(out / f"{k:06d}" / "image.npy") for k in range(n)])
    anatomy = [json.loads((out / f"{k:06d}" / "meta.json").read_text())["anatomy"] for k in range(n)]
    if recipe.modality == "mg":
        images, _ = frame_model_images(images)
    return images, anatomy, per_image


def score(real: np.ndarray, groups: list[str], candidates: np.ndarray, cand_groups: list[str], s: dict) -> dict:
    """The two two-sample tests of ``candidates`` against ``real`` (hand features, each of its families
    alone, and the patch CNN; folds grouped by patient / woman: a synthetic image belongs to the one whose
    image guided it), the whole-image spectrum bands, the bands of crops inside the foreground (the
    texture without the edge) and the gradient-histogram L1 distance."""
    test = hand_feature_test(real, candidates, folds=s["folds"], seed=s["seed"], n_boot=s["n_boot"],
                             groups_a=groups, groups_b=cand_groups)
    cnn = patch_cnn_test(real, candidates, folds=s["folds"], seed=s["seed"], n_boot=s["n_boot"],
                         groups_a=groups, groups_b=cand_groups, repeats=s.get("cnn_repeats", 1))
    ratios = spectrum_band_ratios(real, candidates)
    interior = interior_band_ratios(real, candidates, s["interior_crop"], s["interior_per_image"], s["seed"])
    edge = {"edge_profile": [round(v, 4) for v in edge_profile(candidates, s["edge_depth"])]} if "edge_depth" in s else {}
    grad_l1 = float(np.abs(gradient_histogram(candidates).mean(0) - gradient_histogram(real).mean(0)).sum())
    return {"hand_feature_auc": round(test["auc"], 4), "auc_lo": round(test["auc_lo"], 4),
            "auc_hi": round(test["auc_hi"], 4), "hand_families": test["group_auc"], "patch_cnn_auc": round(cnn["auc"], 4),
            "patch_cnn_lo": round(cnn["auc_lo"], 4), "patch_cnn_hi": round(cnn["auc_hi"], 4),
            **({"patch_cnn_runs": cnn["repeat_aucs"]} if cnn["repeat_aucs"] else {}),
            **{b: round(ratios[b], 4) for b in DEFAULT_BANDS},
            **{f"interior_{b}": round(interior[b], 4) for b in DEFAULT_BANDS},
            "gradient_hist_l1": round(grad_l1, 4), **edge}


def lesion_scores(folder: Path, n: int, modality: str) -> dict:
    """On the images as sampled (before any framing, so the boxes hold): the seam statistic along each item's
    lesion patch boxes and its control at shifted boxes (mcfast.evaluate.seams; the blank background /
    scanner padding is not used) and, for mammograms, the masses' median contrast against their surround."""
    items = [folder / f"{k:06d}" for k in range(n)]
    images = np.stack([np.load(p / "image.npy") for p in items])
    boxes = [[lesion["patch_box"] for lesion in json.loads((p / "meta.json").read_text())["lesions"]] for p in items]
    seam = seam_summary(images, boxes, images > -0.99)
    out = {"seam": round(seam["median"], 3), "seam_control": round(seam["control_median"], 3)}
    if modality == "mg":
        out["mass_contrast"] = round(mass_contrasts(images, [np.load(p / "labels.npy") > 0 for p in items])["median"], 4)
    return out


#: The tissues whose pixel noise the "tissue_noise" rule matches: in the lung the high-pass also holds
#: vessels and septa, which the anatomy decides, not the scanner.
NOISE_RULE_TISSUES = ("fat", "soft_tissue")


def noise_scores(images: np.ndarray, reference: dict[str, float]) -> dict:
    """A set's pixel noise per tissue (CT, :func:`tissue_noise_hu`, HU) and the larger |log ratio| of its fat
    and muscle noise to the ``reference`` slices' (what the ``"tissue_noise"`` rule ranks)."""
    noise = tissue_noise_hu(images)["noise_hu"]
    ratio = max(abs(math.log(noise[t] / reference[t])) for t in NOISE_RULE_TISSUES)
    return {"noise_hu": {t: round(v, 2) for t, v in noise.items()}, "noise_log_ratio": round(ratio, 4)}


def mottle_scores(images: np.ndarray) -> dict:
    """A set's texture 2-8 px across per tissue away from edges (CT, :func:`tissue_mottle_hu`, HU): where the
    linear model's marbling shows."""
    return {"mottle_hu": {t: round(v, 2) for t, v in tissue_mottle_hu(images)["noise_hu"].items()}}


def eligible(row: dict, first: dict, synthesis: dict) -> bool:
    """The config's conditions on an entry besides its AUCs: ``max_seam`` (its seam statistic at most this),
    ``min_contrast_fraction`` (its masses' median contrast at least this fraction of the first entry's) and
    ``max_auc_rise`` (the larger of its two AUCs at most this above the first entry's, both rounded to 0.01)."""
    if "max_seam" in synthesis and not row["seam"] <= synthesis["max_seam"]:
        return False
    if "min_contrast_fraction" in synthesis and not row["mass_contrast"] >= (
            synthesis["min_contrast_fraction"] * first["mass_contrast"]):
        return False
    if "max_auc_rise" in synthesis and not round(PICK_BY["worse_auc"](row), 2) <= (
            round(PICK_BY["worse_auc"](first), 2) + synthesis["max_auc_rise"] + 1e-9):  # 1e-9: float sums
        return False
    return True


PICK_BY = {"hand_feature_auc": lambda r: r["hand_feature_auc"], "patch_cnn_auc": lambda r: r["patch_cnn_auc"],
           # Both tests have a target, so the worse of the two is what a pair must bring down.
           "worse_auc": lambda r: max(r["hand_feature_auc"], r["patch_cnn_auc"]),
           # A physical property of the texture when both tests are saturated (AUC 1.00 everywhere, so they
           # cannot rank): how far the fat and muscle pixel noise is from the reference slices' ([scoring]
           # tissue_noise; the larger |log ratio| of the two).
           "tissue_noise": lambda r: r["noise_log_ratio"]}


def pick(rows: list[dict], synthesis: dict) -> dict:
    """The config's rule (``pick_by``): the smallest ``"hand_feature_auc"``, ``"patch_cnn_auc"``,
    ``"worse_auc"`` (the larger of the two) or ``"tissue_noise"`` (rounded to 0.01); ties: the earlier grid entry."""
    by = synthesis.get("pick_by", "hand_feature_auc")
    if by not in PICK_BY:
        raise SystemExit(f"unknown pick_by {by!r}: one of {', '.join(PICK_BY)}")
    # entries failing the config's other conditions (eligible) are not picked; if none passes, the first
    # entry (the recipe as it is) stays
    candidates = [k for k in range(len(rows)) if eligible(rows[k], rows[0], synthesis)] or [0]
    best = min(candidates, key=lambda k: (round(PICK_BY[by](rows[k]), 2), k))
    return {k: rows[best][k] for k in GRID_KEYS if k in rows[best]}


def words(cfg: dict) -> dict[str, str]:
    """How the report names the real images, whom they belong to and their foreground (config [report])."""
    r = cfg["report"]
    return {"images": r.get("images", "films"), "people": r.get("people", "women"),
            "foreground": r.get("foreground", "the breast")}


def generate_only(cfg: dict, out: Path, entry: int) -> None:
    """Make grid entry ``entry``'s set (resumed) and nothing else."""
    grid = grid_entries(cfg)
    if not 0 <= entry < len(grid):
        raise SystemExit(f"--generate-only {entry}: the grid has entries 0..{len(grid) - 1}")
    _, _, per_image = make_set(cfg, grid[entry], set_folder(out, grid[entry]))
    print(f"{set_folder(out, grid[entry])}: {per_image} s / image")


def run(cfg: dict, out: Path) -> dict:
    d, s, w = cfg["data"], cfg["scoring"], words(cfg)
    images, people, files = load_split(REPO / d["prepared"])
    ref_idx = floor_subset(people, s["n_reference"], s["seed"])
    real, groups = images[ref_idx], [people[k] for k in ref_idx]  # prepared mammograms are framed already
    # The floor: as many images as each set has, one each from patients / women outside the reference.
    others = [k for k in floor_subset(people, len(people), s["seed"] + 1) if people[k] not in set(groups)]
    floor_idx = others[:cfg["synthesis"]["n"]]
    if len(floor_idx) < cfg["synthesis"]["n"]:
        raise SystemExit(f"the floor needs {cfg['synthesis']['n']} {w['people']} outside the {len(set(groups))} of the "
                         f"reference; the training split has {len(set(people))}: lower [scoring] n_reference")
    rows = [{"deterministic_below": None, "eps_scale": None, "set": f"floor: training {w['images']} of other {w['people']}",
             **score(real, groups, images[floor_idx], [people[k] for k in floor_idx], s), "s_per_image": None}]
    reference_noise = tissue_noise_hu(real)["noise_hu"] if s.get("tissue_noise") else None
    if reference_noise:
        rows[0].update(noise_scores(images[floor_idx], reference_noise))
    reference_mottle = tissue_mottle_hu(real)["noise_hu"] if s.get("tissue_mottle") else None
    if reference_mottle:
        rows[0].update(mottle_scores(images[floor_idx]))
    grid, recipe = grid_entries(cfg), load_recipe(REPO / d["recipe"])
    # A setting the grid varies is stated in every row, the recipe's own value where an entry is silent,
    # so that a row still says what it measured after the recipe takes the pick.
    varied = [key for key in OPTIONAL_KEYS if any(entry[key] is not None for entry in grid)]
    for entry in grid:
        synthetic, anatomy, per_image = make_set(cfg, entry, set_folder(out, entry))
        synthetic_groups = anatomy_groups(anatomy, files, people)
        settings = {k: v for k, v in entry.items() if v is not None}
        for key in varied:
            section = GRID_KEYS[key]  # a pathology key is the same in every [[pathology]] table the study sets
            own = (d["checkpoint"] if section == "model" else
                   getattr(recipe.pathology[0] if section == "pathology" else getattr(recipe, section), key))
            settings.setdefault(key, list(own) if isinstance(own, tuple) else own)
        if any(key in varied for key in CALLS_KEYS):
            settings["network_calls"] = network_calls(settings.get("steps", recipe.sampler.steps),
                                                      settings.get("start_step", recipe.sampler.start_step))
        lesions = lesion_scores(set_folder(out, entry), cfg["synthesis"]["n"], recipe.modality) \
            if s.get("lesion_scores") else {}
        noise = noise_scores(synthetic, reference_noise) if reference_noise else {}
        if reference_mottle:
            noise.update(mottle_scores(synthetic))
        rows.append({**settings, **score(real, groups, synthetic, synthetic_groups, s), **lesions, **noise,
                     "s_per_image": None if np.isnan(per_image) else round(per_image, 1)})
        print(json.dumps(rows[-1]))
    config = read_config(REPO / d["checkpoint"])  # config.json only: the weights need not be read again
    others = sorted({entry["checkpoint"] for entry in grid if entry.get("checkpoint")} - {d["checkpoint"]})
    return {"config": cfg, "checkpoint": d["checkpoint"], **checkpoint_fields(config), "machine": scoring_machine(),
            **({"other_checkpoints": {c: checkpoint_fields(read_config(REPO / c)) for c in others}} if others else {}),
            "n_reference": len(real), "n_reference_people": len(set(groups)), "rows": rows,
            **({"reference_noise": {t: round(v, 2) for t, v in reference_noise.items()}} if reference_noise else {}),
            **({"reference_mottle": {t: round(v, 2) for t, v in reference_mottle.items()}} if reference_mottle else {}),
            "pick": pick(rows[1:], cfg["synthesis"])}


def write_report(res: dict, path: Path) -> None:
    cfg, w, rows = res["config"], words(res["config"]), res["rows"]
    framed = ", framed like the films," if load_recipe(REPO / cfg["data"]["recipe"]).modality == "mg" else ""
    shown = [key for key in OPTIONAL_KEYS if any(key in r for r in rows)]
    labels = {key: f"{key} (network calls)" for key in CALLS_KEYS}
    with_edge = any("edge_profile" in r for r in rows)
    with_seam, with_contrast = any("seam" in r for r in rows), any("mass_contrast" in r for r in rows)
    with_noise = any("noise_hu" in r for r in rows)
    with_mottle = any("mottle_hu" in r for r in rows)
    depth = cfg["scoring"].get("edge_depth")
    columns = (["deterministic_below", "eps_scale"] + [labels.get(key, key) for key in shown]
               + ["hand-feature AUC [95 %]", "hand families: " + " / ".join(FEATURE_GROUPS), "patch-CNN AUC [95 %]",
                  "spectrum " + " / ".join(DEFAULT_BANDS) + " (× real)",
                  f"inside {w['foreground']} " + " / ".join(DEFAULT_BANDS) + " (× real)", "gradient histogram L1"]
               + ([f"mean intensity 1 ... {depth} px from the background"] if with_edge else [])
               + (["seam at the lesion boxes (control)"] if with_seam else [])
               + (["mass contrast (median)"] if with_contrast else [])
               + (["pixel noise lung / fat / soft tissue (HU)"] if with_noise else [])
               + (["mottle 2–8 px lung / fat / soft tissue (HU)"] if with_mottle else []) + ["s / image"])
    lines = [f"# {cfg['report']['title']}", "",
             f"Generated by `python scripts/grain_study.py --config {res['config_path']}`; every number is in "
             f"`{cfg['report']['name']}.json` beside this file.",
             f"Recipe `{cfg['data']['recipe']}`, model `{res['checkpoint']}`, {model_steps(res)}"
             + "".join(f" (`{c}`: {model_steps(f)})" for c, f in res.get("other_checkpoints", {}).items()) + "; "
             f"{cfg['synthesis']['n']} images per value (the same items){framed} against "
             f"{res['n_reference']} training {w['images']} of {res['n_reference_people']} {w['people']} (the validation "
             f"{w['people']} are never read). " + machine_line(res["machine"]), "",
             *([f"Pixel noise (high-pass standard deviation per tissue, `tissue_noise_hu`) of the {res['n_reference']} "
                f"reference {w['images']}: {fmt_noise(res['reference_noise'])} HU (lung / fat / soft tissue).", ""]
               if "reference_noise" in res else []),
             *([f"Mottle (`tissue_mottle_hu`: Gaussian σ 2 minus σ 8 px, 8 px inside each tissue) of the "
                f"{res['n_reference']} reference {w['images']}: {fmt_noise(res['reference_mottle'])} HU.", ""]
               if "reference_mottle" in res else []),
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        if r["deterministic_below"] is None:
            head = [r["set"], "–"] + ["–"] * len(shown)
        else:
            head = [str(r["deterministic_below"]), f"{r['eps_scale']:.2f}"] + [
                "recipe's" if key not in r else f"{r[key]} ({r['network_calls']})" if key in CALLS_KEYS else str(r[key])
                for key in shown]
        cells = head + [
            f"{r['hand_feature_auc']:.2f} [{r['auc_lo']:.2f}, {r['auc_hi']:.2f}]",
            " / ".join(f"{r['hand_families'][f]:.2f}" for f in FEATURE_GROUPS) if "hand_families" in r else "–",
            fmt_auc({"auc": r["patch_cnn_auc"], "auc_lo": r["patch_cnn_lo"], "auc_hi": r["patch_cnn_hi"],
                     "repeat_aucs": r.get("patch_cnn_runs")}) if "patch_cnn_auc" in r else "–",
            " / ".join(f"{r[b]:.2f}" for b in DEFAULT_BANDS),
            " / ".join(f"{r[f'interior_{b}']:.2f}" for b in DEFAULT_BANDS) if "interior_high" in r else "–",
            f"{r['gradient_hist_l1']:.3f}"]
        if with_edge:
            cells.append(", ".join(f"{v:.2f}" for v in r["edge_profile"]) if "edge_profile" in r else "–")
        if with_seam:
            cells.append(f"{r['seam']:.2f} ({r['seam_control']:.2f})" if "seam" in r else "–")
        if with_contrast:
            cells.append(f"{r['mass_contrast']:.3f}" if "mass_contrast" in r else "–")
        if with_noise:
            cells.append(fmt_noise(r.get("noise_hu")))
        if with_mottle:
            cells.append(fmt_noise(r.get("mottle_hu")))
        cells.append(str(r["s_per_image"] or ""))
        lines.append("| " + " | ".join(cells) + " |")
    picked = ", ".join(f"{k} = {v:.2f}" if k == "eps_scale" else f"{k} = {v}" for k, v in res["pick"].items())
    lines += ["", f"Rule (the config's; its comments tell how it was chosen): {cfg['synthesis']['rule']} "
              f"**Pick: {picked}.**" + ("" if cfg["synthesis"].get("apply", True) else
                                        f" **Not applied**: {cfg['synthesis']['not_applied_because']}"),
              "An empty s / image: that set was made earlier (by an interrupted call of the script, or by another run"
              " of the same recipe, seed and sampler settings) and reused.", ""]
    write_text(path, "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "grain_mg.toml")
    ap.add_argument("--out", type=Path, default=None, help="synthetic sets, kept and resumed (default out/<[report] name>)")
    ap.add_argument("--results", type=Path, default=REPO / "docs" / "results")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--generate-only", type=int, metavar="K", help="make grid entry K's set, then stop")
    args = ap.parse_args()
    cfg = tomllib.loads(args.config.read_text())
    name = cfg["report"]["name"]
    out = args.out or REPO / "out" / name
    if args.generate_only is not None:
        torch.set_num_threads(args.threads)
        generate_only(cfg, out, args.generate_only)
        return
    if args.report_only:
        res = json.loads((args.results / f"{name}.json").read_text())
        # Whether the recipes take the pick is a decision recorded in the config, not a measurement.
        decision = {k: cfg["synthesis"][k] for k in ("apply", "not_applied_because") if k in cfg["synthesis"]}
        if decision:
            for key in ("apply", "not_applied_because"):  # a reason withheld earlier goes once the pick is applied
                res["config"]["synthesis"].pop(key, None)
            res["config"]["synthesis"].update(decision)
            write_text(args.results / f"{name}.json", json.dumps(res, indent=1, default=float) + "\n")
    else:
        torch.set_num_threads(args.threads)
        res = {"config_path": str(args.config.resolve().relative_to(REPO)), **run(cfg, out)}
        args.results.mkdir(parents=True, exist_ok=True)
        write_text(args.results / f"{name}.json", json.dumps(res, indent=1, default=float) + "\n")
    write_report(res, args.results / f"{name}.md")


if __name__ == "__main__":
    main()

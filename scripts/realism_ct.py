"""CT realism report: synthetic slices (real-slice and phantom anatomy, 256² and 512², several step counts)
against the held-out validation patients, each number beside its real-vs-real floor from the same run.

    python scripts/realism_ct.py [--config configs/realism_ct.toml] [--out out/realism_ct]
    python scripts/realism_ct.py --generate-only real_512    # make one synthetic set (run two at once)

Writes docs/results/realism_ct.json and .md (and the figure docs/img/ct_real_vs_synthetic.png). The
synthetic sets are kept under --out and reused on a re-run (synthesis resumes).
"""
from __future__ import annotations

import argparse
import json
import os
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mcfast.errors import InputError
from mcfast.evaluate.classifier import machine_info
from mcfast.evaluate.realism import train_feature_network
from mcfast.evaluate.realism_suite import SuiteSettings, compare, memorization
from mcfast.io.datasets import read_manifest
from mcfast.io.images import read_npy
from mcfast.synthesis.recipe import load_recipe, validate

REPO = Path(__file__).resolve().parent.parent
RECIPE_SIZE = 512
TISSUES = ("lung", "fat", "soft_tissue", "bone")


def load_split(folder: Path) -> tuple[np.ndarray, list[str], list[str]]:
    manifest = read_manifest(folder)
    images = np.stack([read_npy(folder / it["file"]) for it in manifest["items"]])
    return images, [it["patient"] for it in manifest["items"]], [it["file"] for it in manifest["items"]]


def resize_area(images: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased (area) downsampling, the same for every real set."""
    if images.shape[-1] == size:
        return images
    t = torch.from_numpy(images)[:, None]
    return F.interpolate(t, size=(size, size), mode="area")[:, 0].numpy()


def floor_subset(patients: list[str], n: int, seed: int) -> list[int]:
    """n training slices, as many patients as possible (one slice each, in a seeded order)."""
    rng = np.random.default_rng(seed)
    by_patient: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        by_patient.setdefault(p, []).append(i)
    order = [by_patient[p] for p in rng.permutation(sorted(by_patient))]
    picked: list[int] = []
    while len(picked) < n:
        for idx in order:
            left = [i for i in idx if i not in picked]
            if left and len(picked) < n:
                picked.append(int(rng.choice(left)))
    return picked


def scaled_recipe(path: str, size: int, steps: str | None = None):
    """The 512² recipe at ``size``: ILVR factors and lesion sizes scale with the image."""
    r = load_recipe(REPO / path)
    scale = size / RECIPE_SIZE
    r.image_size = size
    r.anatomy.factor = max(1, int(round(r.anatomy.factor * scale)))
    for p in r.pathology:
        p.factor = max(1, int(round(p.factor * scale)))
        p.size = (max(4, int(round(p.size[0] * scale))), max(4, int(round(p.size[1] * scale))))
    if steps is not None:
        r.sampler.steps = steps
    return validate(r)


def synthetic_sets(cfg: dict) -> dict[str, tuple]:
    """name -> (recipe path, size, steps or None)."""
    syn = cfg["synthesis"]
    sets = {f"{name}_{size}": (path, size, None) for size in syn["sizes"] for name, path in syn["recipes"].items()}
    sweep = syn.get("step_sweep")
    if sweep:
        for steps in sweep["steps"]:
            sets[f"{sweep['recipe']}_{sweep['size']}_steps{steps}"] = (syn["recipes"][sweep["recipe"]],
                                                                       sweep["size"], steps)
    return sets


def generate(name: str, spec: tuple, cfg: dict, out: Path) -> Path:
    from mcfast.synthesis.pipeline import synthesize

    path, size, steps = spec
    recipe = scaled_recipe(path, size, steps)
    folder = out / name
    started = time.perf_counter()
    result = synthesize(REPO / cfg["data"]["checkpoint"], recipe, cfg["synthesis"]["n"], folder,
                        precision=cfg["synthesis"]["precision"], progress=True, channels_last=True)
    if result.written:
        seconds = (time.perf_counter() - started) / result.written
        timing = {"seconds_per_image": round(seconds, 2), "threads": torch.get_num_threads(),
                  "images_timed": result.written}
        (folder / "timing.json").write_text(json.dumps(timing))
    return folder


def load_synthetic(folder: Path, n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    items = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "image.npy").is_file())[:n]
    images = np.stack([np.load(p / "image.npy") for p in items]).astype(np.float32)
    masks = np.stack([np.load(p / "labels.npy") > 0 for p in items])
    anatomy = [json.loads((p / "meta.json").read_text())["anatomy"] for p in items]
    return images, masks, anatomy


def anatomy_groups(anatomy: list[str], train_files: list[str], train_patients: list[str]) -> list[str]:
    """A synthetic image guided by a real slice belongs to that slice's patient (fold grouping)."""
    patient_of = {f: p for f, p in zip(train_files, train_patients)}
    return [patient_of.get(Path(a).name, a) for a in anatomy]


def machine_line(info: dict) -> str:
    cpu = info.get("cpu_model") or info["processor"]
    return (f"{info['cpu_count']} CPU cores ({cpu}), no GPU" if not info["cuda"] else "GPU") + \
        f", torch {info['torch']}, {info['torch_threads']} thread(s) in the scoring pass"


def _fmt_auc(d: dict) -> str:
    return f"{d['auc']:.2f} [{d['auc_lo']:.2f}, {d['auc_hi']:.2f}]"


def size_section(size: str, block: dict) -> list[str]:
    """The table, the real tissue ranges and the target checks of one image size (Markdown lines)."""
    lines = ["| set | patch-CNN AUC [95 %] | hand-feature AUC [95 %] | Fréchet (AE) | spectrum mid / high "
             "(× real) | lung / fat / soft tissue / bone HU | NCC > 0.95 | s / image |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in [("floor (real train vs real val)", block["floor"])] + list(block["synthetic"].items()):
        hu = r.get("tissue_hu", {}).get("median_hu", {})
        hu_s = " / ".join(f"{hu.get(t, float('nan')):.0f}" for t in TISSUES)
        sp = r["spectrum_ratio"]
        lines.append(f"| {name} | {_fmt_auc(r['patch_cnn'])} | {_fmt_auc(r['hand_features'])} | "
                     f"{r['frechet']:.3g} | {sp['mid']:.2f} / {sp['high']:.2f} | {hu_s} | "
                     f"{r['memorization']['rate_above_threshold']:.0%} | {r.get('seconds_per_image', '')} |")
    real_hu = block["real_tissue_hu"]
    lines += ["", f"Real validation tissue medians at {size}² (HU, all pixels; per-image range): " + ", ".join(
        f"{t} {real_hu['median_hu'][t]:.0f} ({real_hu['range'][t][0]:.0f} to {real_hu['range'][t][1]:.0f})"
        for t in TISSUES), ""]
    for name, checks in block.get("targets", {}).items():
        lines.append(f"- targets, {name}: " + "; ".join(f"{k} {'met' if v else '**not met**'}"
                                                       for k, v in checks.items()))
    return lines + [""]


def write_markdown(results: dict, path: Path) -> None:
    lines = ["# CT realism: synthetic slices against held-out patients", "",
             "Generated by `python scripts/realism_ct.py` (config `configs/realism_ct.toml`); every number below is",
             "in `realism_ct.json`. Real side of every comparison: the validation patients of",
             "`configs/ct_real_data.toml` (never used for training, references or model selection). The *floor* row",
             "compares training-split real slices (as many as each synthetic set, one per patient first) with the same",
             "validation slices: what real CT of other patients scores. The floor's NCC column is the validation",
             "slices against the training set (other patients). s / image: 1 thread, two sets made at once on 2 cores.",
             "", f"Model: `{results['checkpoint']}` at step {results['checkpoint_step']}. Machine: "
             f"{machine_line(results['machine'])}.", ""]
    for size, block in results["sizes"].items():
        lines += [f"## {size}²", ""] + size_section(size, block)
    path.write_text("\n".join(lines) + "\n")


README_BEGIN, README_END = "<!-- realism_ct:begin -->", "<!-- realism_ct:end -->"


def update_readme(results: dict, readme: Path) -> None:
    """The README's realism block: the tables of every size, from ``results``."""
    body = [f"Model step {results['checkpoint_step']}; {machine_line(results['machine'])}.", ""]
    for size, block in sorted(results["sizes"].items(), key=lambda kv: -int(kv[0])):
        body += [f"**{size}²**", ""] + size_section(size, block)
    text = readme.read_text()
    head, rest = text.split(README_BEGIN)
    _, tail = rest.split(README_END)
    readme.write_text(head + README_BEGIN + "\n" + "\n".join(body) + README_END + tail)


CARD_BEGIN, CARD_END = "<!-- realism:begin -->", "<!-- realism:end -->"


def update_model_card(results: dict, card: Path) -> None:
    """Rewrite the model card's validation table (between its markers) from ``results``."""
    rows = ["| size | set | patch-CNN AUC [95 %] | hand-feature AUC [95 %] | spectrum mid / high (× real) |",
            "|---|---|---|---|---|"]
    for size, block in results["sizes"].items():
        for name, r in [("floor", block["floor"])] + list(block["synthetic"].items()):
            sp = r["spectrum_ratio"]
            rows.append(f"| {size} | {name} | {_fmt_auc(r['patch_cnn'])} | {_fmt_auc(r['hand_features'])} | "
                        f"{sp['mid']:.2f} / {sp['high']:.2f} |")
    text = card.read_text()
    head, rest = text.split(CARD_BEGIN)
    _, tail = rest.split(CARD_END)
    body = (f"\nMeasured by `python scripts/realism_ct.py` on step {results['checkpoint_step']} "
            f"({machine_line(results['machine'])}); all numbers and the floor's meaning: docs/results/realism_ct.md.\n\n"
            + "\n".join(rows) + "\n")
    card.write_text(head + CARD_BEGIN + body + CARD_END + tail)


def targets(floor: dict, r: dict, anatomy: str, real_hu: dict) -> dict[str, bool]:
    margin = 0.10 if anatomy == "real" else 0.15
    hu = r["tissue_hu"]["median_hu"]
    return {
        f"patch-CNN AUC <= floor + {margin:.2f}": r["patch_cnn"]["auc"] <= floor["patch_cnn"]["auc"] + margin,
        f"hand-feature AUC <= floor + {margin:.2f}": r["hand_features"]["auc"] <= floor["hand_features"]["auc"] + margin,
        "spectrum mid/high within 20 %": all(0.8 <= r["spectrum_ratio"][b] <= 1.2 for b in ("mid", "high")),
        "tissue medians in the real range": all(real_hu["range"][t][0] <= hu[t] <= real_hu["range"][t][1]
                                                for t in TISSUES),
        "<= 2 % NCC > 0.95": r["memorization"]["rate_above_threshold"] <= 0.02,
    }


def chest_slices_of_distinct_patients(images: np.ndarray, patients: list[str], k: int) -> list[int]:
    """The first ``k`` slices (in patient order) through both lungs, one per patient, for the figure: the
    synthetic columns are chest slices too (the references are)."""
    from mcfast.anatomy.masks import lung_mask
    from mcfast.io.windows import model_to_hu
    from mcfast.synthesis.sources import MIN_REFERENCE_LUNG_FRACTION

    picked, seen = [], set()
    for i in sorted(range(len(images)), key=lambda j: (patients[j], j)):
        if patients[i] in seen:
            continue
        try:
            chest = lung_mask(np.asarray(model_to_hu(images[i]))).mean() >= MIN_REFERENCE_LUNG_FRACTION
        except InputError:
            chest = False
        if chest:
            picked.append(i)
            seen.add(patients[i])
        if len(picked) == k:
            break
    return picked


def write_figure(val: np.ndarray, sets: dict[str, np.ndarray], path: Path, per_set: int = 2, tile: int = 384) -> None:
    """Rows: lung, soft-tissue and bone windows; columns: held-out real slices, then each synthetic set."""
    from PIL import Image, ImageDraw

    from mcfast.io.windows import apply_window, get_window, model_to_hu

    columns = [("real (held out)", val[:per_set])] + [(k, v[:per_set]) for k, v in sets.items()]
    images = [(label, img) for label, group in columns for img in group]
    rows = []
    for window in ("lung", "soft_tissue", "bone"):
        w = get_window(window)
        row = [np.asarray(apply_window(model_to_hu(img), w.center, w.width)) for _, img in images]
        rows.append(np.concatenate([np.asarray(Image.fromarray((r * 255).round().astype(np.uint8)).resize(
            (tile, tile), Image.LANCZOS)) for r in row], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    draw = ImageDraw.Draw(grid)
    for k, (label, _) in enumerate(images):
        if k % per_set == 0:
            draw.text((k * tile + 6, 4), label, fill=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "realism_ct.toml")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "realism_ct")
    ap.add_argument("--results", type=Path, default=REPO / "docs" / "results")
    ap.add_argument("--generate-only", default=None, metavar="SET", help="only synthesize this set and stop")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the Markdown and the model card from the existing JSON")
    args = ap.parse_args()
    if args.report_only:
        results = json.loads((args.results / "realism_ct.json").read_text())
        write_markdown(results, args.results / "realism_ct.md")
        update_model_card(results, REPO / results["checkpoint"] / "README.md")
        update_readme(results, REPO / "README.md")
        return
    torch.set_num_threads(args.threads)
    os.chdir(REPO)  # recipes name data/ct_real/train relative to the repository
    cfg = tomllib.loads(args.config.read_text())
    sets = synthetic_sets(cfg)
    if args.generate_only:
        if args.generate_only not in sets:
            raise SystemExit(f"unknown set {args.generate_only!r}; sets: {', '.join(sets)}")
        generate(args.generate_only, sets[args.generate_only], cfg, args.out)
        return
    settings = SuiteSettings(**cfg["suite"])
    prepared = REPO / cfg["data"]["prepared"]
    train512, train_patients, train_files = load_split(prepared / "train")
    val512, val_patients, _ = load_split(prepared / "val")
    ckpt_config = json.loads((REPO / cfg["data"]["checkpoint"] / "config.json").read_text())
    n = cfg["synthesis"]["n"]
    results = {"config": cfg, "checkpoint": cfg["data"]["checkpoint"], "checkpoint_step": ckpt_config["step"],
               "machine": machine_info(), "n_train_slices": len(train512), "n_val_slices": len(val512),
               "n_val_patients": len(set(val_patients)), "sizes": {}}
    from mcfast.evaluate.two_sample import tissue_hu_medians
    for size in cfg["synthesis"]["sizes"]:
        print(f"[{size}] real sets and feature network", flush=True)
        train, val = resize_area(train512, size), resize_area(val512, size)
        net = train_feature_network(train, epochs=10, seed=settings.seed)
        pick = floor_subset(train_patients, n, settings.seed)
        floor = compare(train[pick], val, train, net, settings, groups_candidates=[train_patients[i] for i in pick],
                        groups_real=val_patients)
        # Training slices against the training set score 1 by construction: the floor's audit is the
        # validation slices (other patients) against the training set instead.
        floor["memorization"] = memorization(val, train, settings)
        real_hu = tissue_hu_medians(val)
        real_hu["range"] = {t: [float(np.nanmin(v)), float(np.nanmax(v))]
                            for t, v in real_hu["per_image_median_hu"].items()}
        block = {"floor": floor, "real_tissue_hu": real_hu, "synthetic": {}, "targets": {}}
        for name, spec in sets.items():
            if spec[1] != size:
                continue
            print(f"[{size}] {name}", flush=True)
            folder = generate(name, spec, cfg, args.out)
            images, masks, anatomy = load_synthetic(folder, n)
            groups = anatomy_groups(anatomy, train_files, train_patients)
            r = compare(images, val, train, net, settings, groups_candidates=groups, groups_real=val_patients,
                        masks=masks)
            timing = folder / "timing.json"
            if timing.is_file():
                r["seconds_per_image"] = json.loads(timing.read_text())["seconds_per_image"]
            r["recipe"], r["steps"] = spec[0], spec[2] or load_recipe(REPO / spec[0]).sampler.steps
            block["synthetic"][name] = r
            if spec[2] is None:
                block["targets"][name] = targets(floor, r, name.split("_")[0], real_hu)
        results["sizes"][str(size)] = block
        if size == max(cfg["synthesis"]["sizes"]):
            shown = {f"synthetic, {name.split('_')[0]} anatomy": load_synthetic(args.out / name, n)[0]
                     for name, spec in sets.items() if spec[1] == size and spec[2] is None}
            write_figure(val[chest_slices_of_distinct_patients(val, val_patients, 2)], shown,
                         REPO / "docs" / "img" / "ct_real_vs_synthetic.png")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "realism_ct.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    write_markdown(results, args.results / "realism_ct.md")
    update_model_card(results, REPO / cfg["data"]["checkpoint"] / "README.md")
    update_readme(results, REPO / "README.md")
    print(f"wrote {args.results / 'realism_ct.md'}")


if __name__ == "__main__":
    main()

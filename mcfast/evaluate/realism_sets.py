"""The parts every realism report shares: the prepared real splits, the synthetic sets it makes from
recipes, and the bits of Markdown it writes into README / model card blocks.

A report (``scripts/realism_ct.py``, ``scripts/realism_mg.py``) names its sets in a TOML config: recipes
written for 512² scaled to each size, optionally a sweep of step counts. Sets are synthesized into an
output folder (a re-run resumes them) and scored by :func:`mcfast.evaluate.realism_suite.compare`.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import tomllib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mcfast.errors import InputError
from mcfast.evaluate.machine import machine_info
from mcfast.evaluate.patch_cnn import DEFAULT_THREADS as PATCH_CNN_THREADS
from mcfast.evaluate.realism_suite import memorization_rate
from mcfast.evaluate.tissue import NOISE_TISSUES
from mcfast.io.datasets import read_manifest
from mcfast.io.images import read_npy
from mcfast.synthesis.recipe import load_recipe, validate

RECIPE_SIZE = 512  # the size the report recipes are written for


def load_split(folder: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """(images (N, H, W) model space, patient / woman per image, file name per image) of a prepared split."""
    manifest = read_manifest(folder)
    images = np.stack([read_npy(folder / it["file"]) for it in manifest["items"]])
    return images, [it["patient"] for it in manifest["items"]], [it["file"] for it in manifest["items"]]


def resize_area(images: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased (area) downsampling, the same for every real set."""
    if images.shape[-1] == size:
        return images
    t = torch.from_numpy(np.ascontiguousarray(images))[:, None]
    return F.interpolate(t, size=(size, size), mode="area")[:, 0].numpy()


def floor_subset(patients: list[str], n: int, seed: int) -> list[int]:
    """n training images, as many patients as possible (one image each, in a seeded order)."""
    rng = np.random.default_rng(seed)
    by_patient: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        by_patient.setdefault(p, []).append(i)
    order = [by_patient[p] for p in rng.permutation(sorted(by_patient))]
    picked: list[int] = []
    while len(picked) < min(n, len(patients)):
        for idx in order:
            left = [i for i in idx if i not in picked]
            if left and len(picked) < n:
                picked.append(int(rng.choice(left)))
    return picked


def scaled_recipe(path: Path, size: int, steps: str | None = None):
    """A 512² recipe at ``size``: ILVR factors, lesion sizes and the padding band scale with the image."""
    r = load_recipe(path)
    scale = size / RECIPE_SIZE
    r.image_size = size
    r.anatomy.factor = max(1, int(round(r.anatomy.factor * scale)))
    r.anatomy.padding_band = int(round(r.anatomy.padding_band * scale))
    for p in r.pathology:
        p.factor = max(1, int(round(p.factor * scale)))
        p.size = (max(4, int(round(p.size[0] * scale))), max(4, int(round(p.size[1] * scale))))
    if steps is not None:
        r.sampler.steps = steps
    return validate(r)


def synthetic_sets(cfg: dict) -> dict[str, tuple]:
    """name -> (recipe path, size, steps or None) from a report config's [synthesis] table."""
    syn = cfg["synthesis"]
    sets = {f"{name}_{size}": (path, size, None) for size in syn["sizes"] for name, path in syn["recipes"].items()}
    sweep = syn.get("step_sweep")
    if sweep:
        for steps in sweep["steps"]:
            sets[f"{sweep['recipe']}_{sweep['size']}_steps{steps}"] = (syn["recipes"][sweep["recipe"]],
                                                                       sweep["size"], steps)
    return sets


def downsampled_sets(cfg: dict) -> dict[str, tuple[str, int]]:
    """name -> (source set, size): with ``[synthesis] downsample_from = S``, every recipe's S² set
    area-downsampled to each smaller size, the way the real sets at that size are made from S² scans
    (a model trained on crops of S² images has learned texture at S²'s pixel size, not at the smaller one's)."""
    syn = cfg["synthesis"]
    src = syn.get("downsample_from")
    if not src:
        return {}
    return {f"{name}_{src}to{size}": (f"{name}_{src}", size)
            for size in syn["sizes"] if size < src for name in syn["recipes"]}


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """Lesion masks (N, H, W) at another size: a pixel is lesion when at least half of its area is."""
    return resize_area(masks.astype(np.float32), size) >= 0.5


def generate(name: str, spec: tuple, cfg: dict, out: Path, base: Path, sampler: dict | None = None) -> Path:
    """Synthesize (or finish) set ``name`` into ``out/name``; records seconds per image in timing.json.
    ``sampler``: recipe [sampler] keys to override (method, eta, x0_guidance, ...)."""
    from mcfast.synthesis.pipeline import synthesize

    path, size, steps = spec
    recipe = scaled_recipe(base / path, size, steps)
    if sampler:
        for key, value in sampler.items():
            if not hasattr(recipe.sampler, key):
                raise InputError(f"{name}: unknown sampler key {key!r}")
            setattr(recipe.sampler, key, value)
        validate(recipe)
    folder = out / name
    started = time.perf_counter()
    result = synthesize(base / cfg["data"]["checkpoint"], recipe, cfg["synthesis"]["n"], folder,
                        precision=cfg["synthesis"]["precision"], progress=True, channels_last=True)
    if result.written:
        record_timing(folder, (time.perf_counter() - started) / result.written, result.written)
    return folder


TIMING_FILE = "timing.json"  # seconds per image of the images the last call made, kept beside a set


def record_timing(folder: Path, seconds: float, images: int) -> None:
    """Write the seconds per image of the ``images`` a call just made into ``folder``."""
    timing = {"seconds_per_image": round(seconds, 2), "threads": torch.get_num_threads(), "images_timed": images}
    (folder / TIMING_FILE).write_text(json.dumps(timing))


def sets_scored_at(size: int, sets: dict[str, tuple], cfg: dict) -> list[tuple[str, tuple, str, int | None]]:
    """(name, spec, the set it is synthesized as, size to area-downsample to or None) of every set a
    report scores at ``size``: the sets sampled at that size, then the :func:`downsampled_sets`."""
    todo = [(name, spec, name, None) for name, spec in sets.items() if spec[1] == size]
    todo += [(name, sets[src], src, size) for name, (src, target) in downsampled_sets(cfg).items() if target == size]
    return todo


def feature_net_and_floor(train: np.ndarray, val: np.ndarray, train_groups: list[str], val_groups: list[str],
                          n: int, settings, modality: str):
    """The feature network of one size and the real-vs-real floor: ``n`` training images (one per patient
    first) against the validation set, scored by :func:`mcfast.evaluate.realism_suite.compare`."""
    from mcfast.evaluate.realism import train_feature_network
    from mcfast.evaluate.realism_suite import compare, memorization

    net = train_feature_network(train, epochs=10, seed=settings.seed)
    pick = floor_subset(train_groups, n, settings.seed)
    floor = compare(train[pick], val, train, net, settings, modality=modality,
                    groups_candidates=[train_groups[i] for i in pick], groups_real=val_groups)
    # Training images against the training set score 1 by construction: the floor's audit is the
    # validation images (other patients) against the training set instead.
    floor["memorization"] = memorization(val, train, settings)
    return net, floor


def scored_set(made_as: str, spec: tuple, downsample_to: int | None, cfg: dict, out: Path, base: Path,
               prepare: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None):
    """(folder, images, lesion masks, anatomy sources) of one scored set: synthesized (or resumed), then
    ``prepare``d at the sampled size (mammograms: the films' framing), then reduced like the real images
    when ``downsample_to`` is given."""
    folder = generate(made_as, spec, cfg, out, base)
    images, masks, anatomy = load_synthetic(folder, cfg["synthesis"]["n"])
    if prepare is not None:
        images, masks = prepare(images, masks)
    if downsample_to is not None:
        images, masks = resize_area(images, downsample_to), resize_masks(masks, downsample_to)
    return folder, images, masks, anatomy


def record_set(r: dict, folder: Path, spec: tuple, base: Path) -> dict:
    """Add to a set's scores how it was made: seconds per image, recipe, steps, the size it was sampled at."""
    if seconds_per_image(folder) is not None:
        r["seconds_per_image"] = seconds_per_image(folder)
    r["recipe"], r["steps"] = spec[0], spec[2] or load_recipe(base / spec[0]).sampler.steps
    r["sampled_at"] = spec[1]
    return r


def load_synthetic(folder: Path, n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images (n, H, W) model space, lesion masks (n, H, W) bool, anatomy source per image) of a set."""
    items = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "image.npy").is_file())[:n]
    images = np.stack([np.load(p / "image.npy") for p in items]).astype(np.float32)
    masks = np.stack([np.load(p / "labels.npy") > 0 for p in items])
    anatomy = [json.loads((p / "meta.json").read_text())["anatomy"] for p in items]
    return images, masks, anatomy


def anatomy_training_index(anatomy: list[str], train_files: list[str]) -> list[int]:
    """Per synthetic image, the index in the training split of the image that guided its anatomy (its
    meta.json ``anatomy`` names the prepared file; -1 for a phantom)."""
    index_of = {f: k for k, f in enumerate(train_files)}
    return [index_of.get(Path(a).name, -1) for a in anatomy]


def anatomy_groups(anatomy: list[str], train_files: list[str], train_patients: list[str]) -> list[str]:
    """A synthetic image guided by a real training image belongs to that image's patient (fold grouping);
    one guided by a phantom is its own group."""
    return [train_patients[k] if k >= 0 else a
            for k, a in zip(anatomy_training_index(anatomy, train_files), anatomy)]


def seconds_per_image(folder: Path) -> float | None:
    timing = folder / TIMING_FILE
    return json.loads(timing.read_text())["seconds_per_image"] if timing.is_file() else None


def scoring_machine() -> dict:
    """:func:`machine_info` plus the thread count the patch CNN trains on whatever the process's count
    (:data:`mcfast.evaluate.patch_cnn.DEFAULT_THREADS`)."""
    return {**machine_info(), "patch_cnn_threads": PATCH_CNN_THREADS}


def machine_line(info: dict) -> str:
    """The machine sentence of a report; reports scored before the patch CNN had its own thread count
    (no ``patch_cnn_threads``) trained it on the scoring pass's threads."""
    cpu = info.get("cpu_model") or info["processor"]
    cnn = f" (the patch CNN on {info['patch_cnn_threads']})" if "patch_cnn_threads" in info else ""
    return (f"{info['cpu_count']} CPU cores ({cpu}), no GPU" if not info["cuda"] else "GPU") + \
        f", torch {info['torch']}, {info['torch_threads']} thread(s) in the scoring pass{cnn}"


def checkpoint_fields(config: dict) -> dict:
    """What a report records about the weights it scored: ``checkpoint_step`` is the step of the run that
    wrote them (what ``config.json`` calls ``step``), ``checkpoint_total_steps`` the steps of every
    warm-started session together (its ``history``), the number a reader wants."""
    total = (config.get("history") or {}).get("total_steps", config["step"])
    return {"checkpoint_step": config["step"], "checkpoint_total_steps": total}


def model_steps(results: dict) -> str:
    """"11,100 training steps (step 2100 of its last run)" for a report; older results without the total
    give "step 2100"."""
    step, total = results["checkpoint_step"], results.get("checkpoint_total_steps")
    if total is None:
        return f"step {step}"
    return f"{total:,} training steps" + (f" (step {step:,} of its last run)" if total != step else "")


def fmt_auc(d: dict) -> str:
    """Point AUC [interval]; a patch-CNN result of several retrained CNNs adds the range of their own
    AUCs (the test's training noise, which the bootstrap interval over images does not hold)."""
    runs = d.get("repeat_aucs") or []
    spread = f" (runs {min(runs):.2f}–{max(runs):.2f})" if runs else ""
    return f"{d['auc']:.2f} [{d['auc_lo']:.2f}, {d['auc_hi']:.2f}]{spread}"


def fmt_noise(noise_hu: dict | None) -> str:
    """Lung / fat / soft-tissue pixel noise (HU, :func:`mcfast.evaluate.tissue.tissue_noise_hu`'s ``noise_hu``);
    "–" for a set scored before it was measured."""
    if not noise_hu:
        return "–"
    return " / ".join(f"{noise_hu[t]:.1f}" for t in NOISE_TISSUES)


def patch_cnn_note(config: dict) -> list[str]:
    """The report sentence on how the patch-CNN column was made (``[suite] cnn_repeats``); none for one run."""
    repeats = int(config.get("suite", {}).get("cnn_repeats", 1))
    if repeats <= 1:
        return []
    return [f"Patch CNN: each image is scored by the mean of {repeats} CNNs trained per fold from other initial",
            "weights and crops (one CNN's AUC moved by 0.2 between two CPUs on the same images); \"runs\" gives each",
            "one's own AUC."]


def fmt_families(hand: dict) -> str:
    """The hand-feature test's point AUC of each feature family alone (intensity / spectrum / gradient):
    which property gives a set away; "–" for results made before the families were scored."""
    from mcfast.evaluate.hand_features import FEATURE_GROUPS

    groups = hand.get("group_auc")
    return " / ".join(f"{groups[name]:.2f}" for name in FEATURE_GROUPS) if groups else "–"


def two_sample_targets(floor: dict, r: dict, anatomy: str) -> dict[str, bool]:
    """The targets both reports share: AUCs within floor + 0.10 (real anatomy) / + 0.15 (phantom),
    spectrum bands within ±20 %, at most 2 % of images with NCC above the audit threshold (to a training
    image other than their own anatomy reference: :func:`mcfast.evaluate.realism_suite.memorization_rate`)."""
    margin = 0.10 if anatomy == "real" else 0.15
    return {
        f"patch-CNN AUC <= floor + {margin:.2f}": r["patch_cnn"]["auc"] <= floor["patch_cnn"]["auc"] + margin,
        f"hand-feature AUC <= floor + {margin:.2f}": r["hand_features"]["auc"] <= floor["hand_features"]["auc"] + margin,
        "spectrum mid/high within 20 %": all(0.8 <= r["spectrum_ratio"][b] <= 1.2 for b in ("mid", "high")),
        f"<= 2 % NCC > {r['memorization']['threshold']}": memorization_rate(r["memorization"]) <= 0.02,
    }


#: What a report's NCC column counts (the sentence both realism reports print under their introduction).
MEMORIZATION_NOTE = [
    "NCC > 0.95: the share of images whose nearest training image (high-passed, shift-aligned NCC, inserted",
    "lesions blanked) scores above 0.95. An image guided by a training image (real anatomy) holds that image's",
    "layout by design, so it is counted against the training images *other* than its own anatomy reference,",
    "the question the audit asks (did the model copy someone?) and the number the target uses; in brackets,",
    "the share against every training image and how often the nearest one was the image's own reference.",
]


def fmt_memorization(audit: dict) -> str:
    """A report's NCC cell: the share above the threshold that the target uses, and beside it, for images
    guided by a training image, the share against every training image (their own reference included)."""
    text = f"{memorization_rate(audit):.0%}"
    if "other" in audit:
        text += f" (all: {audit['rate_above_threshold']:.0%}; nearest is own reference: {audit['nearest_is_own_reference']:.0%})"
    return text


def replace_block(path: Path, begin: str, end: str, body: str) -> None:
    """Rewrite the text between the ``begin`` and ``end`` markers of ``path`` (both must be there)."""
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path}: markers {begin} ... {end} not found")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(head + begin + body + end + tail)


def report_arguments(doc: str, name: str, repo: Path) -> argparse.Namespace:
    """The command line the report scripts take (``name``: "realism_ct", "realism_mg", "steps_study")."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--config", type=Path, default=repo / "configs" / f"{name}.toml")
    ap.add_argument("--out", type=Path, default=repo / "out" / name, help="synthetic sets (kept, resumed)")
    ap.add_argument("--results", type=Path, default=repo / "docs" / "results")
    ap.add_argument("--generate-only", default=None, metavar="SET", help="only synthesize this set and stop")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the Markdown, the model card and the README block from the existing JSON")
    return ap.parse_args()


def start_report(args: argparse.Namespace, name: str, repo: Path, rewrite: Callable[[dict, Path], None],
                 sets_of: Callable[[dict], dict] = synthetic_sets,
                 make: Callable[[str, object, dict, Path], Path] | None = None) -> tuple[dict, dict] | None:
    """Handle --report-only (``rewrite(results, results folder)`` the documents from the saved
    ``name``.json) and --generate-only (``make`` one of the config's ``sets_of``; default: ``generate``);
    otherwise return (config, sets) for the full report. Recipes name their data relative to the
    repository, so the report runs there."""
    if args.report_only:
        rewrite(json.loads((args.results / f"{name}.json").read_text()), args.results)
        return None
    torch.set_num_threads(args.threads)
    os.chdir(repo)
    cfg = tomllib.loads(args.config.read_text())
    sets = sets_of(cfg)
    if args.generate_only:
        if args.generate_only not in sets:
            raise SystemExit(f"unknown set {args.generate_only!r}; sets: {', '.join(sets)}")
        if make is None:
            generate(args.generate_only, sets[args.generate_only], cfg, args.out, repo)
        else:
            make(args.generate_only, sets[args.generate_only], cfg, args.out)
        return None
    return cfg, sets


def save_results(args: argparse.Namespace, name: str, results: dict, rewrite: Callable[[dict, Path], None]) -> Path:
    """Write ``name``.json into the results folder, then ``rewrite`` the documents from it."""
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{name}.json"
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    rewrite(results, args.results)
    return path

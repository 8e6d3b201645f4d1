"""Where the sampler loses fine texture, and the epsilon scaling that gives it back (training crops only).

    python scripts/eps_scale_study.py [--config configs/eps_scale_ct.toml] [--threads 2]
    python scripts/eps_scale_study.py --config configs/eps_scale_mg.toml      # the mammography model
    python scripts/eps_scale_study.py --report-only     # rewrite the .md from the .json

On crops of training-split slices (the validation patients are never read), against the crops
themselves, the radial power of each frequency band (mcfast.evaluate.two_sample.spectrum_band_ratios):
1. one x0 prediction of the network from the crop noised to t (what the denoiser keeps);
2. the full 1000-step ancestral chain from the crop noised to t (what sampling keeps);
3. the recipe's own sampler (SDEdit start, anatomy guidance from the crop) at each eps_scale of the grid,
   and the config's rule picks one. Writes docs/results/<[report] name>.{json,md}.
Crops come one per patient / woman first (``[crops] one_per_patient``): a patient with many slices and
strong grain would otherwise set the target texture.
"""
from __future__ import annotations

import argparse
import json
import math
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

from mcfast.atomic import write_text
from mcfast.diffusion.eps_scaling import scale_eps
from mcfast.diffusion.gaussian import create_diffusion
from mcfast.diffusion.samplers import randn, sample, sdedit_start
from mcfast.evaluate.classifier import machine_info
from mcfast.evaluate.realism_sets import floor_subset, load_split, machine_line
from mcfast.evaluate.two_sample import DEFAULT_BANDS, spectrum_band_ratios
from mcfast.guidance.conditions import Condition
from mcfast.guidance.ilvr import ILVRGuidance
from mcfast.synthesis.plan import from_model
from mcfast.models.inference import make_model_fn
from mcfast.seeding import item_seed
from mcfast.synthesis.recipe import load_recipe
from mcfast.train.checkpoint import load_model

REPO = Path(__file__).resolve().parent.parent
# Native units of a modality's mean shift column: HU for CT, film intensity [0, 1] for mammograms.
SHIFT_UNITS = {"ct": ("HU", 1), "mg": ("intensity", 3)}
# A mammogram crop counts as breast where the film is above the blank background (prepare_mammogram: 0).
MG_BACKGROUND = 0.02


def crop_holds_tissue(modality: str, crop: np.ndarray, c: dict) -> bool:
    """CT: some body (mean HU above ``min_mean_hu``), not just air; MG: at least ``min_breast_fraction``
    of the crop inside the breast, not the padding around it."""
    values = from_model(modality, crop)
    if modality == "ct":
        return float(values.mean()) > c["min_mean_hu"]
    return float((values > MG_BACKGROUND).mean()) >= c["min_breast_fraction"]


def training_crops(modality: str, images: np.ndarray, patients: list[str], c: dict) -> tuple[np.ndarray, list[int]]:
    """(``c["n"]`` crops of ``c["size"]``², the images they come from): each from a different image holding
    tissue, the images in a seeded order, one per patient first when ``c["one_per_patient"]``
    (realism_sets.floor_subset)."""
    n, size, seed = c["n"], c["size"], c["seed"]
    rng = np.random.default_rng(seed)
    if c.get("one_per_patient", False):
        order = floor_subset(patients, len(patients), seed)
    else:
        order = [int(k) for k in rng.permutation(len(images))]
    crops, sources = [], []
    for k in order:
        img = images[k]
        for _ in range(50):  # a few tries per image for a crop that is not all air / padding
            y, x = rng.integers(0, img.shape[0] - size + 1), rng.integers(0, img.shape[1] - size + 1)
            crop = img[y:y + size, x:x + size]
            if crop_holds_tissue(modality, crop, c):
                crops.append(crop)
                sources.append(int(k))
                break
        if len(crops) == n:
            return np.stack(crops).astype(np.float32), sources
    raise SystemExit(f"only {len(crops)} of {n} crops holding tissue in {len(images)} images")


def band_row(modality: str, real: np.ndarray, images: torch.Tensor) -> dict:
    ratios = spectrum_band_ratios(real, images[:, 0].numpy())
    shift = float((from_model(modality, images[:, 0].numpy()) - from_model(modality, real)).mean())
    return {**{b: round(ratios[b], 4) for b in DEFAULT_BANDS}, "mean_shift": round(shift, SHIFT_UNITS[modality][1])}


def crop_generators(n: int, seed: int) -> list[torch.Generator]:
    """One generator per crop (mcfast.seeding.item_seed), so a crop's noise does not depend on the others."""
    return [torch.Generator().manual_seed(item_seed(seed, k)) for k in range(n)]


def single_step(fn, diffusion, crops: torch.Tensor, t: int, seed: int) -> torch.Tensor:
    tt = torch.full((len(crops),), t, dtype=torch.long)
    x_t = diffusion.q_sample(crops, tt, noise=randn(tuple(crops.shape), crop_generators(len(crops), seed), "cpu"))
    eps, _ = diffusion.split_model_output(fn(x_t, tt), x_t)
    return diffusion.predict_xstart_from_eps(x_t, tt, eps).clamp(-1, 1)


def chain(fn, diffusion, crops: torch.Tensor, start_step: int, seed: int, method: str = "ddpm", eta: float = 0.0,
          guidance_of=None) -> torch.Tensor:
    """``crops`` noised to ``start_step`` and sampled back by ``diffusion``'s chain (per-crop seeds)."""
    noise = randn(tuple(crops.shape), crop_generators(len(crops), seed), "cpu")
    x_start, first = sdedit_start(diffusion, crops, noise, start_step)
    gens = crop_generators(len(crops), seed + 1)
    guidance = guidance_of(diffusion) if guidance_of is not None else None
    return sample(fn, diffusion, tuple(crops.shape), method=method, eta=eta, noise=x_start, start_at=first,
                  generator=gens, guidance=guidance, progress=False)


def pick(rows: list[dict], bands: list[str]) -> float:
    """The config's rule: the scale whose largest |log(band ratio)| is smallest (ties: the smaller)."""
    def worst(r):
        return max(abs(math.log(r[b])) for b in bands)
    return min(rows, key=lambda r: (round(worst(r), 6), r["eps_scale"]))["eps_scale"]


def run(cfg: dict, threads: int) -> dict:
    torch.set_num_threads(threads)
    d, c = cfg["data"], cfg["crops"]
    bands = list(cfg["calibration"]["bands"])
    modality = d["modality"]
    images, patients, _ = load_split(REPO / d["prepared"])
    crops_np, sources = training_crops(modality, images, patients, c)
    crops = torch.from_numpy(crops_np)[:, None]
    model, diffusion_kwargs, config = load_model(REPO / d["checkpoint"])
    base_fn = make_model_fn(model, torch.device("cpu"), d["precision"], channels_last=True)
    recipe = load_recipe(REPO / d["recipe"])
    seed = c["seed"] + 1
    results: dict = {"config": cfg, "modality": modality, "checkpoint": d["checkpoint"],
                     "checkpoint_step": config["step"],
                     "machine": machine_info(), "n_crops": len(crops), "crop_size": c["size"],
                     "n_slices": len(images), "n_patients": len(set(patients)),
                     "n_crop_patients": len({patients[k] for k in sources}),
                     "bands": bands}
    with torch.no_grad():
        full = create_diffusion(**diffusion_kwargs)
        results["single_step"] = [{"t": t, **band_row(modality, crops_np, single_step(base_fn, full, crops, t, seed))}
                                  for t in cfg["diagnosis"]["single_step_t"]]
        results["full_chain"] = []
        for start in cfg["diagnosis"]["chain_starts"]:
            started = time.perf_counter()
            out = chain(base_fn, full, crops, start, seed)
            results["full_chain"].append({"start_step": start, **band_row(modality, crops_np, out),
                                          "seconds": round(time.perf_counter() - started, 1)})
            print("full chain", results["full_chain"][-1], flush=True)
        s, a = recipe.sampler, recipe.anatomy
        spaced = create_diffusion(**{**diffusion_kwargs, "respacing": s.steps})

        def guidance_of(diffusion):
            conditions = [[Condition(ref=crops[k], factor=a.factor, stop_step=a.stop_step, filter=a.filter,
                                     name="anatomy")] for k in range(len(crops))]
            return ILVRGuidance(conditions, diffusion, generator=[item_seed(seed + 2, k) for k in range(len(crops))])

        results["recipe_sampler"] = {"method": s.method, "steps": s.steps, "eta": s.eta,
                                     "start_step": s.start_step, "anatomy_factor": a.factor,
                                     "anatomy_stop_step": a.stop_step}
        results["calibration"] = []
        for scale in cfg["calibration"]["grid"]:
            out = chain(scale_eps(base_fn, scale), spaced, crops, s.start_step, seed, s.method, s.eta, guidance_of)
            results["calibration"].append({"eps_scale": float(scale), **band_row(modality, crops_np, out)})
            print("eps_scale", results["calibration"][-1], flush=True)
    results["pick"] = pick(results["calibration"], bands)
    return results


def markdown(r: dict, name: str) -> str:
    modality = r.get("modality", "ct")
    unit, digits = SHIFT_UNITS[modality]
    what = {"ct": ("CT", "slices", "patients", "the 512² CT recipes"),
            "mg": ("mammography", "films", "women", "the 512² mammography recipes")}[modality]
    bands = r["bands"]
    cols = list(DEFAULT_BANDS)
    head = "| " + " | ".join(f"{b} (× real)" for b in cols) + f" | mean {unit} shift |"
    sep = "|---" * (len(cols) + 1) + "|"
    rs = r["recipe_sampler"]
    shift = f"{{:+.{digits}f}}".format
    lines = [
        f"# Epsilon scaling of the {what[0]} model: where sampling loses fine texture, and the scale that restores it", "",
        f"Generated by `python scripts/eps_scale_study.py --config configs/{name}.toml`; every number is in "
        f"`{name}.json`. Real side: the crops themselves — "
        f"{r['n_crops']} crops of {r['crop_size']}² from {r['n_crops']} training-split {what[1]} of "
        f"{r.get('n_crop_patients', '?')} {what[2]} ({r['n_slices']} {what[1]} of {r['n_patients']} {what[2]} to "
        f"draw from). The validation {what[2]} are not read.",
        "Band powers are radial power-spectrum bands (cycles / pixel: low < 0.05, mid 0.05–0.2, high 0.2–0.5) "
        f"of the outputs over those of the crops; the mean {unit} shift is output minus crop.", "",
        f"Model: `{r['checkpoint']}` at step {r['checkpoint_step']}. Machine: {machine_line(r['machine'])}.", "",
        "## 1. One x0 prediction from the crop noised to t", "",
        "| t " + head, "|---" + sep,
        *[f"| {x['t']} | " + " | ".join(f"{x[b]:.2f}" for b in cols) + f" | {shift(x['mean_shift'])} |"
          for x in r["single_step"]], "",
        "## 2. The full 1000-step ancestral chain from the crop noised to t", "",
        "| start t " + head + " s |", "|---" + sep + "---|",
        *[f"| {x['start_step']} | " + " | ".join(f"{x[b]:.2f}" for b in cols) + f" | {shift(x['mean_shift'])} | "
          f"{x['seconds']} |" for x in r["full_chain"]], "",
        f"## 3. The recipe's sampler ({rs['method']}, respacing {rs['steps']}, SDEdit from t = {rs['start_step']}, "
        f"anatomy guidance φ_{rs['anatomy_factor']} while t ≥ {rs['anatomy_stop_step']}) against eps_scale", "",
        "| eps_scale " + head, "|---" + sep,
        *[f"| {x['eps_scale']:.2f}{' ✓' if x['eps_scale'] == r['pick'] else ''} | "
          + " | ".join(f"{x[b]:.2f}" for b in cols) + f" | {shift(x['mean_shift'])} |" for x in r["calibration"]], "",
        f"✓: the rule fixed in the config (the smallest worst-band |log ratio| over "
        f"{', '.join(bands)}) picks **eps_scale = {r['pick']:.2f}**; "
        + (f"{what[3]} carry it (`[sampler] eps_scale`)." if r.get("applied", True) else
           f"**not applied**: {what[3]} keep eps_scale = 1. Why: {r['not_applied_because']}"), "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "eps_scale_ct.toml")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the existing .json")
    args = ap.parse_args()
    cfg = tomllib.loads(args.config.read_text())
    name = cfg["report"]["name"]
    results_path = REPO / "docs" / "results" / name
    if args.report_only:
        results = json.loads(results_path.with_suffix(".json").read_text())
    else:
        results = run(cfg, args.threads)
    # Whether the recipes take the pick is a decision recorded in the config, not a measurement.
    results["applied"] = bool(cfg["calibration"].get("apply", True))
    if not results["applied"]:
        results["not_applied_because"] = cfg["calibration"]["not_applied_because"]
    write_text(results_path.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    write_text(results_path.with_suffix(".md"), markdown(results, name))
    print(f"eps_scale pick {results['pick']}; wrote {results_path.with_suffix('.md')}")


if __name__ == "__main__":
    main()

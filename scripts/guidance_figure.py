"""Figure + numbers for docs: guided synthesis on real references, and the low-frequency agreement.

    python scripts/guidance_figure.py --ckpt-ct RUN_CT --ckpt-mg RUN_MG --n 6 --out runs/figure

Runs configs/lung_ct_real.toml and configs/mammo_mias.toml (real data in ../shared/data), an
unguided baseline from the same starting noise, and writes docs/img/guidance_real.png and
docs/results/guidance_agreement.json (small derived numbers and a thumbnail grid, no data).
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mcfast.diffusion.gaussian import create_diffusion
from mcfast.diffusion.samplers import sample
from mcfast.synthesis.agreement import condition_errors, summarise
from mcfast.synthesis.pipeline import initial_noise, synthesize
from mcfast.synthesis.plan import plan_item
from mcfast.synthesis.recipe import load_recipe
from mcfast.train.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]


def unguided(ckpt: Path, recipe, plans) -> np.ndarray:
    model, dkw, _ = load_model(ckpt)
    diffusion = create_diffusion(**{**dkw, "respacing": recipe.sampler.steps})
    noise = initial_noise(recipe.seed, [p.index for p in plans], recipe.image_size)
    x = sample(model, diffusion, noise.shape, noise=noise, generator=torch.Generator().manual_seed(1), progress=False)
    return x.numpy()[:, 0]


def run(modality: str, ckpt: Path, recipe_path: Path, n: int, out: Path) -> tuple[dict, list[np.ndarray]]:
    recipe = load_recipe(recipe_path)
    synthesize(ckpt, recipe, n, out, progress=False)
    plans = [plan_item(recipe, i) for i in range(n)]
    guided = [np.load(out / f"{i:06d}" / "image.npy") for i in range(n)]
    base = unguided(ckpt, recipe, plans)
    result = {"recipe": str(recipe_path.relative_to(ROOT)), "n": n, "steps": recipe.sampler.steps,
              "guided": summarise([condition_errors(p, g) for p, g in zip(plans, guided)]),
              "unguided": summarise([condition_errors(p, b) for p, b in zip(plans, base)])}
    display = "lung.png" if modality == "ct" else "image.png"
    rows = [np.concatenate([np.asarray(Image.open(out / f"{i:06d}" / f).convert("RGB"))
                            for f in ("anatomy_ref.png", "pathology_ref.png", display, "overlay.png")], 1)
            for i in range(min(n, 3))]
    return result, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt-ct", type=Path, required=True)
    ap.add_argument("--ckpt-mg", type=Path, required=True)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("runs/figure"))
    args = ap.parse_args()
    results, rows = {}, []
    for modality, ckpt, recipe in (("ct", args.ckpt_ct, "configs/lung_ct_real.toml"),
                                   ("mg", args.ckpt_mg, "configs/mammo_mias.toml")):
        results[modality], r = run(modality, ckpt, ROOT / recipe, args.n, args.out / modality)
        rows += r
    results["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU"
    results["note"] = ("weighted MAE in model space [-1, 1] between phi_n(output) and phi_n(reference) at each "
                       "condition's own factor; 'unguided' = same model and starting noise without guidance")
    (ROOT / "docs" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "docs" / "results" / "guidance_agreement.json").write_text(json.dumps(results, indent=2) + "\n")
    grid = Image.fromarray(np.concatenate(rows, 0))
    grid = grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST)
    grid.save(ROOT / "docs" / "img" / "guidance_real.png", optimize=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

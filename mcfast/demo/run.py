"""`mcfast demo`: annotated synthetic lung CT and mammograms from the shipped default models.

Runs the built-in recipes (phantom anatomy + procedural lesions) through the full pipeline:
multi-condition weighted ILVR sampling, NPY/PNG per CT window, masks, COCO, DICOM + DICOM SEG,
and an HTML contact sheet. Finished images are skipped on a re-run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mcfast.demo.contact_sheet import write_contact_sheet
from mcfast.demo.defaults import default_checkpoint, demo_recipe


@dataclass
class DemoSettings:
    out: Path
    n: int = 4
    steps: str | None = None
    ckpt_ct: Path | None = None
    ckpt_mg: Path | None = None
    modalities: tuple[str, ...] = ("ct", "mg")
    backend: str | None = None
    progress: bool = True


def run_demo(settings: DemoSettings) -> Path:
    from mcfast.synthesis.pipeline import synthesize
    from mcfast.synthesis.recipe import load_recipe, validate

    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for modality in settings.modalities:
        ckpt = {"ct": settings.ckpt_ct, "mg": settings.ckpt_mg}[modality] or default_checkpoint(modality)
        recipe = load_recipe(demo_recipe(modality))
        if settings.steps:
            recipe.sampler.steps = str(settings.steps)
        if settings.backend:
            recipe.sampler.backend = settings.backend
        validate(recipe)
        run_dir = out / ("lung_ct" if modality == "ct" else "mammography")
        print(f"[{modality}] {settings.n} images, model {ckpt}, recipe {recipe.source}, "
              f"{recipe.sampler.steps} steps -> {run_dir}", flush=True)
        start = time.perf_counter()
        result = synthesize(ckpt, recipe, settings.n, run_dir, progress=settings.progress)
        print(f"[{modality}] wrote {result.written}, skipped {result.skipped} finished, "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        runs.append((run_dir, modality))
    return write_contact_sheet(out, runs)

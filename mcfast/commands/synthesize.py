"""`mcfast synthesize`: annotated synthetic images from a trained run and a recipe."""
from __future__ import annotations

import argparse
from pathlib import Path

from mcfast.commands.common import one_line_errors, positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synthesize", help="make annotated synthetic images with multi-condition ILVR guidance",
        description="Sample --n images from the run at --ckpt, steered by the anatomy and pathology references of "
                    "--recipe (TOML; examples in configs/). Writes one folder per image (NPY, PNGs per CT window or "
                    "the mammogram, the lesion mask, references, overlay, optional DICOM and DICOM SEG, meta.json), "
                    "coco.json for the whole run and provenance.json. Re-running the same command skips finished "
                    "images. Under 'torchrun --nproc-per-node K -m mcfast synthesize --num-images N ...' the images are split "
                    "across the K processes and merged into one coco.json.")
    p.add_argument("--ckpt", type=Path, required=True,
                   help="run folder made by 'mcfast train', a shipped model folder, or a shipped model's name: "
                        "ct, mg (the real-scan defaults), ct:phantom64, mg:phantom64")
    p.add_argument("--recipe", type=Path, required=True, help="recipe TOML (see configs/*.toml)")
    # --num-images: torchrun's own parser rejects "--n" as an ambiguous abbreviation of its options.
    p.add_argument("--n", "--num-images", dest="n", type=positive_int, default=8,
                   help="number of images (default 8); under torchrun write --num-images")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images per sampling batch, >= 1 (default: the recipe's)")
    p.add_argument("--steps", default=None, help="override the recipe's respacing, e.g. 50, ddim25, or 50+tail9 (9 more steps below "
                        "the lowest one above 0, where the finest grain forms)")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp2m"], default=None,
                   help="override the recipe's sampler: ancestral DDPM, DDIM (with --eta) or DPM-Solver++(2M)")
    p.add_argument("--eta", type=float, default=None, help="override the recipe's DDIM stochasticity (>= 0)")
    p.add_argument("--x0-guidance", dest="x0_guidance", action="store_true", default=None,
                   help="also correct each step's x0 prediction towards the references (DDNM-style; helps few steps)")
    p.add_argument("--no-x0-guidance", dest="x0_guidance", action="store_false",
                   help="only the ILVR correction of x_t (overrides a recipe's x0_guidance = true)")
    p.add_argument("--eps-scale", type=float, default=None, metavar="LAMBDA",
                   help="override the recipe's epsilon scaling: divide the network's noise prediction by "
                        "LAMBDA (> 0; 1 = off; corrects the exposure bias that smooths fine texture, "
                        "see docs/guidance.md)")
    p.add_argument("--deterministic-below", type=int, default=None, metavar="T",
                   help="override the recipe's sampler.deterministic_below: steps below timestep T (of 1000) "
                        "add no fresh noise (DDIM eta 0), so the last steps leave no grain; 0 = off")
    p.add_argument("--fast", action="store_true",
                   help="the fast mode: DDIM (eta 0.5) with x0 and x_t guidance at 10 network calls "
                        "(the pick of docs/results/steps.md, without epsilon scaling); overrides --sampler / --steps / "
                        "--eps-scale")
    p.add_argument("--backend", choices=["auto", "reference", "fused"], default=None,
                   help="guidance implementation (default: the recipe's; auto = fused op when it can serve)")
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    p.add_argument("--dicom", action="store_true", help="also write DICOM images and DICOM SEG masks")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="U-Net autocast precision (default fp32: the same images on every machine; auto = bf16 on a "
                        "GPU or a CPU with bf16 instructions, else fp32)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for torch (default: torch's; 1 is fastest for small models on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    one_line_errors(p)


def run(args: argparse.Namespace) -> int:
    from mcfast.api import Synthesizer, build_recipe
    from mcfast.commands.common import resolve_device
    from mcfast.errors import InputError
    from mcfast.io.paths import check_out_dir, os_error_line, os_reason
    from mcfast.synthesis.recipe import with_settings

    # argparse checks these; the checks here are for callers that build the Namespace themselves
    for option, value in (("--n", args.n), ("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{option} must be an integer >= 1, got {value!r}")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    # The recipe and the files it names are checked before a model is loaded or --out is touched.
    recipe = build_recipe(args.recipe, steps=args.steps, sampler=args.sampler, eta=args.eta,
                          x0_guidance=args.x0_guidance, eps_scale=args.eps_scale,
                          deterministic_below=args.deterministic_below, backend=args.backend,
                          seed=args.seed, fast=args.fast)
    if args.dicom:
        recipe = with_settings(recipe, output={"dicom": True, "seg": True})
    device = str(resolve_device(args.device)) if args.device is not None else "cpu"
    check_out_dir(args.out)
    synthesizer = Synthesizer.from_pretrained(args.ckpt, recipe=recipe, device=device, precision=args.precision)
    try:
        result = synthesizer.synthesize(args.n, args.out, batch_size=args.batch_size, progress=not args.no_progress)
    except OSError as exc:  # e.g. the disk filling up mid-run: finished items stay, the run resumes
        raise InputError(os_error_line(exc) if exc.filename else f"{args.out}: {os_reason(exc)}") from None
    print(f"wrote {result.written} images ({result.skipped} already done) to {result.out}"
          + (f"; annotations in {result.coco}" if result.coco else ""))
    return 0

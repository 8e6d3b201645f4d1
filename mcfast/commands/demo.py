"""`mcfast demo`: the embedded default, from nothing to annotated synthetic CT and mammograms."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="annotated synthetic lung CT and mammograms from the shipped default models",
        description="Make annotated synthetic lung CT slices (lung, soft-tissue and bone windows) and mammograms "
                    "with the default models shipped in mcfast: CT from the model trained on real chest CT "
                    "(TCIA, CC BY) guided by a new B-spline lung phantom per image, mammograms from the model trained "
                    "on MIAS films (research use only) guided by a new breast phantom per image. Each image gets inserted procedural lesions with exact masks, a "
                    "COCO file, DICOM and DICOM SEG, and index.html shows anatomy reference | pathology reference "
                    "| result | mask overlay. No data is needed. A re-run skips finished images.")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    p.add_argument("--n", type=int, default=8, help="images per modality (default 8; see --n-ct)")
    p.add_argument("--n-ct", type=int, default=None,
                   help="CT images (default: 4 with the real-CT model, whose 256² images cost more, else --n)")
    p.add_argument("--n-mg", type=int, default=None,
                   help="mammograms (default: 4 with the MIAS model, whose 256² images cost more, else --n)")
    p.add_argument("--ct-model", choices=["real", "phantom64"], default="real",
                   help="shipped CT model: real (trained on real chest CT, 256², the default) or phantom64 "
                        "(the 64² model trained on phantoms)")
    p.add_argument("--mg-model", choices=["real", "phantom64"], default="real",
                   help="shipped mammography model: real (trained on MIAS films, 256², the default; research use "
                        "only) or phantom64 (the 64² model trained on phantoms)")
    p.add_argument("--steps", default=None, help="sampling steps (respacing, default: the demo recipe's, 50 for the real-scan models)")
    p.add_argument("--fast", action="store_true",
                   help="the fast sampler (DDIM eta 0.5, x0 + x_t guidance, 10 network calls) instead of the "
                        "recipe's 50 ancestral steps")
    p.add_argument("--modality", choices=["ct", "mg", "both"], default="both", help="which demo to run")
    p.add_argument("--ckpt-ct", type=Path, default=None, help="use your own lung-CT run instead of the default")
    p.add_argument("--ckpt-mg", type=Path, default=None, help="use your own mammography run instead of the default")
    p.add_argument("--backend", choices=["auto", "reference", "fused"], default=None,
                   help="guidance implementation (default auto: the fused op when it can serve)")
    # One thread by default: the 64² default models gain nothing from a second one, and when the other
    # core is busy OpenMP's spin-waiting made a 2-thread demo 16x slower here (17 s vs 273 s for 4 CT images).
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    p.add_argument("--jobs", type=int, default=None,
                   help="modalities sampled at the same time, each on --threads threads (default: one per "
                        "modality, at most the number of CPU cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mcfast.demo.run import DemoSettings, run_demo

    if args.threads < 1:
        from mcfast.errors import InputError
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    if args.jobs is not None and args.jobs < 1:
        from mcfast.errors import InputError
        raise InputError(f"--jobs must be >= 1, got {args.jobs}")
    torch.set_num_threads(args.threads)

    modalities = ("ct", "mg") if args.modality == "both" else (args.modality,)
    jobs = args.jobs if args.jobs is not None else max(1, min(len(modalities), os.cpu_count() or 1))
    def count(given, model):  # the 256² real-scan models cost ~30x a 64² one per image
        return given if given is not None else (min(args.n, 4) if model == "real" else args.n)

    page = run_demo(DemoSettings(out=args.out, n=args.n, steps=args.steps, ckpt_ct=args.ckpt_ct,
                                 ckpt_mg=args.ckpt_mg, modalities=modalities, backend=args.backend,
                                 progress=not args.no_progress, ct_model=args.ct_model,
                                 n_ct=count(args.n_ct, args.ct_model), mg_model=args.mg_model,
                                 n_mg=count(args.n_mg, args.mg_model), fast=args.fast, jobs=jobs))
    print(f"done: open {page.resolve()}")
    return 0

"""`mcfast phantoms`: write a training set of B-spline lung or breast phantoms (no outside data)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "phantoms", help="write a folder of lung-CT or breast phantoms as training data",
        description="Write --n phantoms (model-space NPY, one per seed) for 'mcfast train --data'. CT phantoms are "
                    "B-spline lungs with heart, spine, vessels, CT-like texture and noise (in HU, mapped to [-1, 1]); "
                    "MG phantoms are MLO-like breasts with pectoral muscle and fibroglandular texture. Existing "
                    "files are kept, so an interrupted run resumes.")
    p.add_argument("--modality", choices=["ct", "mg"], required=True, help="lung CT or mammography phantoms")
    p.add_argument("--n", type=int, default=1000, help="number of phantoms (default 1000)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mcfast.demo.phantom_data import write_phantom_dataset

    out = write_phantom_dataset(args.modality, args.n, args.size, args.out, args.seed, progress=not args.no_progress)
    print(f"wrote {args.n} {args.modality} phantoms ({args.size}x{args.size}) to {out}")
    return 0

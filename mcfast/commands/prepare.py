"""`mcfast prepare`: turn a folder of CT DICOM or mammograms into a training folder for `mcfast train`."""
from __future__ import annotations

import argparse
from pathlib import Path

from mcfast.commands.common import one_line_errors
from mcfast.io.images import MAX_OUTPUT_SIZE


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare", help="build a training folder (.npy in model space + manifest.json) from DICOM/PNG",
        description="Decode every usable image under --in once, resize it to --size (keeping the aspect "
                    "ratio, padding with background), map it to model space [-1, 1] and write one float32 "
                    ".npy per image to --out with a manifest.json (source file -> item, modality, "
                    "normalisation, skipped files and why). 'mcfast train --data OUT' reads the folder.",
        epilog="CT: the full HU range [-1024, 3071] maps to [-1, 1] unless --window picks a display window. "
               "MG: breast cropped (Li-threshold mask), chest wall put on --side, MONOCHROME1 inverted.")
    p.add_argument("--modality", required=True, choices=["ct", "mg"], help="ct (DICOM CT) or mg (mammograms)")
    p.add_argument("--in", dest="in_dir", required=True, type=Path, metavar="DIR", help="input file or folder tree")
    p.add_argument("--out", dest="out_dir", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--size", type=int, default=256,
                   help=f"output height and width in pixels, 8 to {MAX_OUTPUT_SIZE} (default 256)")
    p.add_argument("--window", default=None, metavar="NAME|C,W",
                   help="CT only: train on a display window (lung, soft_tissue, bone, or CENTER,WIDTH) "
                        "instead of the full HU range (write --window=-600,1500 for a negative centre)")
    p.add_argument("--side", default="left", choices=["left", "right"],
                   help="MG only: side of the image the chest wall is put on (default left)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    one_line_errors(p)


def run(args: argparse.Namespace) -> int:
    from mcfast.errors import InputError
    from mcfast.io.datasets import prepare
    from mcfast.io.windows import parse_window

    if args.window is not None and args.modality != "ct":
        raise InputError("--window applies to --modality ct only")
    window = parse_window(args.window) if args.window else None
    if args.window and "," not in args.window:
        window = args.window  # keep the preset's name in the manifest
    result = prepare(args.modality, args.in_dir, args.out_dir, size=args.size, window=window, side=args.side,
                     progress=False if args.no_progress else "always")
    print(f"prepared {result.items} {args.modality.upper()} item(s) of {args.size}x{args.size} in {result.out_dir}"
          f" ({len(result.skipped)} file(s) skipped)")
    from mcfast.io.datasets import skip_counts
    for reason, count in skip_counts(result.skipped).items():
        print(f"  {count} skipped: {reason}")
    for path, reason in list(sorted(result.skipped.items()))[:5]:
        print(f"  skipped {path}: {reason}")
    if len(result.skipped) > 5:
        print(f"  ... {len(result.skipped) - 5} more, listed in {result.manifest}")
    return 0

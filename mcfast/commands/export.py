"""`mcfast export`: a trained run → a deployable sampler (TorchScript sampler.pt or AOTInductor .pt2)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mcfast.commands.common import one_line_errors, positive_int
from mcfast.export import OPS_CHOICES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export the guided sampler for deployment (TorchScript or AOTInductor)",
        description="Export the U-Net of a run with its respaced schedule and the whole multi-condition ILVR loop. "
                    "--format torchscript (default) writes one torch.jit.script module that runs with torch plus "
                    "the mcfast ops library (Python: torch.ops.load_library + torch.jit.load; C++: mcfast_run). "
                    "--format pt2 writes a torch.export/AOTInductor package of one guided step (U-Net + fused op) "
                    "plus OUT.json; compiling takes minutes on a CPU. See docs/export.md.")
    p.add_argument("--ckpt", type=Path, required=True, help="run folder (model.safetensors + config.json)")
    p.add_argument("--out", type=Path, required=True, help="output file (sampler.pt or sampler.pt2)")
    p.add_argument("--format", choices=["torchscript", "pt2"], default="torchscript", help="export format")
    p.add_argument("--steps", type=int, default=50, help="sampling steps, respaced from the training T (default 50)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm", help="ancestral DDPM or DDIM")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity η (default 0)")
    p.add_argument("--no-clip", action="store_true", help="do not clip the x0 prediction to [-1, 1]")
    p.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA weights")
    p.add_argument("--ops", choices=OPS_CHOICES, default="auto",
                   help="call torch.ops.mcfast.guided_step in the exported loop: auto (when the library is built), "
                        "require, or off (plain PyTorch steps)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="pt2 only: batch size the package is compiled for")
    p.add_argument("--slots", type=int, default=1, help="pt2 only: condition slots per image the package takes")
    p.set_defaults(func=run)
    one_line_errors(p)


def run(args: argparse.Namespace) -> int:
    from mcfast.errors import InputError
    from mcfast.export.build import export_pt2, export_torchscript
    from mcfast.io.paths import check_out_file, os_error_line

    check_out_file(args.out)  # before the model is loaded, scripted or compiled
    if args.format == "pt2":
        check_out_file(Path(str(args.out) + ".json"))
    try:
        return _export(args, export_pt2, export_torchscript)
    except OSError as exc:  # the disk filling up while saving: the outputs are written atomically
        raise InputError(os_error_line(exc) if exc.filename else f"{args.out}: {exc}") from None


def _export(args: argparse.Namespace, export_pt2, export_torchscript) -> int:
    common = dict(steps=args.steps, method=args.sampler, eta=args.eta, clip_denoised=not args.no_clip,
                  ema=not args.raw, ops=args.ops)
    if args.format == "pt2":
        out = export_pt2(args.ckpt, args.out, batch=args.batch_size, slots=args.slots, **common)
        kind = json.loads(Path(str(out) + ".json").read_text())["kind"]
        print(f"wrote {out} (AOTInductor package: {kind}) and {out}.json")
    else:
        out = export_torchscript(args.ckpt, args.out, **common)
        print(f"wrote {out} (TorchScript sampler, {args.steps} {args.sampler} steps)")
    return 0

"""`mcfast sample`: draw unguided images from a trained run (PNG per image + one NPY of model-space values)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mcfast.commands.common import one_line_errors, positive_int
from mcfast.errors import InputError

# Fastest configuration: channels_last at the device's fastest precision (models.inference.fastest_precision):
# bf16 autocast on GPUs and on CPUs with bf16 instructions (benchmarks/bench_unet.py, "small" U-Net, 2-core
# AMD EPYC with avx512_bf16: 2.0 s per 256² DDPM step vs 4.5 s in fp32), fp32 on CPUs without them.
DEFAULT_PRECISION = "auto"
DEFAULT_CHANNELS_LAST = True


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample", help="sample images from a trained run",
        description="Sample --n images from the EMA weights of a run made by 'mcfast train' with DDPM, DDIM or DPM-Solver++(2M), "
                    "writing sample_NNNN.png (8-bit), samples.npy (N, 1, H, W) float32 in model space [-1, 1] "
                    "and samples.json (settings and seed). Deterministic for a given --seed; image k does not depend on --batch-size.")
    p.add_argument("--ckpt", type=Path, required=True, help="run folder (model.safetensors + config.json)")
    p.add_argument("--out", type=Path, required=True, help="output folder (must not already hold samples)")
    p.add_argument("--n", type=positive_int, default=16, help="number of images (default 16)")
    p.add_argument("--steps", type=int, default=100, help="sampling steps, respaced from the training T (default 100)")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp2m"], default="ddpm",
                   help="ancestral DDPM, DDIM, or DPM-Solver++(2M) (for 10-25 steps)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM stochasticity η (default 0)")
    p.add_argument("--eps-scale", type=float, default=1.0, metavar="LAMBDA",
                   help="epsilon scaling: divide the network's noise prediction by LAMBDA (> 0; default 1 = off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise generator (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="images per model call (default 16)")
    p.add_argument("--size", type=int, default=None,
                   help="image size (default: the training images' size; a fully convolutional model trained "
                        "on crops samples any multiple of its downsampling factor)")
    p.add_argument("--no-clip", action="store_true", help="do not clip the x0 prediction to [-1, 1]")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=DEFAULT_PRECISION,
                   help="autocast precision of the network (default auto: bf16 on a GPU or a CPU with bf16 "
                        "instructions, else fp32; fp32 for bit-exact comparisons)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=DEFAULT_CHANNELS_LAST,
                   help="channels_last memory format" + (" (default)" if DEFAULT_CHANNELS_LAST else ""))
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="contiguous memory format" + ("" if DEFAULT_CHANNELS_LAST else " (default)"))
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    one_line_errors(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from mcfast.atomic import atomic_path, write_text
    from mcfast.commands.common import resolve_device
    from mcfast.diffusion.eps_scaling import check_eps_scale, scale_eps
    from mcfast.diffusion.gaussian import create_diffusion
    from mcfast.diffusion.samplers import sample
    from mcfast.models.inference import fastest_precision, make_model_fn
    from mcfast.models.unet import check_sampling_size
    from mcfast.seeding import item_seed
    from mcfast.io.paths import check_out_dir, make_out_dir, os_reason
    from mcfast.train.checkpoint import load_model

    if args.n < 1 or args.batch_size < 1:  # argparse checks them; this is for callers that build args
        raise InputError(f"--n and --batch-size must be >= 1 (got {args.n}, {args.batch_size})")
    check_eps_scale(args.eps_scale, "--eps-scale")
    check_out_dir(args.out)  # before the model is loaded and sampled: a bad --out costs nothing
    if (args.out / "samples.npy").exists():
        raise InputError(f"{args.out}: already holds samples.npy; choose another --out")
    device = resolve_device(args.device)
    precision = fastest_precision(device) if args.precision == "auto" else args.precision
    model, diffusion_kwargs, config = load_model(args.ckpt, device=device, ema=not args.raw)
    diffusion = create_diffusion(**{**diffusion_kwargs, "respacing": str(args.steps)})
    trained = int(config.get("data", {}).get("image_size", config["model"]["image_size"]))
    size = args.size or trained
    check_sampling_size(config["model"], size, trained, where=str(args.ckpt))
    channels = int(config["model"].get("in_channels", 1))
    fn = scale_eps(make_model_fn(model, device, precision, args.channels_last, per_item=True), args.eps_scale)
    batches = []
    for start in range(0, args.n, args.batch_size):
        b = min(args.batch_size, args.n - start)
        # One generator per image: image k is the same whatever the batch size.
        generators = [torch.Generator(device="cpu").manual_seed(item_seed(args.seed, k)) for k in range(start, start + b)]
        batches.append(sample(fn, diffusion, (b, channels, size, size), method=args.sampler, eta=args.eta,
                              clip_denoised=not args.no_clip, generator=generators,
                              progress=not args.no_progress, device=device).cpu())
        batches[-1] = diffusion.companding.decode(batches[-1])  # back to model space
    images = torch.cat(batches).numpy().astype(np.float32)
    make_out_dir(args.out)
    try:  # a disk that fills up (or a folder removed meanwhile) is one line; every file is written atomically
        for k, img in enumerate(images):
            pixels = np.round((np.clip(img[0], -1, 1) + 1) * 127.5).astype(np.uint8)
            with atomic_path(args.out / f"sample_{k:04d}.png") as tmp:
                Image.fromarray(pixels).save(tmp, format="PNG")
        with atomic_path(args.out / "samples.npy") as tmp:
            np.save(tmp, images)
        write_text(args.out / "samples.json", json.dumps({
            "ckpt": str(args.ckpt), "step": config["step"], "n": args.n, "steps": args.steps, "sampler": args.sampler,
            "eta": args.eta, "eps_scale": args.eps_scale, "seed": args.seed, "batch_size": args.batch_size,
            "ema": not args.raw, "precision": precision, "channels_last": args.channels_last,
            "clip_denoised": not args.no_clip, "model_space": "[-1, 1]", "data": config.get("data", {})},
            indent=1) + "\n")
    except OSError as exc:
        raise InputError(f"{args.out}: {os_reason(exc)} while writing the samples") from None
    print(f"mcfast sample: {args.n} images {size}x{size} written to {args.out}")
    return 0

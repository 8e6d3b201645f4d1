"""`mcfast train`: train an improved-DDPM U-Net on a folder of grayscale PNG / NPY images.

Single process: ``mcfast train --data DIR --image-size 256 --out RUN``. Several GPUs (or CPU
processes, gloo): ``torchrun --nproc_per_node N -m mcfast train ...`` — the batch size is global.
``--resume`` continues RUN exactly where its last checkpoint left off.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mcfast.constants import COMPANDINGS
from mcfast.errors import CheckpointError, InputError

# Training options whose value on --resume comes from the run unless given again.
_TRAIN_OPTIONS = ("batch_size", "lr", "weight_decay", "ema_rate", "grad_clip", "max_steps", "save_every",
                  "sample_every", "sample_n", "sample_steps", "log_every", "seed", "precision", "num_workers",
                  "channels_last", "crop_size", "crop_flip", "crop_foreground", "min_snr_gamma")
_DEFAULTS = dict(batch_size=8, lr=1e-4, weight_decay=0.0, ema_rate=0.9999, grad_clip=1.0, max_steps=10000,
                 save_every=1000, sample_every=1000, sample_n=16, sample_steps=50, log_every=10, seed=0,
                 precision="auto", num_workers=0, channels_last=False, crop_size=0, crop_flip=True,
                 crop_foreground=0.0, min_snr_gamma=0.0)


MIN_IMAGE_SIZE = 8  # pixels a side of training images or crops (at most mcfast.io.images.MAX_OUTPUT_SIZE)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a diffusion model on PNG/NPY images",
        description="Train an ADM-style U-Net with the improved-DDPM objective (ε + learned-range variance, "
                    "L_simple + 0.001·L_vlb) on all .png / .npy images under --data. Checkpoints "
                    "(safetensors + config.json), log.jsonl and sample grids go to --out. Use torchrun for DDP.")
    p.add_argument("--data", type=Path, help="folder of training images (.png 8/16-bit or .npy), searched recursively")
    p.add_argument("--out", type=Path, required=True, help="run folder to create (or continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--image-size", type=int, help="train at this size (images are resized to it; default: their size)")
    p.add_argument("--crop", dest="crop_size", type=int,
                   help="train on random CROPxCROP crops (left-right flipped at random) of the full-size images; "
                        "use with a fully convolutional preset (crop) to sample at the full size later")
    p.add_argument("--no-crop-flip", dest="crop_flip", action="store_false", default=None,
                   help="do not flip crops (mammograms: the framing puts the chest wall on the left)")
    p.add_argument("--crop-foreground", type=float, metavar="FRACTION",
                   help="least share of a crop above the image minimum (best of 8 positions), e.g. 0.5 for "
                        "mammograms, whose framing pads ~60 %% of the image (default 0: uniform crops)")
    p.add_argument("--init", type=Path, metavar="RUN_OR_ASSET",
                   help="warm start: architecture, diffusion settings and (EMA) weights from a run folder or a "
                        "shipped asset folder (e.g. mcfast/assets/ct_real); optimizer and step start fresh")
    p.add_argument("--npy-range", help="'lo,hi' mapping float .npy values linearly to [-1, 1] (e.g. -1024,3071 for HU)")
    p.add_argument("--modality", choices=["ct", "mg", "generic"], default="generic", help="recorded in config.json")
    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=["tiny", "small", "adm", "crop"], default="small",
                   help="U-Net size preset; the options below override single settings (default: small)")
    m.add_argument("--model-channels", type=int, help="base channel count")
    m.add_argument("--channel-mult", type=_int_list, help="channel multipliers per level, e.g. 1,1,2,2,4,4")
    m.add_argument("--num-res-blocks", type=int, help="residual blocks per level")
    m.add_argument("--attention-resolutions", type=_int_list,
                   help="resolutions in pixels with self-attention, e.g. 32,16,8")
    m.add_argument("--num-heads", type=int, help="attention heads")
    m.add_argument("--dropout", type=float, help="dropout in residual blocks")
    d = p.add_argument_group("diffusion")
    d.add_argument("--diffusion-steps", type=int, default=1000, help="T (default 1000)")
    d.add_argument("--schedule", choices=["linear", "cosine"], default="cosine", help="β schedule (default cosine)")
    d.add_argument("--variance", choices=["learned_range", "fixed_small", "fixed_large"], default="learned_range",
                   help="model variance (learned_range: the net also outputs v)")
    d.add_argument("--loss", choices=["hybrid", "simple"], default="hybrid", help="L_hybrid or L_simple")
    d.add_argument("--companding", choices=list(COMPANDINGS),
                   help="intensity map the chain runs in: linear (model space) or ct_asinh (soft tissue stretched "
                        "about 2.5x, CT only); default linear, or the --init run's")
    d.add_argument("--importance-sampling", action="store_true",
                   help="loss-aware timestep sampling (second moment of the last 10 losses per t)")
    d.add_argument("--train-timesteps", metavar="RESPACING",
                   help="train only on the steps a sampler respaced to RESPACING visits (e.g. 100 or 50,50)")
    d.add_argument("--min-snr-gamma", type=float,
                   help="Min-SNR-gamma weighting of the noise MSE (e.g. 5; default off)")
    t = p.add_argument_group("training")
    t.add_argument("--batch-size", type=int, help=f"global batch size (default {_DEFAULTS['batch_size']})")
    t.add_argument("--lr", type=float, help=f"AdamW learning rate (default {_DEFAULTS['lr']})")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0)")
    t.add_argument("--ema-rate", type=float, help="EMA decay (default 0.9999, with warm-up)")
    t.add_argument("--grad-clip", type=float, help="max gradient norm, 0 = off (default 1.0)")
    t.add_argument("--max-steps", type=int, help=f"train until this step (default {_DEFAULTS['max_steps']})")
    t.add_argument("--save-every", type=int, help=f"checkpoint every N steps (default {_DEFAULTS['save_every']})")
    t.add_argument("--sample-every", type=int, help="sample grid PNG every N steps, 0 = never (default 1000)")
    t.add_argument("--sample-n", type=int, help="images per sample grid (default 16)")
    t.add_argument("--sample-steps", type=int, help="sampling steps for the grids (default 50)")
    t.add_argument("--log-every", type=int, help="log.jsonl line every N steps (default 10)")
    t.add_argument("--seed", type=int, help="seed for data order, timesteps and noise (default 0)")
    t.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision (auto: bf16 on GPU, fp32 on CPU)")
    t.add_argument("--channels-last", action="store_true", default=None, help="channels_last memory format")
    t.add_argument("--num-workers", type=int, help="DataLoader worker processes (default 0)")
    t.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _model_config(args, image_size: int, learn_sigma: bool) -> dict:
    from mcfast.models.unet import attention_factors, preset_config

    cfg = preset_config(args.preset, image_size, learn_sigma=learn_sigma)
    if args.model_channels is not None:
        cfg["model_channels"] = args.model_channels
    if args.channel_mult is not None:
        cfg["channel_mult"] = args.channel_mult
    if args.num_res_blocks is not None:
        cfg["num_res_blocks"] = args.num_res_blocks
    if args.attention_resolutions is not None:
        cfg["attention_resolutions"] = attention_factors(image_size, args.attention_resolutions)
    if args.num_heads is not None:
        cfg["num_heads"] = args.num_heads
    if args.dropout is not None:
        cfg["dropout"] = args.dropout
    return cfg


def run(args: argparse.Namespace) -> int:
    import torch
    from mcfast.commands.common import resolve_device
    from mcfast.diffusion.gaussian import create_diffusion
    from mcfast.io.images import MAX_OUTPUT_SIZE as MAX_IMAGE_SIZE
    from mcfast.train.checkpoint import CONFIG_FILE, build_model, checkpoint_dir, read_config, read_init
    from mcfast.train.data import ImageFolderDataset, parse_range
    from mcfast.train.ddp import cleanup, setup_distributed
    from mcfast.train.trainer import TrainConfig, Trainer

    device = resolve_device(args.device)
    if args.image_size is not None and not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        raise InputError(f"--image-size {args.image_size}: must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    if args.crop_size is not None and not MIN_IMAGE_SIZE <= args.crop_size <= MAX_IMAGE_SIZE:
        raise InputError(f"--crop {args.crop_size}: must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    info = setup_distributed(device.type)
    if device.type == "cuda" and info.distributed:
        device = torch.device("cuda", info.local_rank)
    try:
        given = {k: getattr(args, k) for k in _TRAIN_OPTIONS if getattr(args, k) is not None}
        init_weights = None
        if args.resume and args.init is not None:
            raise InputError("--init starts a new run from earlier weights; --resume continues a run: pick one")
        if args.resume:
            saved = read_config(args.out)
            saved_path = checkpoint_dir(args.out) / CONFIG_FILE
            data_info = dict(saved.get("data", {}))
            data_root = args.data or (Path(data_info["root"]) if data_info.get("root") else None)
            if data_root is None:
                raise InputError("--data is required (the run does not record its data folder)")
            npy_range = parse_range(args.npy_range) if args.npy_range else (
                tuple(data_info["npy_range"]) if data_info.get("npy_range") else None)
            # A crop-trained run records the full images' size under "data"; the model's is the crop's.
            size = data_info.get("image_size", saved["model"].get("image_size"))
            if not isinstance(size, int) or isinstance(size, bool) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
                raise CheckpointError(f"{saved_path}: image_size {size!r} is not a size in pixels")
            dataset = ImageFolderDataset(data_root, image_size=size, npy_range=npy_range)
            model_cfg, diffusion_kwargs = saved["model"], saved["diffusion"]
            if args.companding is not None and args.companding != saved["diffusion"].get("companding", "linear"):
                raise InputError(f"--companding {args.companding}: the run at {args.out} diffuses in "
                                 f"{saved['diffusion'].get('companding', 'linear')} space; a resumed run keeps it")
            train_cfg = TrainConfig.from_dict({**saved.get("train", {}), **given}, source=str(saved_path))
            data_info["root"] = str(Path(data_root).resolve())
        else:
            if args.data is None:
                raise InputError("--data is required")
            npy_range = parse_range(args.npy_range)
            if args.crop_size is not None and args.image_size is not None:
                raise InputError("--crop and --image-size exclude each other (crops are cut at the images' own size)")
            dataset = ImageFolderDataset(args.data, image_size=args.image_size, npy_range=npy_range)
            train_size = args.crop_size or dataset.image_size
            if args.init is not None:
                init_cfg, init_weights = read_init(args.init)
                model_cfg = dict(init_cfg["model"], image_size=train_size)
                diffusion_kwargs = dict(init_cfg["diffusion"])
            else:
                diffusion_kwargs = dict(T=args.diffusion_steps, schedule=args.schedule, respacing="",
                                        model_var_type=args.variance, loss_type=args.loss)
                model_cfg = _model_config(args, train_size, learn_sigma=args.variance == "learned_range")
            if args.companding is not None:  # "linear" stays unwritten: runs from before the option read the same
                diffusion_kwargs.pop("companding", None)
                if args.companding != "linear":
                    diffusion_kwargs["companding"] = args.companding
            if diffusion_kwargs.get("companding") == "ct_asinh" and args.modality != "ct":
                raise InputError(f"--companding ct_asinh maps Hounsfield units; it needs --modality ct "
                                 f"(got {args.modality})")
            train_cfg = TrainConfig.from_dict({**_DEFAULTS, **given})
            if args.importance_sampling and args.train_timesteps:
                raise InputError("--importance-sampling and --train-timesteps exclude each other")
            if args.importance_sampling:
                train_cfg.timestep_sampler = "loss-second-moment"
            if args.train_timesteps:
                train_cfg.timestep_sampler = f"visited:{args.train_timesteps}"
            data_info = {"modality": args.modality, "image_size": dataset.image_size,
                         "root": str(args.data.resolve()), "num_images": len(dataset),
                         "npy_range": list(npy_range) if npy_range else None,
                         "native_size": list(dataset.native_size),
                         "init": str(args.init) if args.init is not None else None}
        diffusion = create_diffusion(**diffusion_kwargs)
        torch.manual_seed(train_cfg.seed)  # the initial weights are part of what --seed fixes
        model = build_model(model_cfg, saved_path if args.resume else "the model settings")
        trainer = Trainer(model, diffusion, dataset, args.out, train_cfg, diffusion_kwargs=diffusion_kwargs,
                          data_info=data_info, device=device, resume=args.resume,
                          progress=not args.no_progress, dist_info=info, init_weights=init_weights)
        if info.is_main:
            print(f"mcfast train: {model.count_parameters():,} parameters, {len(dataset)} images "
                  f"{dataset.native_size[0]}x{dataset.native_size[1]}"
                  f"{f' (crops of {train_cfg.crop_size})' if train_cfg.crop_size else ''}, "
                  f"{info.world_size} process(es), device {device}, "
                  f"precision {trainer.precision}, step {trainer.step} -> {train_cfg.max_steps}")
        records = trainer.train()
        if info.is_main and records:
            print(f"mcfast train: step {trainer.step}, loss {records[-1]['loss']:.4f}; run in {args.out}")
        return 0
    finally:
        cleanup(info)

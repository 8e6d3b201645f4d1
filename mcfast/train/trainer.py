"""Training loop: AdamW, EMA, gradient clipping, AMP, loss-aware timestep sampling, DDP, exact resume.

Reproducibility: every random draw of training (data order, timesteps, noise) comes from
``seed`` — the data order is a pure function of (seed, epoch) (:mod:`mcfast.train.batches`), timesteps
and noise come from one CPU ``torch.Generator`` drawn for the *global* batch on every rank (each rank
keeps its slice), so a run with N processes sees exactly the batches of a single process with the same
global batch, and a resumed run (generator + torch RNG states restored from config.json) continues the
uninterrupted loss curve bit for bit. The settings are :mod:`mcfast.train.settings` (``TrainConfig``,
re-exported here with the batch order's names).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mcfast.atomic import atomic_path, write_text
from mcfast.diffusion.gaussian import GaussianDiffusion, create_diffusion
from mcfast.diffusion.samplers import sample
from mcfast.errors import CheckpointError, InputError, McfastError
from mcfast.train import checkpoint as ckpt
from mcfast.train.batches import StepBatchSampler, epoch_permutation, global_batch_indices
from mcfast.train.ddp import DistInfo, all_gather_cat, barrier, current_dist_info
from mcfast.train.crops import apply_crops, draw_crop_boxes, pick_foreground_boxes
from mcfast.train.settings import CROP_CANDIDATES, PRECISIONS, TrainConfig, resolve_precision
from mcfast.train.timesteps import create_timestep_sampler

LOG_FILE = "log.jsonl"

__all__ = ["LOG_FILE", "TrainingDiverged", "image_grid", "Trainer",
           "CROP_CANDIDATES", "PRECISIONS", "TrainConfig", "resolve_precision",
           "StepBatchSampler", "epoch_permutation", "global_batch_indices"]


class TrainingDiverged(McfastError):
    """The loss or gradient became NaN or infinite; nothing of that step was saved."""


def image_grid(images: Tensor) -> np.ndarray:
    """Tile (N, 1, H, W) model-space images into one uint8 grid (as square as possible)."""
    n, _, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w), dtype=np.uint8)
    pixels = ((images[:, 0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    for k in range(n):
        r, c = divmod(k, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = pixels[k]
    return grid


class Trainer:
    """Train ``model`` (a UNetModel) on ``dataset`` (items: (C, H, W) float tensors in [-1, 1]) into ``out_dir``.

    ``diffusion_kwargs`` are the :func:`create_diffusion` settings of ``diffusion`` (saved in the
    run's config.json). With ``resume=True`` the state in ``out_dir`` is loaded and training
    continues exactly; without it an existing run in ``out_dir`` is an error (never overwritten).
    """

    def __init__(self, model: nn.Module, diffusion: GaussianDiffusion, dataset: Dataset, out_dir: str | Path,
                 config: TrainConfig, *, diffusion_kwargs: dict[str, Any], data_info: dict[str, Any] | None = None,
                 device: str | torch.device | None = None, resume: bool = False, progress: bool = True,
                 dist_info: DistInfo | None = None, init_weights: dict[str, Tensor] | None = None):
        self.config = config
        self.out_dir = Path(out_dir)
        self.info = dist_info or current_dist_info()
        self.device = torch.device(device) if device is not None else (
            torch.device("cuda", self.info.local_rank) if torch.cuda.is_available() else torch.device("cpu"))
        self.precision = resolve_precision(config.precision, self.device)
        self.diffusion = diffusion
        self.diffusion_kwargs = dict(diffusion_kwargs)
        self.dataset = dataset
        self.progress = progress
        self._check_settings(model)
        self.data_info = dict(data_info or {})
        self.data_info.setdefault("image_size", int(model.model_config()["image_size"]))

        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.timestep_sampler = create_timestep_sampler(
            config.timestep_sampler, diffusion.num_timesteps,
            **({"history_per_term": config.importance_history} if config.timestep_sampler != "uniform" else {}))
        self.generator = torch.Generator().manual_seed(config.seed)
        # Dropout draws from torch's global RNG: seed it per rank so runs repeat (saved on checkpoints).
        torch.manual_seed(config.seed * 7919 + self.info.rank)
        self.step = 0
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InputError(f"{self.out_dir}: is a file; --out must be a run folder")
        if not resume and ckpt.has_checkpoint(self.out_dir):
            raise InputError(f"{self.out_dir}: already holds a run; pass --resume to continue it "
                             f"or choose another --out")
        if self.info.is_main:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"{self.out_dir}: cannot create the run folder ({exc.strerror})") from None
            ckpt.clean_unpublished(self.out_dir)  # what a save killed half-way left behind
        if resume:
            self._resume()
        elif init_weights is not None:
            # Warm start: weights only (optimizer, step and RNG start fresh), into both the raw and EMA copy.
            ckpt.load_state_strict(self.model, init_weights, "--init weights")
            ckpt.load_state_strict(self.ema_model, init_weights, "--init weights")
        self.ddp_model: nn.Module = self.model
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel
            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # -- set-up -----------------------------------------------------------------------------
    def _check_settings(self, model: nn.Module) -> None:
        c = self.config
        c.check()
        if c.batch_size % self.info.world_size != 0:
            raise InputError(f"batch size {c.batch_size} must be a positive multiple of the {self.info.world_size} "
                             f"processes")
        if len(self.dataset) == 0:
            raise InputError("the training dataset is empty")
        if not hasattr(model, "model_config"):
            raise InputError("the model must provide model_config() (use mcfast.models.UNetModel)")
        mc = model.model_config()
        first = self.dataset[0]
        expected = (mc["in_channels"], mc["image_size"], mc["image_size"])
        if c.crop_size:
            if c.crop_size != mc["image_size"]:
                raise InputError(f"crop size {c.crop_size} differs from the model's training size {mc['image_size']}")
            if first.shape[0] != mc["in_channels"] or min(first.shape[-2:]) < c.crop_size:
                raise InputError(f"dataset images have shape {tuple(first.shape)}; crops of {c.crop_size} need "
                                 f"{mc['in_channels']} channel(s) and at least {c.crop_size} pixels a side")
        elif tuple(first.shape) != expected:
            raise InputError(f"dataset images have shape {tuple(first.shape)}, the model expects {expected}")

    def _run_config(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"generator": self.generator.get_state().tolist(),
                               "torch": torch.get_rng_state().tolist()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device).tolist()
        from mcfast import __version__
        return {"model": self.model.model_config(), "diffusion": self.diffusion_kwargs, "data": self.data_info,
                "train": asdict(self.config), "step": self.step, "rng": rng,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "world_size": self.info.world_size, "mcfast_version": __version__}

    def _resume(self) -> None:
        config, weights, opt_tensors = ckpt.load_checkpoint(self.out_dir)
        folder = ckpt.checkpoint_dir(self.out_dir)
        source = folder / ckpt.MODEL_FILE
        if {"mid_attention": True, **config["model"]} != self.model.model_config():  # runs from before the key
            raise CheckpointError(f"{folder / ckpt.CONFIG_FILE}: model settings {config['model']} differ from "
                                  f"the model being trained")
        if config["diffusion"] != self.diffusion_kwargs:
            raise CheckpointError(f"{folder / ckpt.CONFIG_FILE}: diffusion settings {config['diffusion']} "
                                  f"differ from {self.diffusion_kwargs}")
        ckpt.load_state_strict(self.model, ckpt.split_prefix(weights, "model"), source)
        ckpt.load_state_strict(self.ema_model, ckpt.split_prefix(weights, "ema"), source)
        try:
            groups = config["optimizer"]["param_groups"]
            self.optimizer.load_state_dict(ckpt.unflatten_optimizer_state(opt_tensors, groups))
            rng = config["rng"]
            self.generator.set_state(torch.tensor(rng["generator"], dtype=torch.uint8))
            torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
            if self.device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(torch.tensor(rng["cuda"], dtype=torch.uint8), self.device)
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{folder / ckpt.OPTIMIZER_FILE}: optimizer or RNG state does not fit "
                                  f"this run ({exc})") from None
        for group in self.optimizer.param_groups:  # the new run's lr wins (allows changing it on resume)
            group["lr"] = self.config.lr
        self.timestep_sampler.load_state_tensors(ckpt.split_prefix(opt_tensors, "extra.sampler"))
        if self.scaler is not None and config.get("scaler"):
            self.scaler.load_state_dict(config["scaler"])
        self.step = int(config["step"])
        if self.info.is_main:
            self._truncate_log(self.step)

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint (an interrupted run may have gone further), and a
        last line a kill cut short."""
        path = self.out_dir / LOG_FILE
        if not path.exists():
            return
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                line_step = int(record["step"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if number == len(lines):  # an append interrupted by the kill that ended the run
                    break
                raise CheckpointError(f"{path}: line {number} is not a log record ({line[:60]!r})") from None
            if line_step <= step:
                kept.append(line)
        write_text(path, "".join(line + "\n" for line in kept))

    # -- one step ---------------------------------------------------------------------------
    def local_batch(self, step: int) -> Tensor:
        """This rank's images for ``step`` (used when not iterating a DataLoader)."""
        idx = global_batch_indices(len(self.dataset), self.config.batch_size, self.config.seed, step)
        local = self.config.batch_size // self.info.world_size
        idx = idx[self.info.rank * local:(self.info.rank + 1) * local]
        return torch.stack([self.dataset[i] for i in idx])

    def _model_fn(self, x: Tensor, t: Tensor) -> Tensor:
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            with torch.autocast(self.device.type, dtype=dtype):
                return self.ddp_model(x, t)
        return self.ddp_model(x, t)

    def forward_backward(self, x0_local: Tensor) -> dict[str, float]:
        """Draw t and noise for the global batch, compute this rank's weighted loss and backpropagate.

        Gradients end up averaged over ranks (DDP), i.e. equal to the single-process gradient of the
        global batch. Returns global mean loss terms for logging.
        """
        B = self.config.batch_size
        local = B // self.info.world_size
        sl = slice(self.info.rank * local, (self.info.rank + 1) * local)
        if self.config.crop_size:
            c = self.config
            candidates = CROP_CANDIDATES if c.crop_foreground > 0 else 1
            boxes = draw_crop_boxes(B, tuple(x0_local.shape[-2:]), c.crop_size, self.generator,
                                    candidates=candidates, flip=c.crop_flip)[sl]
            if candidates > 1:
                boxes = pick_foreground_boxes(x0_local, boxes, c.crop_size, c.crop_foreground)
            x0_local = apply_crops(x0_local, boxes, c.crop_size)
        t_all, w_all = self.timestep_sampler.sample(B, self.generator)
        noise_all = torch.randn((B,) + tuple(x0_local.shape[1:]), generator=self.generator)
        # The chain runs in the diffusion's companded space; crops were picked in model space above.
        x0 = self.diffusion.companding.encode(x0_local.to(self.device, non_blocking=True))
        t, w, noise = (v[sl].to(self.device) for v in (t_all, w_all, noise_all))
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.diffusion.training_losses(self._model_fn, x0, t, noise=noise,
                                                min_snr_gamma=self.config.min_snr_gamma)
        loss = (losses["loss"] * w).mean()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        terms = torch.stack([losses["loss"], losses["mse"], losses["vb"]], dim=1).detach().float()
        terms = all_gather_cat(terms, self.info).cpu()
        self.timestep_sampler.update(t_all, terms[:, 0])
        mean = terms.mean(dim=0)
        return {"loss": float(mean[0]), "mse": float(mean[1]), "vb": float(mean[2])}

    def optimizer_step(self) -> float:
        """Clip, step, update EMA; returns the gradient norm before clipping.

        Raises :class:`TrainingDiverged` (weights untouched) on a non-finite gradient, except under fp16
        loss scaling, whose scaler skips such steps by design.
        """
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if self.scaler is None and not math.isfinite(grad_norm):
            self._diverged("gradient norm", grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        self._update_ema()
        return grad_norm

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up (1+n)/(10+n) keeps the EMA useful in short runs; it reaches ema_rate later.
        rate = min(self.config.ema_rate, (1 + self.step) / (10 + self.step))
        ema = list(self.ema_model.parameters())
        raw = list(self.model.parameters())
        torch._foreach_lerp_(ema, raw, 1.0 - rate)

    # -- loop -------------------------------------------------------------------------------
    def train(self) -> list[dict[str, float]]:
        """Train until ``max_steps``; returns the logged records of this call."""
        c = self.config
        records: list[dict[str, float]] = []
        if self.step >= c.max_steps:
            return records
        sampler = StepBatchSampler(len(self.dataset), c.batch_size, c.seed, self.step, c.max_steps, self.info)
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=c.num_workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        self.model.train()
        bar = tqdm(total=c.max_steps, initial=self.step, desc="train", unit="step",
                   disable=not (self.progress and self.info.is_main), dynamic_ncols=True)
        started = time.perf_counter()
        try:
            for x0 in loader:
                terms = self.forward_backward(x0)
                if not math.isfinite(terms["loss"]):
                    self._diverged("loss", terms["loss"])
                terms["grad_norm"] = self.optimizer_step()
                bar.update(1)
                bar.set_postfix(loss=f"{terms['loss']:.4f}")
                if self.step % c.log_every == 0 or self.step == c.max_steps:
                    record = {"step": self.step, **terms, "lr": self.optimizer.param_groups[0]["lr"],
                              "elapsed_s": round(time.perf_counter() - started, 3)}
                    records.append(record)
                    if self.info.is_main:
                        self._append_log(record)
                if c.sample_every and self.step % c.sample_every == 0 and self.info.is_main:
                    self.save_sample_grid()
                if self.step % c.save_every == 0 or self.step == c.max_steps:
                    self.save()
        finally:
            bar.close()
        return records

    def _diverged(self, what: str, value: float) -> None:
        last = ckpt.read_config(self.out_dir)["step"] if ckpt.has_checkpoint(self.out_dir) else None
        kept = (f"the last checkpoint (step {last}) in {self.out_dir} is kept" if last is not None
                else "no checkpoint was written")
        raise TrainingDiverged(f"step {self.step + 1}: {what} is {value} (non-finite); training stopped before "
                               f"the weights changed and {kept}; check the data or lower --lr")

    def _append_log(self, record: dict) -> None:
        with open(self.out_dir / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def save(self) -> None:
        """Write the checkpoint (rank 0) and wait for it on all ranks."""
        if self.info.is_main:
            ckpt.save_checkpoint(self.out_dir, model_state=self.model.state_dict(),
                                 ema_state=self.ema_model.state_dict(), optimizer_state=self.optimizer.state_dict(),
                                 config=self._run_config(),
                                 extra_tensors={f"sampler.{k}": v for k, v in
                                                self.timestep_sampler.state_tensors().items()})
        barrier(self.info)

    @torch.no_grad()
    def save_sample_grid(self) -> Path:
        """Sample ``sample_n`` images from the EMA model (fixed seed) into samples/step_NNNNNNN.png."""
        from PIL import Image

        c = self.config
        kwargs = dict(self.diffusion_kwargs, respacing=str(min(c.sample_steps, self.diffusion.num_timesteps)))
        diffusion = create_diffusion(**kwargs)
        size = self.model.model_config()["image_size"]
        images = sample(self.ema_model, diffusion, (c.sample_n, 1, size, size), method="ddpm",
                        generator=torch.Generator().manual_seed(c.seed), progress=False, device=self.device)
        images = diffusion.companding.decode(images)
        path = self.out_dir / "samples" / f"step_{self.step:07d}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(image_grid(images)).save(tmp, format="PNG")
        return path

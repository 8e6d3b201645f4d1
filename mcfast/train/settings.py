"""Training settings: :class:`TrainConfig` (the hyper-parameters a run saves in config.json, read back and
checked) and the precision a device runs them at (:func:`resolve_precision`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from mcfast.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CROP_CANDIDATES = 8  # crop positions drawn per item when a least foreground share is asked for


@dataclass
class TrainConfig:
    """Training hyper-parameters (saved in config.json under "train")."""
    batch_size: int = 8            # global batch, split evenly over DDP ranks
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_rate: float = 0.9999
    grad_clip: float = 1.0         # max gradient norm; 0 disables clipping
    max_steps: int = 10000
    save_every: int = 1000
    sample_every: int = 1000       # 0 disables the sample grids
    sample_n: int = 16
    sample_steps: int = 50         # respaced DDPM steps for the preview grids
    log_every: int = 10
    seed: int = 0
    precision: str = "auto"        # auto: bf16 on CUDA (fp16 without bf16 support), fp32 on CPU
    timestep_sampler: str = "uniform"   # or "loss-second-moment" (importance sampling)
    importance_history: int = 10
    num_workers: int = 0
    channels_last: bool = False
    crop_size: int = 0             # train on random crops of this size (0: whole images)
    crop_flip: bool = True         # left-right flip crops at random
    crop_foreground: float = 0.0   # least foreground share of a crop (best of CROP_CANDIDATES draws; 0: off)
    min_snr_gamma: float = 0.0     # Min-SNR-γ weighting of the ε-MSE (0: off, the improved-DDPM objective)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "training settings") -> "TrainConfig":
        """Settings from a mapping (a run's config.json "train" block merged with options); a value of the
        wrong kind is an InputError naming ``source`` and the key. Keys of other versions are ignored."""
        values = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            value, kind = d[f.name], type(f.default)
            fits = (isinstance(value, bool) if kind is bool else
                    isinstance(value, int) and not isinstance(value, bool) if kind is int else
                    isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
                    isinstance(value, kind))
            if not fits:
                raise InputError(f"{source}: {f.name} = {value!r} should be {kind.__name__}")
            values[f.name] = kind(value)
        return cls(**values)

    def check(self) -> None:
        """Refuse values no run can use (InputError naming the option)."""
        positive = {"batch_size": self.batch_size, "save_every": self.save_every, "log_every": self.log_every,
                    "sample_n": self.sample_n, "sample_steps": self.sample_steps}
        for name, value in positive.items():
            if value < 1:
                raise InputError(f"--{name.replace('_', '-')} {value}: must be at least 1")
        if not 0.0 <= self.ema_rate < 1.0:
            raise InputError(f"--ema-rate {self.ema_rate}: must be in [0, 1)")
        for name in ("lr", "weight_decay", "grad_clip", "min_snr_gamma"):  # lr 0: frozen weights, e.g. a test
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InputError(f"--{name.replace('_', '-')} {value}: must be a number >= 0")
        if not 0.0 <= self.crop_foreground < 1.0:
            raise InputError(f"--crop-foreground {self.crop_foreground}: must be in [0, 1)")
        if self.max_steps < 0 or self.sample_every < 0 or self.num_workers < 0 or self.crop_size < 0:
            raise InputError("--max-steps, --sample-every, --num-workers and --crop must be >= 0")


def resolve_precision(precision: str, device: torch.device) -> str:
    """Concrete precision for ``device`` ("auto" → bf16/fp16 on CUDA, fp32 on CPU)."""
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise InputError("precision 'fp16' needs a CUDA device; use bf16 or fp32 on CPU")
    return precision

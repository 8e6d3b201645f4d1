"""The classifier of the evaluation studies: a timm model trained from scratch on (N, H, W) model-space
images (AdamW, cosine decay, class-balanced BCE, flips and shifts; the best validation epoch kept) and
its sigmoid scores. Used by the Table-1 study (:mod:`mcfast.evaluate.classifier`) and the whole-image
two-sample test (:mod:`mcfast.evaluate.realism`).
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mcfast.errors import InputError
from mcfast.evaluate.config import TrainConfig
from mcfast.evaluate.metrics import roc_auc


def create_classifier(name: str, seed: int) -> torch.nn.Module:
    """A timm model from scratch (no downloaded weights), one input channel, one logit."""
    from mcfast.extras import require

    timm = require("timm", extra="eval", feature="the realism classifier")

    try:
        with torch.random.fork_rng(devices=[]):  # timm initialises from the global RNG
            torch.manual_seed(seed)
            return timm.create_model(name, pretrained=False, in_chans=1, num_classes=1)
    except RuntimeError as exc:
        raise InputError(f"model {name!r}: {exc}") from None


def _augment(x: torch.Tensor, g: torch.Generator, flips: bool = True) -> torch.Tensor:
    """Random horizontal flips (unless ``flips`` is False) and small translations (reflect-padded), per image."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5  # drawn either way: the shifts stay the same
    if flips:
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = max(1, x.shape[-1] // 16)
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    out = torch.empty_like(x)
    shifts = torch.randint(0, 2 * pad + 1, (x.shape[0], 2), generator=g)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        out[i] = xp[i, :, dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
    return out


def _autocast(precision: str):
    """bfloat16 autocast for the forward pass (``precision == "bf16"``); weights, gradients, the loss and
    the optimiser stay float32, so only the convolutions' and matmuls' inputs are rounded."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def _logits(model: torch.nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    with _autocast(precision):
        return model(x)[:, 0].float()


@torch.no_grad()
def predict_scores(model: torch.nn.Module, images: np.ndarray, batch_size: int = 64,
                   precision: str = "fp32") -> np.ndarray:
    """Sigmoid probabilities of the positive class for (N, H, W) model-space images."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).float()[:, None]
        out.append(torch.sigmoid(_logits(model, x, precision)).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def train_binary_classifier(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None,
                            y_val: np.ndarray | None, settings: TrainConfig, seed: int,
                            progress: Callable[[str], None] | None = None) -> tuple[torch.nn.Module, dict]:
    """Train ``settings.model`` with AdamW + cosine decay and class-balanced BCE.

    With validation data, the weights of the epoch with the best validation AUC are kept
    (the first best on ties). Returns the model and a history dict.
    """
    if len(np.unique(y_train)) < 2:
        raise InputError("training set needs both classes")
    g = torch.Generator().manual_seed(seed)
    model = create_classifier(settings.model, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(y_train) / settings.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs * steps_per_epoch)
    n_pos = float(y_train.sum())
    pos_weight = torch.tensor([(len(y_train) - n_pos) / n_pos])
    x_all = torch.from_numpy(x_train).float()[:, None]
    y_all = torch.from_numpy(y_train).float()
    history = {"train_loss": [], "val_auc": [], "best_epoch": None}
    best_auc, best_state = -1.0, None
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(y_all), generator=g)
        total = 0.0
        for i in range(0, len(order), settings.batch_size):
            idx = order[i:i + settings.batch_size]
            x = _augment(x_all[idx], g, settings.flip) if settings.augment else x_all[idx]
            loss = F.binary_cross_entropy_with_logits(_logits(model, x, settings.precision), y_all[idx],
                                                      pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history["train_loss"].append(total / len(y_all))
        if x_val is not None and len(x_val):
            auc = roc_auc(y_val, predict_scores(model, x_val, precision=settings.precision))
            history["val_auc"].append(auc)
            if np.isfinite(auc) and auc > best_auc:
                best_auc, best_state = auc, copy.deepcopy(model.state_dict())
                history["best_epoch"] = epoch + 1
        if progress:
            va = f", val AUC {history['val_auc'][-1]:.3f}" if history["val_auc"] else ""
            progress(f"  epoch {epoch + 1}/{settings.epochs}: loss {history['train_loss'][-1]:.4f}{va}")
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        history["best_epoch"] = settings.epochs
    return model, history

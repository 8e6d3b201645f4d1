"""The patch-level CNN two-sample test (Lopez-Paz & Oquab 2017, "Revisiting classifier two-sample tests"):
a small CNN trained from scratch per grouped fold on random crops, each held-out image scored by the
mean logit of its crops (the protocol: :mod:`mcfast.evaluate.two_sample`).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mcfast.errors import InputError
from mcfast.evaluate.folds import check_pair, grouped_folds, image_groups
from mcfast.evaluate.metrics import auc_with_interval, roc_auc
from mcfast.evaluate.spectrum import foreground_counts


class PatchCNN(nn.Module):
    """Four 3x3 conv layers (8-32-64-64 channels) with BatchNorm/ReLU, global average pool, one logit.

    The first layer has stride 1 and the others stride 2: on 40+40 smooth 256² fields against
    the same plus white noise of std 0.006, an all-stride-2 net (16-32-64-64, 6 epochs, 20 s)
    reached AUC 0.85 and twice the epochs did not help, while this one (5 epochs, ~47 s) reached
    1.0 -- pixel-scale texture needs a full-resolution first layer.
    """

    def __init__(self, channels: tuple[int, ...] = (8, 32, 64, 64)):
        super().__init__()
        layers, c_in = [], 1
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((-2, -1)))[:, 0]


def _valid_positions(images: np.ndarray, crop: int, min_std: float) -> np.ndarray:
    """(N, H-crop+1, W-crop+1) bool: crop at (y, x) has pixel std >= ``min_std`` (integral images)."""
    n, h, w = images.shape
    out = np.empty((n, h - crop + 1, w - crop + 1), bool)
    area = float(crop * crop)
    for i in range(n):
        x = images[i].astype(np.float64)
        s1 = np.pad(x.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        s2 = np.pad((x * x).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

        def window(s):
            return s[crop:, crop:] - s[:-crop, crop:] - s[crop:, :-crop] + s[:-crop, :-crop]

        mean = window(s1) / area
        var = window(s2) / area - mean * mean
        out[i] = var >= min_std * min_std
    return out


REGIONS = ("any", "interior", "edge")

# The CNN's training is chaotic enough that float rounding decides its result: oneDNN splits a
# convolution's sums by thread, and on identical images 1 and 2 threads gave AUCs up to 0.09 apart
# (session 18). Training on a fixed thread count makes the test a function of its inputs and seed on
# one machine; across CPUs the kernels differ too (``repeats`` averages that noise down).
DEFAULT_THREADS = 1


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run the body on ``n`` intra-op threads (``None``: as set), then restore the caller's count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _region_positions(images: np.ndarray, crop: int, region: str, background: float) -> np.ndarray:
    """(N, H-crop+1, W-crop+1) bool: crop at (y, x) lies wholly on foreground (pixels above
    ``background + 1e-3``: the breast or body) for "interior", holds both foreground and background
    for "edge"; all True for "any"."""
    n, h, w = images.shape
    if region == "any":
        return np.ones((n, h - crop + 1, w - crop + 1), bool)
    count = foreground_counts(images, crop, background)
    return count == crop * crop if region == "interior" else (count > 0) & (count < crop * crop)


def _sample_crops(images: np.ndarray, valid: np.ndarray, index: np.ndarray, n_crops: int, crop: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``n_crops`` uniform random crops of each image ``index[j]``, among its non-constant positions
    when it has any (else among all): (len(index) * n_crops, crop, crop) float32."""
    wp = valid.shape[2]
    windows = np.lib.stride_tricks.sliding_window_view(images, (crop, crop), axis=(1, 2))
    img_idx, ys, xs = [], [], []
    for i in index:
        flat = np.flatnonzero(valid[i])
        pos = rng.choice(flat, n_crops) if flat.size else rng.integers(0, valid[i].size, n_crops)
        img_idx.append(np.full(n_crops, i))
        ys.append(pos // wp)
        xs.append(pos % wp)
    return np.ascontiguousarray(windows[np.concatenate(img_idx), np.concatenate(ys), np.concatenate(xs)])


def patch_cnn_test(a, b, *, crop: int = 48, crops_per_image: int = 32, folds: int = 5, epochs: int = 5,
                   batch_size: int = 64, lr: float = 1e-3, min_std: float = 1e-3, seed: int = 0,
                   n_boot: int = 1000, ci: float = 0.95, groups_a=None, groups_b=None, region: str = "any",
                   background: float = -1.0, threads: int | None = DEFAULT_THREADS, repeats: int = 1,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Patch-level CNN two-sample test: can a small CNN tell crops of ``a`` (label 0) from ``b`` (1)?

    Folds come from :func:`grouped_folds` (by image, or by ``groups_a``/``groups_b`` such as
    patient ids). Per fold a :class:`PatchCNN` is trained from scratch (Adam, ``lr``, ``epochs``,
    batches of ``batch_size``, BCE) on ``crops_per_image`` fresh random crops of every training
    image each epoch; every held-out image is scored by the mean logit of ``crops_per_image``
    random crops drawn once per image from ``seed`` (so they do not depend on the fold). The
    out-of-fold scores of all images give the AUC and its stratified bootstrap interval
    (:func:`mcfast.evaluate.metrics.auc_with_interval`).

    Crop positions are uniform over the image, except that crops whose pixel standard deviation
    is below ``min_std`` (exactly or nearly constant, e.g. air clipped to -1024 HU outside the
    scanner's field of view) are skipped when an image has any other position: such background
    is identical in both sets and would only dilute the test. Air *with* noise is kept (a noise
    difference there is a real difference).

    ``region`` restricts the crops (training and test alike) to where a difference lies: "interior",
    crops wholly inside the foreground (pixels above ``background``, model space: the breast or body),
    or "edge", crops holding both foreground and background; "any" (default) leaves the positions as
    above. An image with no crop in the region is scored from crops anywhere. On the 512² film-anatomy
    mammograms of session 12 against the validation films (folds by image) "any" gave 0.83, "interior"
    1.00 and "edge" 0.80: the tissue's texture gave them away more than the skin line.

    The CNN trains and scores on ``threads`` intra-op threads (default 1, whatever the caller's count;
    ``None`` keeps the caller's): the result depends on the thread count (:data:`DEFAULT_THREADS`).

    ``repeats`` > 1 trains every fold's CNN that many times from other initial weights and training
    crops (the folds and test crops stay) and scores each image by the mean of its repeats' scores.
    Why: one CNN's result is chaotic in float rounding. On the same 8 phantom-anatomy CT slices against
    24 training slices, scored on 1 thread, an Intel Xeon gave 0.70 and an AMD EPYC 0.90 (session 19;
    the hand features agreed to 4 digits); the bootstrap interval covers the images, not the training.
    ``repeat_aucs`` lists each repeat's own AUC: their spread is the test's training noise.

    Runtime: two sets of 40 images of 256x256 with the defaults (crop 48, 32 crops per image,
    5 folds, 5 epochs) took about 50 s on one CPU thread (``torch.set_num_threads(1)``, on a
    2-core machine shared with a training job); the time grows linearly with
    images x crops_per_image x epochs x folds x crop², and barely with the image size.
    On those sets (smooth fields vs the same plus white noise of std 0.006) it gave AUC 1.0
    where :func:`mcfast.evaluate.hand_features.hand_feature_test` gave 0.60; same-process sets gave 0.47.

    Returns ``auc``, ``auc_lo``, ``auc_hi``, ``n_a``, ``n_b``, ``folds``, ``crop``,
    ``crops_per_image``, ``epochs``, ``region``, ``threads``, ``repeats``, ``repeat_aucs``, ``seconds``
    and the out-of-fold ``scores_a``/``scores_b`` (means over the repeats).
    """
    a, b = check_pair(a, b, folds)
    h, w = a.shape[1:]
    if not isinstance(crop, (int, np.integer)) or not 8 <= crop <= min(h, w):
        raise InputError(f"crop {crop!r} must be an integer in [8, {min(h, w)}] for {h}x{w} images")
    for name, value in (("crops_per_image", crops_per_image), ("epochs", epochs), ("batch_size", batch_size),
                        ("repeats", repeats)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    if not lr > 0:
        raise InputError(f"lr must be > 0, got {lr}")
    if region not in REGIONS:
        raise InputError(f"region {region!r} must be one of {', '.join(REGIONS)}")
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise InputError(f"threads must be an integer >= 1 or None, got {threads!r}")
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    images = np.concatenate([a, b])
    labels = np.concatenate([np.zeros(len(a), np.int64), np.ones(len(b), np.int64)])
    splits = grouped_folds(labels, image_groups(groups_a, groups_b, len(a), len(b)), folds, seed)
    valid = _valid_positions(images, crop, min_std) & _region_positions(images, crop, region, background)
    test_rng = np.random.default_rng([seed, 1])
    test_crops = torch.from_numpy(_sample_crops(images, valid, np.arange(len(images)), crops_per_image, crop,
                                                test_rng))[:, None]
    per_repeat = np.full((repeats, len(images)), np.nan)
    with _torch_threads(threads):  # only the CNNs' training and scoring depend on it
        for r in range(repeats):
            for f, (train_idx, test_idx) in enumerate(splits):
                # repeat 0 keeps the seeds of the single-run test, so its scores are what they were
                net_seed = seed * 1009 + f if r == 0 else int(np.random.default_rng([seed, 3, r, f]).integers(2**62))
                rng = np.random.default_rng([seed, 2, f] if r == 0 else [seed, 2, f, r])
                logits, loss = _fold_logits(images, labels, valid, train_idx, test_idx, test_crops, crop,
                                            crops_per_image, epochs, batch_size, lr, net_seed, rng)
                per_repeat[r, test_idx] = logits
                say(f"  patch CNN repeat {r + 1}/{repeats} fold {f + 1}/{folds}: final train loss {loss:.4f}")
    scores = per_repeat.mean(0)
    out = auc_with_interval(labels, scores, n_boot, ci, seed)
    out.update({"n_a": int(len(a)), "n_b": int(len(b)), "folds": int(folds), "crop": int(crop),
                "crops_per_image": int(crops_per_image), "epochs": int(epochs), "region": region,
                "threads": int(threads) if threads is not None else torch.get_num_threads(), "repeats": int(repeats),
                "repeat_aucs": [round(float(roc_auc(labels, row)), 4) for row in per_repeat] if repeats > 1 else [],
                "seconds": round(time.perf_counter() - t0, 3),
                "scores_a": scores[: len(a)].tolist(), "scores_b": scores[len(a):].tolist()})
    return out


def _fold_logits(images, labels, valid, train_idx, test_idx, test_crops, crop, crops_per_image, epochs, batch_size,
                 lr, net_seed: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Train one :class:`PatchCNN` on the crops of ``train_idx`` and score each ``test_idx`` image by the mean
    logit of its test crops; returns those scores and the last epoch's mean training loss."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(net_seed)
        net = PatchCNN()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    y_img = labels[train_idx]
    loss_sum = 0.0
    for epoch in range(epochs):
        x = torch.from_numpy(_sample_crops(images, valid, train_idx, crops_per_image, crop, rng))[:, None]
        y = torch.from_numpy(np.repeat(y_img, crops_per_image).astype(np.float32))
        order = torch.from_numpy(rng.permutation(len(y)))
        net.train()
        loss_sum, n_batches = 0.0, 0
        for i in range(0, len(order), batch_size):
            sel = order[i:i + batch_size]
            if sel.numel() < 2:  # BatchNorm needs two samples
                continue
            loss = F.binary_cross_entropy_with_logits(net(x[sel]), y[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            n_batches += 1
        loss_sum /= max(n_batches, 1)
    net.eval()
    with torch.no_grad():
        rows = (test_idx[:, None] * crops_per_image + np.arange(crops_per_image)).ravel()
        logits = torch.cat([net(test_crops[rows[i:i + 512]]) for i in range(0, rows.size, 512)])
    return logits.view(len(test_idx), crops_per_image).mean(1).double().numpy(), loss_sum

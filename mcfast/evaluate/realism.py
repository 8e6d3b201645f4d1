"""Realism audits of a synthetic set against real images.

- Classifier two-sample test: a ConvNeXt trained to tell real from synthetic; its held-out AUC
  with a bootstrap interval (0.5 = indistinguishable to this classifier, 1 = trivially separable).
- Fréchet distance on features of a network trained here (no downloaded weights): a small
  convolutional autoencoder trained on the real images only; the features are the per-channel
  mean and standard deviation of its bottleneck (a texture/intensity descriptor, like Inception
  pool features in FID but domain-specific and free of ImageNet weights).
- MS-SSIM diversity: mean MS-SSIM over random pairs within a set (lower = more diverse); the
  same number on the real set is the reference.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

from mcfast.errors import InputError
from mcfast.evaluate.metrics import auc_with_interval

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


# --------------------------------------------------------------------------- two-sample test
def two_sample_test(real: np.ndarray, synthetic: np.ndarray, *, model: str = "convnext_atto", epochs: int = 8,
                    batch_size: int = 16, lr: float = 1e-3, test_fraction: float = 0.5, seed: int = 0,
                    n_boot: int = 1000, ci: float = 0.95,
                    progress: Callable[[str], None] | None = None) -> dict:
    """Train real (0) vs synthetic (1) on part of each set, report the AUC on the held-out rest.

    Both sets are split with the same ``test_fraction`` (seeded). Returns ``auc``, ``auc_lo``,
    ``auc_hi`` and the counts.
    """
    from mcfast.evaluate.classifier import predict_scores, train_binary_classifier
    from mcfast.evaluate.config import TrainConfig

    real, synthetic = np.asarray(real, np.float32), np.asarray(synthetic, np.float32)
    if real.ndim != 3 or synthetic.ndim != 3 or real.shape[1:] != synthetic.shape[1:]:
        raise InputError(f"two-sample test needs (N, H, W) sets of one size, got {real.shape} and {synthetic.shape}")
    rng = np.random.default_rng(seed)
    parts = []
    for arr in (real, synthetic):
        n_test = int(round(len(arr) * test_fraction))
        if n_test < 2 or len(arr) - n_test < 2:
            raise InputError(f"two-sample test needs >= 2 train and >= 2 test images per set, got {len(arr)} images")
        order = rng.permutation(len(arr))
        parts.append((arr[order[n_test:]], arr[order[:n_test]]))
    (r_tr, r_te), (s_tr, s_te) = parts
    x_tr = np.concatenate([r_tr, s_tr])
    y_tr = np.concatenate([np.zeros(len(r_tr), np.int64), np.ones(len(s_tr), np.int64)])
    x_te = np.concatenate([r_te, s_te])
    y_te = np.concatenate([np.zeros(len(r_te), np.int64), np.ones(len(s_te), np.int64)])
    settings = TrainConfig(model=model, epochs=epochs, batch_size=batch_size, lr=lr, augment=True)
    net, hist = train_binary_classifier(x_tr, y_tr, None, None, settings, seed, progress)
    scores = predict_scores(net, x_te)
    out = auc_with_interval(y_te, scores, n_boot, ci, seed)
    out.update({"n_train": {"real": len(r_tr), "synthetic": len(s_tr)},
                "n_test": {"real": len(r_te), "synthetic": len(s_te)},
                "model": model, "epochs": epochs, "train_loss": hist["train_loss"]})
    return out


# --------------------------------------------------------------------------- Fréchet distance
def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), the Fréchet distance between two Gaussians.

    ``scipy.linalg.sqrtm`` of the product; when it is singular (fewer samples than features)
    or not finite, ``eps`` is added to both diagonals (as in pytorch-fid); the tiny imaginary
    part numerical error leaves is dropped.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise InputError(f"Fréchet distance: shapes differ ({mu1.shape}, {s1.shape}) vs ({mu2.shape}, {s2.shape})")
    with warnings.catch_warnings():  # a singular product is expected and handled just below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all() or _sqrtm_error(covmean, s1 @ s2) > 1e-3:
            offset = np.eye(s1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean), 0.0))


def _sqrtm_error(root: np.ndarray, target: np.ndarray) -> float:
    denom = max(np.linalg.norm(target), 1e-12)
    return float(np.linalg.norm(root @ root - target) / denom)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows = samples)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise InputError(f"feature statistics need a (N >= 2, D) array, got {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False)


class FeatureAutoencoder(nn.Module):
    """Small convolutional autoencoder (4 stride-2 stages); features = bottleneck channel mean and std."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        enc, dec = [], []
        c_in = 1
        for c in channels:
            enc += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(4, c), nn.SiLU()]
            c_in = c
        for c in list(reversed(channels))[1:] + [16]:
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c, 3, padding=1), nn.SiLU()]
            c_in = c
        dec += [nn.Conv2d(c_in, 1, 3, padding=1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        return torch.cat([z.mean((-2, -1)), z.std((-2, -1))], dim=1)


def train_feature_network(real: np.ndarray, epochs: int = 20, batch_size: int = 16, lr: float = 2e-3,
                          seed: int = 0) -> FeatureAutoencoder:
    """Train the feature autoencoder on real images only (MSE reconstruction), seeded."""
    real = np.asarray(real, np.float32)
    if real.ndim != 3 or real.shape[1] % 16 or real.shape[2] % 16:
        raise InputError(f"feature network needs (N, H, W) images with H and W divisible by 16, got {real.shape}")
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureAutoencoder()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x_all = torch.from_numpy(real)[:, None]
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_all), generator=g)
        for i in range(0, len(order), batch_size):
            x = x_all[order[i:i + batch_size]]
            loss = F.mse_loss(net(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    return net


def extract_features(net: FeatureAutoencoder, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    x = torch.from_numpy(np.asarray(images, np.float32))[:, None]
    return torch.cat([net.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def frechet_feature_distance(net: FeatureAutoencoder, a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the feature distributions of image sets ``a`` and ``b``."""
    return frechet_distance(*feature_statistics(extract_features(net, a)),
                            *feature_statistics(extract_features(net, b)))


# --------------------------------------------------------------------------- MS-SSIM
def _gaussian_window(size: int, sigma: float, dtype=torch.float32) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _ssim_components(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor, data_range: float):
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    k = win.numel()
    wx, wy = win.view(1, 1, 1, k), win.view(1, 1, k, 1)

    def blur(t):  # separable Gaussian, 'valid' (no padding) as in the reference implementation
        return F.conv2d(F.conv2d(t, wx), wy)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x ** 2
    syy = blur(y * y) - mu_y ** 2
    sxy = blur(x * y) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    return (lum * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, win_size: int = 11,
            sigma: float = 1.5, weights: tuple[float, ...] = MS_SSIM_WEIGHTS) -> torch.Tensor:
    """Multi-scale SSIM per image for (B, 1, H, W) tensors (model space: ``data_range`` = 2).

    Gaussian window ``win_size``/``sigma`` (shrunk to the image for tiny inputs); scales are
    dropped (weights renormalised) while the coarsest image would be smaller than the window,
    so 32-px images use fewer than five scales. Negative contrast terms are clamped to 0
    (as in pytorch-msssim) so the weighted product stays real.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise InputError(f"ms_ssim needs two (B, C, H, W) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    x, y = x.double(), y.double()
    min_side = min(x.shape[-2:])
    win_size = min(win_size, min_side if min_side % 2 else min_side - 1)
    levels = max(1, min(len(weights), int(math.floor(math.log2(min_side / win_size))) + 1))
    w = torch.tensor(weights[:levels], dtype=torch.float64)
    w = w / w.sum()
    win = _gaussian_window(win_size, sigma, torch.float64)
    cs_terms = []
    for level in range(levels):
        ssim_val, cs = _ssim_components(x, y, win, data_range)
        if level < levels - 1:
            cs_terms.append(torch.relu(cs))
            pad = (0, x.shape[-1] % 2, 0, x.shape[-2] % 2)
            x = F.avg_pool2d(F.pad(x, pad, mode="replicate"), 2)
            y = F.avg_pool2d(F.pad(y, pad, mode="replicate"), 2)
    stack = torch.stack(cs_terms + [torch.relu(ssim_val)], dim=0)  # (levels, B)
    return torch.prod(stack ** w[:, None], dim=0).float()


def msssim_diversity(images: np.ndarray, n_pairs: int = 200, seed: int = 0, batch_size: int = 64) -> dict:
    """Mean and std of MS-SSIM over random distinct pairs of a set (lower mean = more diverse)."""
    images = np.asarray(images, np.float32)
    n = len(images)
    if n < 2:
        raise InputError(f"MS-SSIM diversity needs at least 2 images, got {n}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n  # never the same image
    vals = []
    t = torch.from_numpy(images)[:, None]
    for k in range(0, n_pairs, batch_size):
        vals.append(ms_ssim(t[i[k:k + batch_size]], t[j[k:k + batch_size]]))
    v = torch.cat(vals).numpy().astype(np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "n_pairs": int(n_pairs)}


# --------------------------------------------------------------------------- all together
def realism_report(real: np.ndarray, synthetic: np.ndarray, settings, n_boot: int = 1000, ci: float = 0.95,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Two-sample test, Fréchet distance (synthetic vs real, and real half vs real half as the
    floor that sampling noise alone gives) and MS-SSIM diversity of both sets.

    ``settings`` is a :class:`mcfast.evaluate.config.RealismConfig`.
    """
    say = progress or (lambda msg: None)
    say("two-sample test: real vs synthetic")
    tst = two_sample_test(real, synthetic, model=settings.model, epochs=settings.epochs,
                          batch_size=settings.batch_size, lr=settings.lr, test_fraction=settings.test_fraction,
                          seed=settings.seed, n_boot=n_boot, ci=ci, progress=say)
    say("feature autoencoder on real images")
    net = train_feature_network(real, epochs=settings.feature_epochs, seed=settings.seed)
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(real))
    half_a, half_b = real[order[: len(real) // 2]], real[order[len(real) // 2:]]
    fd = {"synthetic_vs_real": frechet_feature_distance(net, synthetic, real),
          "real_half_vs_real_half": frechet_feature_distance(net, half_a, half_b),
          "features": "bottleneck channel mean+std of a conv autoencoder trained on the real images here "
                      f"({settings.feature_epochs} epochs, seed {settings.seed}); no downloaded weights"}
    say("MS-SSIM diversity")
    div = {"synthetic": msssim_diversity(synthetic, settings.msssim_pairs, settings.seed),
           "real": msssim_diversity(real, settings.msssim_pairs, settings.seed)}
    return {"two_sample": tst, "frechet": fd, "ms_ssim_diversity": div,
            "n_real": int(len(real)), "n_synthetic": int(len(synthetic))}

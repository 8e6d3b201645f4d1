"""Memorization audit: each synthetic image's nearest training image by shift-aligned NCC.

For every pair (synthetic a, training b) the normalised cross-correlation is computed at every
integer shift up to ``max_shift`` pixels, each over the overlapping region only (masked NCC,
Padfield 2012), all shifts at once with FFTs; the pair's score is the maximum. A synthetic
image whose best score exceeds a threshold is flagged as a likely copy. The same statistic for
real held-out images against the training set is the reference for "different patients".
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from mcfast.errors import InputError


def highpass(images: np.ndarray, sigma: float) -> np.ndarray:
    """``images − Gaussian blur(images, sigma)`` (reflect padding); ``sigma <= 0`` returns them unchanged.

    Mammograms share a large dark background and a breast silhouette, which alone make NCC of
    unrelated women ~0.96 at 128 px; removing low frequencies makes the score about texture.
    """
    x = np.asarray(images, np.float64)
    if sigma <= 0:
        return x
    radius = max(1, int(round(3 * sigma)))
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    t = torch.from_numpy(x)[:, None]
    if radius >= min(t.shape[-2:]):
        raise InputError(f"memorization: highpass_sigma {sigma} too large for {t.shape[-2]}x{t.shape[-1]} images")
    blur = torch.nn.functional.pad(t, (radius, radius, radius, radius), mode="reflect")
    blur = torch.nn.functional.conv2d(blur, g.view(1, 1, 1, -1))
    blur = torch.nn.functional.conv2d(blur, g.view(1, 1, -1, 1))
    return (t - blur)[:, 0].numpy()


def _corr(fa: torch.Tensor, fb: torch.Tensor, shape: tuple[int, int], max_shift: int) -> torch.Tensor:
    """Σ_x a(x)·b(x+s) for |s| <= max_shift from rFFTs; returns (..., 2S+1, 2S+1) with s = index − S."""
    full = torch.fft.irfft2(fa.conj() * fb, s=shape)
    offsets = torch.arange(-max_shift, max_shift + 1)
    return full.index_select(-2, offsets % shape[0]).index_select(-1, offsets % shape[1])


def max_ncc(synthetic: np.ndarray, training: np.ndarray, max_shift: int = 8, chunk: int | None = None,
            min_overlap: float = 0.5, progress: Callable[[str], None] | None = None,
            exclude=None) -> dict:
    """For each synthetic image: best NCC over all training images and shifts.

    Returns ``ncc`` (S,), ``index`` (S,) of the nearest training image and ``shift`` (S, 2)
    (dy, dx) such that synthetic[y, x] ≈ training[y + dy, x + dx].

    ``exclude``: per synthetic image, a training index it is not compared with (-1: none). An image
    guided by a training image (real-slice or film anatomy) is close to that one by design; excluding
    it asks whether the image is close to any *other* training image.
    """
    a = torch.from_numpy(np.asarray(synthetic, np.float64))
    b = torch.from_numpy(np.asarray(training, np.float64))
    if a.dim() != 3 or b.dim() != 3 or a.shape[1:] != b.shape[1:]:
        raise InputError(f"memorization: need (N, H, W) sets of one size, got {tuple(a.shape)} and {tuple(b.shape)}")
    h, w = a.shape[1:]
    if not 0 <= max_shift < min(h, w) // 2:
        raise InputError(f"memorization: max_shift {max_shift} must be in [0, {min(h, w) // 2})")
    if len(b) == 0 or len(a) == 0:
        raise InputError("memorization: empty image set")
    skip = torch.full((len(a),), -1, dtype=torch.long) if exclude is None else torch.as_tensor(np.asarray(exclude, np.int64))
    if skip.shape != (len(a),) or bool(((skip < -1) | (skip >= len(b))).any()):
        raise InputError(f"memorization: exclude needs one training index in [-1, {len(b)}) per synthetic image "
                         f"({len(a)}), got {np.asarray(exclude).tolist()}")
    if len(b) == 1 and bool((skip == 0).any()):
        raise InputError("memorization: exclude leaves no training image to compare with")
    shape = (h + max_shift, w + max_shift)  # zero padding: no wrap-around for |s| <= max_shift

    def fft(t):
        return torch.fft.rfft2(t, s=shape)

    ones = torch.ones(1, h, w, dtype=torch.float64)
    f_one = fft(ones)
    n = _corr(f_one, f_one, shape, max_shift)[0]  # overlap pixel count per shift
    fb, fb2 = fft(b), fft(b * b)
    sum_b = _corr(f_one, fb, shape, max_shift)      # Σ over overlap of b, (T, K, K)
    sum_b2 = _corr(f_one, fb2, shape, max_shift)
    var_b = sum_b2 - sum_b ** 2 / n
    valid = n >= min_overlap * h * w
    best = torch.full((len(a),), -2.0, dtype=torch.float64)
    best_idx = torch.zeros(len(a), dtype=torch.long)
    best_shift = torch.zeros(len(a), 2, dtype=torch.long)
    k = 2 * max_shift + 1
    if chunk is None:  # bound the (chunk, T, H', W') float64 correlation to ~20 M values
        chunk = max(1, int(2e7 // (len(b) * shape[0] * shape[1])))
    for start in range(0, len(a), chunk):
        ac = a[start:start + chunk]
        fa, fa2 = fft(ac), fft(ac * ac)
        sum_a = _corr(fa, f_one, shape, max_shift)      # (C, K, K)
        sum_a2 = _corr(fa2, f_one, shape, max_shift)
        var_a = sum_a2 - sum_a ** 2 / n
        sum_ab = _corr(fa[:, None], fb[None], shape, max_shift)  # (C, T, K, K)
        num = sum_ab - sum_a[:, None] * sum_b[None] / n
        den = torch.sqrt(torch.clamp(var_a[:, None] * var_b[None], min=0.0))
        ncc = torch.where(den > 1e-12 * n, num / torch.clamp(den, min=1e-300), torch.zeros_like(num))
        ncc = torch.where(valid, ncc, torch.full_like(ncc, -2.0)).clamp(max=1.0)
        own = skip[start:start + len(ac)]
        rows = torch.nonzero(own >= 0).flatten()
        ncc[rows, own[rows]] = -2.0  # below any NCC: an excluded pair is never the nearest
        flat = ncc.reshape(len(ac), -1)
        val, arg = flat.max(1)
        best[start:start + len(ac)] = val
        best_idx[start:start + len(ac)] = arg // (k * k)
        rem = arg % (k * k)
        best_shift[start:start + len(ac)] = torch.stack([rem // k, rem % k], 1) - max_shift
        if progress:
            progress(f"  memorization: {min(start + chunk, len(a))}/{len(a)} synthetic images")
    return {"ncc": best.numpy(), "index": best_idx.numpy(), "shift": best_shift.numpy()}


def memorization_report(synthetic: np.ndarray, training: np.ndarray, threshold: float = 0.95, max_shift: int = 8,
                        top_k: int = 8, synthetic_names=None, training_names=None,
                        reference: np.ndarray | None = None, reference_training: np.ndarray | None = None,
                        highpass_sigma: float = 0.0, progress: Callable[[str], None] | None = None) -> dict:
    """Nearest-training-image scores, the flagged pairs (NCC >= threshold), the rate and the top pairs.

    ``reference``: optional real images *not* in ``training`` (held-out patients), scored the same
    way (against ``reference_training`` when given, else ``training``); their distribution shows
    how similar images of unrelated patients already are. ``highpass_sigma`` > 0 scores
    :func:`highpass` versions of every image (see there why).
    """
    if not -1.0 <= threshold <= 1.0:
        raise InputError(f"memorization threshold must be in [-1, 1], got {threshold}")
    res = max_ncc(highpass(synthetic, highpass_sigma), highpass(training, highpass_sigma), max_shift,
                  progress=progress)
    s_names = list(synthetic_names) if synthetic_names is not None else [str(i) for i in range(len(synthetic))]
    t_names = list(training_names) if training_names is not None else [str(i) for i in range(len(training))]
    order = np.argsort(-res["ncc"], kind="stable")

    def pair(i):
        return {"synthetic_index": int(i), "synthetic_name": s_names[i], "training_index": int(res["index"][i]),
                "training_name": t_names[res["index"][i]], "ncc": float(res["ncc"][i]),
                "shift": [int(v) for v in res["shift"][i]]}

    flagged = [pair(i) for i in order if res["ncc"][i] >= threshold]
    out = {
        "threshold": threshold, "max_shift": max_shift, "highpass_sigma": highpass_sigma, "n_synthetic": int(len(synthetic)),
        "n_training": int(len(training)), "n_flagged": len(flagged),
        "rate": len(flagged) / len(synthetic), "flagged": flagged,
        "top": [pair(i) for i in order[:top_k]],
        "ncc": [round(float(v), 6) for v in res["ncc"]],
        "ncc_quantiles": {q: float(np.quantile(res["ncc"], float(q))) for q in ("0.5", "0.9", "0.99")},
    }
    if reference is not None and len(reference):
        ref_train = training if reference_training is None else reference_training
        ref = max_ncc(highpass(reference, highpass_sigma), highpass(ref_train, highpass_sigma), max_shift)["ncc"]
        out["reference_ncc"] = [round(float(v), 6) for v in ref]
        out["reference_rate"] = float((ref >= threshold).mean())
        out["reference_quantiles"] = {q: float(np.quantile(ref, float(q))) for q in ("0.5", "0.9", "0.99")}
    return out

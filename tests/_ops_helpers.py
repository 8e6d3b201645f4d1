"""Shared builders for the ops tests: random packed guided_step arguments."""
from __future__ import annotations

import itertools

import torch


def packed_args(B=2, H=32, W=32, factors=((4, 2, 8), (1, 8, 2)), kinds=((0, 1, 2), (2, 0, 1)), active=None,
                dtype=torch.float32, seed=0, noise=True, learned=True):
    """Random arguments of mcfast::guided_step (everything but seed, offset, learned_variance, clip)."""
    g = torch.Generator().manual_seed(seed)
    M = len(factors[0])
    x = torch.randn(B, 1, H, W, generator=g).to(dtype)
    mo = (torch.randn(B, 2 if learned else 1, H, W, generator=g) * 0.5).to(dtype)
    coefs = torch.rand(B, 9, generator=g) + 0.1
    coefs[:, 4] = -4.0
    coefs[:, 5] = -2.0
    fac = torch.tensor(factors, dtype=torch.int64)
    act = torch.ones(B, M, dtype=torch.bool) if active is None else torch.tensor(active, dtype=torch.bool)
    sizes = [(H // f) * (W // f) for f in fac.flatten().tolist()]
    offs = torch.tensor(list(itertools.accumulate([0] + sizes[:-1])), dtype=torch.int64).reshape(B, M)
    refs = torch.randn(sum(sizes), generator=g)
    ref_noise = torch.randn(sum(sizes), generator=g) if noise else None
    z = torch.randn(B, 1, H, W, generator=g) if noise else None
    kind = torch.tensor(kinds, dtype=torch.int64)
    patch = torch.tensor([W / 3, H / 2, W / 8, 2.0, 3.0, W / 2, H / 2 + 1]).repeat(B, M, 1)
    maps = torch.rand(2 * H * W, generator=g)
    woff = torch.tensor([[(b + m) % 2 * H * W for m in range(M)] for b in range(B)], dtype=torch.int64)
    return [x, mo, coefs, z, ref_noise, refs, offs, fac, act, kind, patch, maps, woff]

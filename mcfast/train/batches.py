"""The data order of training: a pure function of (seed, epoch), so a resumed run needs no sampler state,
and each rank's slice of every global batch (so N processes see the batches of one).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler

from mcfast.train.ddp import DistInfo


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of one epoch: a pure function of (seed, epoch), so resuming needs no sampler state."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def global_batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Dataset indices of the global batch of ``step`` (positions step·B … step·B+B−1 across epochs)."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n)
        perm = epoch_permutation(n, seed, epoch)
        take = min(batch_size - len(out), n - offset)
        out.extend(perm[offset:offset + take].tolist())
        pos += take
    return out


class StepBatchSampler(Sampler[list[int]]):
    """Yields this rank's slice of every global batch from ``start_step`` to ``max_steps``."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, max_steps: int, info: DistInfo):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.max_steps, self.info = start_step, max_steps, info
        self.local = batch_size // info.world_size

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.max_steps):
            idx = global_batch_indices(self.n, self.batch_size, self.seed, step)
            r = self.info.rank
            yield idx[r * self.local:(r + 1) * self.local]

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step)

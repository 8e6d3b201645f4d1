"""Gaussian noise from explicit generators: the one rule every sampler path draws by.

Noise is drawn on the generator's device (so a CPU generator gives the same numbers whatever device
the samples live on) and then moved to the samples' device. A batch takes one generator, or one per
item of the leading dimension; then item b is drawn from generator b alone and does not depend on its
batch-mates.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mcfast.errors import InputError

Generators = torch.Generator | Sequence[torch.Generator] | None


def image_generator(generator: Generators, b: int) -> torch.Generator | None:
    """The generator image ``b`` draws from: the shared one, or its own when there is one per image."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    return generator[b]


def randn(shape, generator: Generators, device: torch.device | str | None,
          dtype: torch.dtype = torch.float32) -> Tensor:
    """N(0, I) noise of ``shape`` on ``device``, drawn on the generator's device and moved if they differ.

    ``generator`` may be a sequence with one generator per item of the leading dimension: item b is
    then drawn from generator b alone (shape[1:] each), so it does not depend on its batch-mates.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if generator is not None and not isinstance(generator, torch.Generator):
        generators = list(generator)
        if len(generators) != shape[0]:
            raise InputError(f"{len(generators)} noise generators for a batch of {shape[0]}")
        return torch.stack([randn(tuple(shape[1:]), g, device, dtype) for g in generators])
    gen_device = generator.device if generator is not None else device
    z = torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype)
    return z if z.device == device else z.to(device)

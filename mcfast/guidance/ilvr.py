"""``ILVRGuidance``: multi-condition weighted ILVR as a guidance object for ``mcfast.diffusion.sample``.

The sampler asks it for ``fused_step`` first (one fused op for the reverse step and all
corrections, from ``mcfast.ops.guided.FusedGuidedStep`` when that can serve; the object keeps the
op's packed tables) and otherwise does the plain step and calls ``correct``, which runs the PyTorch
path of :mod:`mcfast.guidance.oracle`. Guidance noise ε_s comes from one generator
per (image, condition), seeded from the run's seed (or from each image's own seed when one seed per
image is given, so an image's guidance noise does not depend on its batch-mates), so adding or
removing a condition at the end of an image's list leaves the other conditions' noise unchanged;
each run (starting at the first reverse step) restarts these streams, so the same object and seed
give the same image.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from mcfast.constants import BACKENDS
from mcfast.errors import InputError
from mcfast.guidance.conditions import (Condition, ConditionsArg, check_conditions, conditions_per_image,
                                        original_num_steps)
from mcfast.guidance.oracle import active_conditions, clean_reference_correction, guided_correction
from mcfast.seeding import mix_seed


def _condition_seed(seed: int, b: int, s: int) -> int:
    """The seed of condition ``s`` of image ``b`` (:func:`mcfast.seeding.mix_seed`)."""
    return mix_seed(seed, b, s)


class ILVRGuidance:
    """Weighted multi-condition ILVR guidance (paper eq. 3–5) implementing the sampler's guidance protocol.

    ``conditions``: a Condition, a list shared by every image, or one list per image.
    ``diffusion``: the (possibly respaced) chain used for sampling; stop steps are checked against its
    original T. ``generator``: a torch.Generator (one seed is drawn from it here), an int seed, a
    sequence of int seeds (one per image, for per-conditions lists), or None (seed 0). ``backend``: "reference" (always PyTorch), "fused" (the fused op or an error),
    "auto" (fused when it can serve, else reference).

    After a run, ``correction_counts[b][s]`` is how many steps applied condition s to image b and
    ``applied_timesteps[b][s]`` lists their original timesteps.
    """

    def __init__(self, conditions: ConditionsArg, diffusion: Any,
                 generator: torch.Generator | int | Sequence[int] | None = None,
                 backend: str = "auto"):
        if backend not in BACKENDS:
            raise InputError(f"unknown guidance backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.diffusion = diffusion
        self.backend = backend
        if isinstance(conditions, Condition):
            conditions = [conditions]
        self.conditions = [list(c) if isinstance(c, (list, tuple)) else c for c in conditions]
        # Validate the structure and stop steps now, before any sampling work.
        probe = conditions_per_image(self.conditions, len(self.conditions) if _is_per_image(self.conditions) else 1)
        T = original_num_steps(diffusion)
        for b, conds in enumerate(probe):
            for c in conds:
                if c.stop_step > T:
                    raise InputError(f"{c.label} (image {b}) stop_step {c.stop_step} is past the diffusion's "
                                     f"{T} timesteps")
        self.image_seeds: list[int] | None = None
        if generator is None:
            self.seed = 0
        elif isinstance(generator, (list, tuple)):
            if not _is_per_image(self.conditions) or len(generator) != len(self.conditions):
                raise InputError(f"{len(generator)} guidance seeds need as many per-image condition lists, got "
                                 f"{len(self.conditions)} {'lists' if _is_per_image(self.conditions) else 'conditions'}")
            self.image_seeds = [_as_seed(g) for g in generator]
            self.seed = self.image_seeds[0] if self.image_seeds else 0
        elif isinstance(generator, torch.Generator):
            self.seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device).item())
        else:
            self.seed = _as_seed(generator)
        self._per_image: list[list[Condition]] | None = None
        self._image_shape: tuple[int, int] | None = None
        self._generators: dict[tuple[int, int, str], torch.Generator] = {}
        self._fused: Any = None  # the fused step and its packed tables, made on first use
        self.correction_counts: list[list[int]] = []
        self.applied_timesteps: list[list[list[int]]] = []

    # -- conditions bound to a batch -----------------------------------------------------------
    def conditions_per_image(self, batch_size: int) -> list[list[Condition]]:
        """The conditions as one list per image for a batch of ``batch_size``."""
        return conditions_per_image(self.conditions, batch_size)

    def _bind(self, x: Tensor) -> list[list[Condition]]:
        batch, shape = x.shape[0], (int(x.shape[-2]), int(x.shape[-1]))
        if self._per_image is None or len(self._per_image) != batch or self._image_shape != shape:
            per_image = self.conditions_per_image(batch)
            check_conditions(per_image, shape, self.diffusion)
            self._per_image, self._image_shape = per_image, shape
            self.reset()
        return self._per_image

    def reset(self) -> None:
        """Zero the correction counters and restart every condition's noise stream."""
        per_image = self._per_image or []
        self.correction_counts = [[0] * len(conds) for conds in per_image]
        self.applied_timesteps = [[[] for _ in conds] for conds in per_image]
        self._generators.clear()

    def _start_step(self, x: Tensor, i: int) -> list[list[Condition]]:
        per_image = self._bind(x)
        if i == self.diffusion.num_timesteps - 1:
            self.reset()  # a new run: fresh counts, streams restarted from the seed
        return per_image

    def _generator(self, b: int, s: int, device: torch.device) -> torch.Generator:
        key = (b, s, str(device))
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            seed = (_condition_seed(self.seed, b, s) if self.image_seeds is None
                    else _condition_seed(self.image_seeds[b], 0, s))
            gen.manual_seed(seed)
            self._generators[key] = gen
        return gen

    def _generators_for(self, per_image: list[list[Condition]], device: torch.device) -> list[list[torch.Generator]]:
        return [[self._generator(b, s, device) for s in range(len(conds))] for b, conds in enumerate(per_image)]

    def _count(self, per_image: list[list[Condition]], i: int) -> None:
        t = int(self.diffusion.timestep_map[i])
        for b, s in active_conditions(per_image, t):
            self.correction_counts[b][s] += 1
            self.applied_timesteps[b][s].append(t)

    # -- sampler protocol ----------------------------------------------------------------------
    def correct(self, x_prev: Tensor, i: int) -> Tensor:
        """Apply every active condition's correction to x_{i−1} (the reference PyTorch path)."""
        per_image = self._start_step(x_prev, i)
        out = guided_correction(x_prev, per_image, self.diffusion, i, self._generators_for(per_image, x_prev.device))
        self._count(per_image, i)
        return out

    def correct_x0(self, pred_xstart: Tensor, i: int) -> Tensor:
        """The model's x̂₀ at chain index ``i`` moved onto every active condition's clean reference
        (``x0_guidance`` sampling); draws no noise and counts nothing (``correct`` counts the step)."""
        per_image = self._start_step(pred_xstart, i)
        return clean_reference_correction(pred_xstart, per_image, self.diffusion, i)

    def fused_step(self, x_t: Tensor, model_output: Tensor, i: int, method: str, eta: float, clip_denoised: bool,
                   generator: torch.Generator | None) -> Tensor | None:
        """x_{i−1} from the fused op (reverse step + all corrections), or None to use ``correct``."""
        if self.backend == "reference":
            return None
        per_image = self._start_step(x_t, i)
        # Our per-condition streams go along, so with a sampler generator the fused op draws the
        # same ε_s as ``correct`` would (its "passed" noise mode); without one it uses in-kernel Philox.
        out = self._fused_op()(x_t, model_output, i, per_image, method, eta, clip_denoised, generator,
                               condition_generators=self._generators_for(per_image, x_t.device))
        if out is None:
            if self.backend == "fused":
                raise InputError("guidance backend 'fused' was requested but the fused guided step cannot serve "
                                 "this run (the log says why); use backend 'auto' or 'reference'")
            return None
        self._count(per_image, i)
        return out

    def _fused_op(self):
        """This object's :class:`mcfast.ops.guided.FusedGuidedStep` (it keeps the packed tables)."""
        if self._fused is None:
            from mcfast.ops.guided import FusedGuidedStep  # here: mcfast.ops.guided imports mcfast.guidance
            self._fused = FusedGuidedStep(self.diffusion, force=self.backend == "fused")
        return self._fused

    # -- precomputation for the fused op -------------------------------------------------------
    def lowpassed_references(self, batch_size: int | None = None,
                             device: torch.device | str | None = None) -> list[list[Tensor]]:
        """down_N(ref) (1, H/N, W/N) for each condition, one list per image (cached on the conditions).

        ``batch_size`` defaults to the bound batch (or the number of per-image lists, or 1).
        """
        if batch_size is None:
            if self._per_image is not None:
                batch_size = len(self._per_image)
            else:
                batch_size = len(self.conditions) if _is_per_image(self.conditions) else 1
        return [[c.low_reference(device) for c in conds] for conds in self.conditions_per_image(batch_size)]


def _as_seed(value: Any) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    raise InputError(f"guidance generator must be a torch.Generator or a seed >= 0, got {value!r}")


def _is_per_image(conditions: ConditionsArg) -> bool:
    if isinstance(conditions, Condition):
        return False
    items = list(conditions)
    return bool(items) and all(isinstance(c, (list, tuple)) for c in items)

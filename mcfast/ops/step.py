"""The typed Python face of ``torch.ops.mcfast.guided_step``: the one place that knows its positional order.

Every caller — the eager fused dispatch (:mod:`mcfast.ops.guided`), the TorchScript ops sampler
(:mod:`mcfast.export.opsampler`, scripted with it) and the AOTInductor step module
(:mod:`mcfast.export.aoti`, exported through it) — calls :func:`guided_step` with keyword arguments.
The argument names are the op schema's (csrc/ops.cpp), which the Triton kernel
(``mcfast.ops.triton_kernels.guided_step_triton``) shares, so one keyword dict serves both.
See docs/kernels.md for the tables.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mcfast.diffusion.coefficients import FUSED_COLUMNS, NUM_COEFS  # noqa: F401  (the coefs table's columns)

# Weight kinds of the (B, M) ``weight_kind`` table and the columns of the (B, M, 7) ``patch`` table.
WEIGHT_FULL, WEIGHT_PATCH, WEIGHT_MAP = 0, 1, 2
PATCH_COLUMNS = ("cx", "cy", "sigma", "box_x", "box_y", "box_w", "box_h")


def guided_step(x_t: Tensor, model_output: Tensor, coefs: Tensor, refs: Tensor, ref_offsets: Tensor,
                factors: Tensor, active: Tensor, weight_kind: Tensor, patch: Tensor, weight_maps: Tensor,
                weight_offsets: Tensor, noise: Optional[Tensor] = None, ref_noise: Optional[Tensor] = None,
                seed: int = 0, offset: int = 0, learned_variance: bool = False, clip: bool = True) -> Tensor:
    """x_{t−1} from one fused guided step (reverse step + every active condition's correction).

    ``noise`` / ``ref_noise`` given: the op uses them; both None: it draws them in-kernel from
    Philox (``seed``, ``offset``). Scriptable (``torch.jit.script`` compiles callers through it).
    """
    return torch.ops.mcfast.guided_step(x_t, model_output, coefs, noise, ref_noise, refs, ref_offsets, factors,
                                        active, weight_kind, patch, weight_maps, weight_offsets, seed, offset,
                                        learned_variance, clip)

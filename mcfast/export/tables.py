"""The fused op's per-run tables as the exported samplers carry them (a TorchScript NamedTuple).

No ``from __future__ import annotations`` here: TorchScript reads a NamedTuple's field types from
its real annotations.
"""
from typing import NamedTuple

from torch import Tensor


class FusedTables(NamedTuple):
    """The per-run tables of ``torch.ops.mcfast.guided_step`` (docs/kernels.md), built by the ops variant."""

    refs: Tensor            # float32 (R,): every slot's down_N(ref), flattened (padding slots: zeros)
    ref_offsets: Tensor     # int64 (B, S), host
    weight_kind: Tensor     # int64 (B, S), host: ops.step.WEIGHT_FULL or WEIGHT_MAP
    weight_offsets: Tensor  # int64 (B, S), host
    weight_maps: Tensor     # float32 (B·S·H·W,): the weights as given
    patch: Tensor           # float32 (B, S, 7), host: unused (no Gaussian patch kind here)
    factors: Tensor         # int64 (B, S), host
    stop_steps: Tensor      # int64 (B, S), host (-1: padding slot)

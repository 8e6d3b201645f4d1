"""The intensity map between model space and the space a run diffuses in.

Every image in mcfast is in model space [-1, 1] (CT: HU linearly, ``io.windows.hu_to_model``). A run
may diffuse in a companded space instead: training encodes each batch, sampling encodes the guidance
references and decodes the result, so recipes, plans, outputs and evaluation never see it. The run's
config.json names it (``diffusion.companding``; absent: ``"linear"``, the identity).

Why ``"ct_asinh"``: on the linear scale one model unit is 2047.5 HU, so soft tissue's ±100 HU structure is
±0.05, below the per-pixel noise of every step with t > 50 (cosine schedule: σ ≈ 340 HU at t = 100). The
recipes hand the image to the network alone below t = 100, and that is where the 512² slices grew ±100 HU
swirls in muscle and fat (docs/guidance.md, "How far a real slice or film guides"). An asinh centred at
-100 HU with scale 300 HU stretches soft tissue about 2.5× (40 HU: ×2.53), keeps the lung's contrast
(-850 HU: ×1.04), and compresses dense bone and metal (1000 HU: ×0.73; 2000 HU: ×0.39), so soft-tissue
structure is set while the anatomy still guides.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mcfast.constants import COMPANDINGS
from mcfast.errors import InputError
from mcfast.io.windows import HU_MAX, HU_MIN, hu_to_model, model_to_hu

if TYPE_CHECKING:  # torch is not imported here, so the CLI can list the choices without it
    from torch import Tensor

CT_ASINH_CENTER_HU = -100.0
CT_ASINH_SCALE_HU = 300.0


def _asinh_hu(hu: float) -> float:
    return math.asinh((hu - CT_ASINH_CENTER_HU) / CT_ASINH_SCALE_HU)


_Z_LO, _Z_HI = _asinh_hu(HU_MIN), _asinh_hu(HU_MAX)


@dataclass(frozen=True)
class Companding:
    """``encode``: model space → diffusion space; ``decode``: its inverse. Both map [-1, 1] onto
    [-1, 1] monotonically (inputs clipped to it) and take and return float tensors of any shape."""

    name: str

    def encode(self, x: Tensor) -> Tensor:
        if self.name == "linear":
            return x
        z = ((model_to_hu(x) - CT_ASINH_CENTER_HU) / CT_ASINH_SCALE_HU).asinh()
        return (z - _Z_LO) * (2.0 / (_Z_HI - _Z_LO)) - 1.0

    def decode(self, z: Tensor) -> Tensor:
        if self.name == "linear":
            return z
        z = (z.clamp(-1.0, 1.0) + 1.0) * ((_Z_HI - _Z_LO) / 2.0) + _Z_LO
        return hu_to_model(z.sinh() * CT_ASINH_SCALE_HU + CT_ASINH_CENTER_HU)


def get_companding(name: str | None) -> Companding:
    """The named map (None: ``"linear"``); an unknown name is an InputError listing the known ones."""
    name = "linear" if name in (None, "") else name
    if name not in COMPANDINGS:
        raise InputError(f"unknown companding {name!r}; choose one of {', '.join(COMPANDINGS)}")
    return Companding(name)

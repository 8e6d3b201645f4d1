"""The exported sampler variant that runs each reverse step as one ``torch.ops.mcfast.guided_step``.

TorchScript resolves ``torch.ops.mcfast.*`` when the module is scripted and again when it is loaded,
so this subclass is used only when the ops library is loaded (``mcfast.ops.load()`` or
``torch.ops.load_library``); ``mcfast.export.build.sampler_class`` picks it then. A run takes the
fused op when every condition uses the box filter with a power-of-two factor (the op's contract),
and otherwise falls back, inside the same module, to the plain PyTorch loop of :class:`GuidedSampler`.

Noise: with ``step_noise`` and ``cond_noise`` given the op gets z and the low-resolution
down_N(ε) = avg-pool of the given full-resolution ε (so results match the eager reference to float
rounding); without them the op draws both in-kernel from Philox (``seed``, offset = step index j).
The per-step coefficients are :func:`mcfast.diffusion.coefficients.fused_step_table` (DDPM and DDIM
alike: DDIM's update is linear in x̂₀ and x_t, so only the table differs).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from mcfast.diffusion.coefficients import fused_step_table
from mcfast.export.tables import FusedTables
from mcfast.export.torchscript import GuidedSampler
from mcfast.ops.step import WEIGHT_FULL, WEIGHT_MAP, guided_step


def ops_loaded() -> bool:
    """Whether ``torch.ops.mcfast.guided_step`` is registered in this process."""
    try:
        torch.ops.mcfast.guided_step
    except (AttributeError, RuntimeError):
        return False
    return True


def _low_zeros(h: int, w: int, f: int, device: torch.device) -> Tensor:
    """A padding slot's (unused) low-resolution plane."""
    return torch.zeros([h // f if h % f == 0 else h, w // f if w % f == 0 else w], device=device)


class OpsGuidedSampler(GuidedSampler):
    """:class:`GuidedSampler` whose steps call ``torch.ops.mcfast.guided_step`` when the conditions allow."""

    def __init__(self, unet: torch.nn.Module, diffusion, *args, **kwargs):
        super().__init__(unet, diffusion, *args, **kwargs)
        table, learned = fused_step_table(diffusion, "ddim" if self.is_ddim else "ddpm", self.eta)
        self.register_buffer("fused_coefs", torch.from_numpy(table).float())
        self.fused_learned = bool(learned)
        self.weight_full, self.weight_map = WEIGHT_FULL, WEIGHT_MAP  # attributes: TorchScript reads no globals

    def _prepare_fused(self, refs: Tensor, factors: Tensor, stop_steps: Tensor, weights: Tensor,
                       filters: Tensor) -> Optional[FusedTables]:
        b, s, h, w = refs.shape[0], refs.shape[1], refs.shape[2], refs.shape[3]
        device = refs.device
        lows: List[Tensor] = []
        ref_offsets = torch.zeros([b, s], dtype=torch.long)
        weight_kind = torch.full([b, s], self.weight_full, dtype=torch.long)
        offset = 0
        for bi in range(b):
            for si in range(s):
                f = int(factors[bi, si])
                if int(stop_steps[bi, si]) >= 0:
                    if int(filters[bi, si]) != 0 or f < 1 or (f & (f - 1)) != 0:
                        return None  # outside the fused op's contract: plain PyTorch loop
                    low = self._box_down(refs[bi, si], f)
                    if not bool((weights[bi, si] == 1.0).all()):
                        weight_kind[bi, si] = self.weight_map
                else:
                    low = _low_zeros(h, w, max(f, 1), device)
                ref_offsets[bi, si] = offset
                flat = low.reshape(-1)
                offset += flat.numel()
                lows.append(flat)
        refs_flat = torch.cat(lows) if len(lows) > 0 else torch.zeros([0], device=device)
        # The small tables stay on the host (the op accepts them there on every device: no per-step sync on
        # a GPU); refs and weight maps live with the samples.
        return FusedTables(refs=refs_flat.contiguous(), ref_offsets=ref_offsets, weight_kind=weight_kind,
                           weight_offsets=(torch.arange(b * s, dtype=torch.long) * (h * w)).reshape(b, s),
                           weight_maps=weights.reshape(-1).contiguous(),
                           patch=torch.zeros([b, s, 7], dtype=torch.float32),
                           factors=factors.to(device="cpu", dtype=torch.long),
                           stop_steps=stop_steps.to(device="cpu", dtype=torch.long))

    def _step_inputs(self, x: Tensor, i: int, j: int, tables: FusedTables, step_noise: Optional[Tensor],
                     cond_noise: Optional[Tensor]) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
        """(coefs, active, noise, ref_noise) of step j (chain index i): the per-step part of the op's inputs.

        Explicit noise: z as given (zeros when only ε is), and down_N(ε) of each slot laid out like
        ``tables.refs``; no explicit noise: both None (the op draws in-kernel).
        """
        b = x.shape[0]
        t_orig = int(self.timestep_map[i])
        active = (tables.stop_steps >= 0) & (tables.stop_steps <= t_orig)
        coefs = self.fused_coefs[i].unsqueeze(0).expand(b, self.fused_coefs.shape[1]).contiguous()
        if step_noise is None and cond_noise is None:
            return coefs, active, None, None
        h, w = x.shape[2], x.shape[3]
        if step_noise is not None:
            noise = step_noise[j].to(device=x.device, dtype=torch.float32).contiguous()
        else:
            noise = torch.zeros_like(x)
        parts: List[Tensor] = []
        for bi in range(b):
            for si in range(tables.factors.shape[1]):
                f = max(int(tables.factors[bi, si]), 1)
                if cond_noise is not None and int(tables.stop_steps[bi, si]) >= 0:
                    low = self._box_down(cond_noise[j, bi, si].to(device=x.device, dtype=torch.float32), f)
                else:
                    low = _low_zeros(h, w, f, x.device)
                parts.append(low.reshape(-1))
        ref_noise = torch.cat(parts) if len(parts) > 0 else torch.zeros([0], device=x.device)
        return coefs, active, noise, ref_noise

    def _fused_step(self, x: Tensor, t: Tensor, i: int, j: int, step_noise: Optional[Tensor],
                    cond_noise: Optional[Tensor], seed: int, tables: FusedTables) -> Tensor:
        model_output = self.unet(x, t).float().contiguous()
        coefs, active, noise, ref_noise = self._step_inputs(x, i, j, tables, step_noise, cond_noise)
        return guided_step(x_t=x.contiguous(), model_output=model_output, coefs=coefs, noise=noise,
                           ref_noise=ref_noise, refs=tables.refs, ref_offsets=tables.ref_offsets,
                           factors=tables.factors, active=active, weight_kind=tables.weight_kind,
                           patch=tables.patch, weight_maps=tables.weight_maps, weight_offsets=tables.weight_offsets,
                           seed=seed, offset=j, learned_variance=self.fused_learned, clip=self.clip_denoised)

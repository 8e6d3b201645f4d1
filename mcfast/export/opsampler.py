"""The exported sampler variant that runs each reverse step as one ``torch.ops.mcfast.guided_step``.

TorchScript resolves ``torch.ops.mcfast.*`` when the module is scripted and again when it is loaded,
so this subclass exists only when the ops library is loaded (``mcfast.ops.load()`` or
``torch.ops.load_library``); :func:`ops_sampler_class` picks it then. A run takes the fused op when
every condition uses the box filter with a power-of-two factor (the op's contract), and otherwise
falls back, inside the same module, to the plain PyTorch loop of :class:`GuidedSampler`.

Noise: with ``step_noise`` and ``cond_noise`` given the op gets z and the low-resolution
down_N(ε) = avg-pool of the given full-resolution ε (so results match the eager reference to float
rounding); without them the op draws both in-kernel from Philox (``seed``, offset = step index j).
DDIM is the same op: x_{t−1} = (√ᾱ_prev − c_ε/√(1/ᾱ−1))·x0 + (c_ε·√(1/ᾱ)/√(1/ᾱ−1))·x_t + σ·z is
linear in x0 and x_t, so only the coefficient table differs.
"""
from __future__ import annotations

import math
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mcfast.export.torchscript import GuidedSampler


def ops_loaded() -> bool:
    """Whether ``torch.ops.mcfast.guided_step`` is registered in this process."""
    try:
        torch.ops.mcfast.guided_step
    except (AttributeError, RuntimeError):
        return False
    return True


class OpsGuidedSampler(GuidedSampler):
    """:class:`GuidedSampler` whose steps call ``torch.ops.mcfast.guided_step`` when the conditions allow."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        steps = self.steps
        table = np.zeros((steps, 9), dtype=np.float64)
        sr = self.sqrt_recip_ac.double().numpy()
        srm1 = self.sqrt_recipm1_ac.double().numpy()
        for i in range(steps):
            table[i, 0], table[i, 1] = sr[i], srm1[i]
            table[i, 7] = float(self.sqrt_ac_prev[i])
            table[i, 8] = float(self.sqrt_1m_ac_prev[i])
            if self.is_ddim:
                c_eps, sigma = float(self.ddim_coef_eps[i]), float(self.ddim_sigma[i])
                table[i, 2] = float(self.ddim_coef_x0[i]) - c_eps / srm1[i]
                table[i, 3] = c_eps * sr[i] / srm1[i]
                table[i, 4] = math.log(sigma * sigma) if sigma > 0 else 0.0
                table[i, 6] = 1.0 if (i > 0 and sigma > 0) else 0.0
            else:
                table[i, 2] = float(self.post_coef1[i])
                table[i, 3] = float(self.post_coef2[i])
                table[i, 4] = float(self.fixed_large_logvar[i] if self.var_type == 2 else self.post_logvar[i])
                table[i, 5] = float(self.log_betas[i])
                table[i, 6] = 0.0 if i == 0 else 1.0
        self.register_buffer("fused_coefs", torch.from_numpy(table).float())
        self.fused_learned = (not self.is_ddim) and self.var_type == 0

    def _prepare_fused(self, refs: Tensor, factors: Tensor, stop_steps: Tensor, weights: Tensor,
                       filters: Tensor) -> List[Tensor]:
        b, s, h, w = refs.shape[0], refs.shape[1], refs.shape[2], refs.shape[3]
        device = refs.device
        lows: List[Tensor] = []
        ref_offsets = torch.zeros([b, s], dtype=torch.long)
        weight_kind = torch.zeros([b, s], dtype=torch.long)
        offset = 0
        for bi in range(b):
            for si in range(s):
                f = int(factors[bi, si])
                if int(stop_steps[bi, si]) >= 0:
                    if int(filters[bi, si]) != 0 or f < 1 or (f & (f - 1)) != 0:
                        return []  # outside the fused op's contract: plain PyTorch loop
                    low = F.avg_pool2d(refs[bi, si].reshape(1, 1, h, w), f) if f > 1 else refs[bi, si]
                    if not bool((weights[bi, si] == 1.0).all()):
                        weight_kind[bi, si] = 2
                else:
                    f = max(f, 1)
                    low = torch.zeros([h // f if h % f == 0 else h, w // f if w % f == 0 else w], device=device)
                ref_offsets[bi, si] = offset
                flat = low.reshape(-1)
                offset += flat.numel()
                lows.append(flat)
        refs_flat = torch.cat(lows) if len(lows) > 0 else torch.zeros([0], device=device)
        weight_offsets = (torch.arange(b * s, dtype=torch.long) * (h * w)).reshape(b, s)
        # The small tables stay on the host (the op accepts them there on every device: no per-step sync on
        # a GPU); refs and weight maps live with the samples.
        return [refs_flat.contiguous(), ref_offsets, weight_kind, weight_offsets, weights.reshape(-1).contiguous(),
                torch.zeros([b, s, 7], dtype=torch.float32), factors.to(device="cpu", dtype=torch.long),
                stop_steps.to(device="cpu", dtype=torch.long)]

    def _fused_step(self, x: Tensor, t: Tensor, i: int, j: int, factors: Tensor, stop_steps: Tensor,
                    step_noise: Optional[Tensor], cond_noise: Optional[Tensor], seed: int,
                    fused: List[Tensor]) -> Tensor:
        refs_flat, ref_offsets, weight_kind, weight_offsets = fused[0], fused[1], fused[2], fused[3]
        weight_maps, patch, factors_host, stops_host = fused[4], fused[5], fused[6], fused[7]
        model_output = self.unet(x, t).float().contiguous()
        b = x.shape[0]
        t_orig = int(self.timestep_map[i])
        active = (stops_host >= 0) & (stops_host <= t_orig)
        coefs = self.fused_coefs[i].unsqueeze(0).expand(b, 9).contiguous()
        noise: Optional[Tensor] = None
        ref_noise: Optional[Tensor] = None
        if step_noise is not None or cond_noise is not None:
            # Explicit noise: z as given, and down_N(ε) of each slot laid out like refs_flat.
            h, w = x.shape[2], x.shape[3]
            if step_noise is not None:
                noise = step_noise[j].to(device=x.device, dtype=torch.float32).contiguous()
            else:
                noise = torch.zeros_like(x)
            parts: List[Tensor] = []
            for bi in range(b):
                for si in range(factors_host.shape[1]):
                    f = max(int(factors_host[bi, si]), 1)
                    if cond_noise is not None and int(stops_host[bi, si]) >= 0:
                        e = cond_noise[j, bi, si].to(device=x.device, dtype=torch.float32)
                        low = F.avg_pool2d(e.reshape(1, 1, h, w), f) if f > 1 else e
                    else:
                        low = torch.zeros([h // f if h % f == 0 else h, w // f if w % f == 0 else w],
                                          device=x.device)
                    parts.append(low.reshape(-1))
            ref_noise = torch.cat(parts) if len(parts) > 0 else torch.zeros([0], device=x.device)
        return torch.ops.mcfast.guided_step(x.contiguous(), model_output, coefs, noise, ref_noise, refs_flat,
                                            ref_offsets, factors_host, active, weight_kind, patch, weight_maps,
                                            weight_offsets, seed, j, self.fused_learned, self.clip_denoised)


def ops_sampler_class(use_ops: Optional[bool] = None) -> type:
    """OpsGuidedSampler when the ops are loaded (or required by ``use_ops=True``), else GuidedSampler."""
    if use_ops is False:
        return GuidedSampler
    if ops_loaded():
        return OpsGuidedSampler
    if use_ops:
        from mcfast.errors import InputError
        raise InputError("the mcfast ops library is not loaded (torch.ops.mcfast.guided_step is missing); "
                         "build it with `python setup.py build_ext --inplace` or export with --no-ops")
    return GuidedSampler

"""The deployable sampler: U-Net + respaced schedule + the whole guided loop as one TorchScript module.

:class:`GuidedSampler` is written in the TorchScript subset so ``torch.jit.script`` compiles the
loop itself (not a trace): the number of conditions, their factors and stop steps stay runtime
inputs. Its inputs are plain tensors, so Python, the C++ runner and any libtorch service call it
the same way:

- ``refs`` (B, S, H, W) float32 references in model space (raw or already low-passed with the box
  filter: φ is idempotent there), ``factors`` (B, S) int64, ``stop_steps`` (B, S) int64 on the
  original 1000-step scale (-1 marks a padding slot: no condition), ``weights`` (B, S, H, W) in [0, 1]
  (ones for a whole-image condition), optional ``filters`` (B, S) int64 (0 box, 1 bicubic).
- noise: ``noise`` (B, 1, H, W) = x_T, ``step_noise`` (steps, B, 1, H, W) = z of the j-th executed
  step (j = 0 is the first, i = steps−1), ``cond_noise`` (steps, B, S, H, W) = ε of condition (b, s)
  at step j. Whatever is not given is drawn from a ``torch.Generator`` seeded with ``seed`` in the
  fixed order (x_T, then per step z, then the guidance ε of each active (b, s)) — the plain loop;
  the ops loop draws z and ε in-kernel from Philox (``seed``, step index) instead. A seed gives the
  same images from Python and the C++ runner, but not the eager sampler's images for that seed
  (``ILVRGuidance`` seeds one stream per condition, docs/export.md); passing all three noises does
  reproduce the eager sampler to float rounding.

Coefficients are the float64 schedule rounded to float32 per step, exactly as
:meth:`GaussianDiffusion._extract` gathers them, so eager and scripted runs agree to float rounding.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mcfast.diffusion.coefficients import alpha_bars, ddim_eps_coefficient, ddim_sigma
from mcfast.errors import InputError
from mcfast.export.tables import FusedTables

FILTER_CODES = {"box": 0, "bicubic": 1}
VAR_TYPE_CODES = {"learned_range": 0, "fixed_small": 1, "fixed_large": 2}


def _f32(values: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).float()


def _f64(values: Sequence[float]) -> Tensor:
    return torch.tensor(list(values), dtype=torch.float64)


class GuidedSampler(nn.Module):
    """Whole guided sampling loop (DDPM ancestral or DDIM) around a U-Net; see the module docstring."""

    def __init__(self, unet: nn.Module, diffusion: Any, method: str = "ddpm", eta: float = 0.0,
                 clip_denoised: bool = True, image_size: int = 0, in_channels: int = 1,
                 metadata: Optional[Dict[str, Any]] = None):
        super().__init__()
        if method not in ("ddpm", "ddim"):
            raise InputError(f"the exported sampler implements ddpm and ddim, not {method!r}")
        if eta < 0:
            raise InputError(f"DDIM eta must be >= 0, got {eta}")
        if in_channels != 1:
            raise InputError(f"the exported sampler handles 1-channel images, the model has {in_channels}")
        self.unet = unet
        self.is_ddim = method == "ddim"
        self.eta = float(eta)
        self.clip_denoised = bool(clip_denoised)
        self.image_size = int(image_size)
        self.steps = int(diffusion.num_timesteps)
        self.var_type = VAR_TYPE_CODES[diffusion.model_var_type]
        self.original_steps = int(getattr(diffusion, "original_num_steps", diffusion.num_timesteps))
        d = diffusion
        self.register_buffer("timestep_map", torch.from_numpy(np.asarray(d.timestep_map, dtype=np.int64)).clone())
        self.register_buffer("sqrt_recip_ac", _f32(d.sqrt_recip_alphas_cumprod))
        self.register_buffer("sqrt_recipm1_ac", _f32(d.sqrt_recipm1_alphas_cumprod))
        self.register_buffer("post_coef1", _f32(d.posterior_mean_coef1))
        self.register_buffer("post_coef2", _f32(d.posterior_mean_coef2))
        self.register_buffer("post_logvar", _f32(d.posterior_log_variance_clipped))
        self.register_buffer("log_betas", _f32(np.log(d.betas)))
        self.register_buffer("fixed_large_logvar", _f32(d.fixed_large_log_variance))
        # Guidance: y_{i-1} = √ᾱ_prev·ref + √(1−ᾱ_prev)·ε (as floats, like Python scalars in the eager oracle).
        self.register_buffer("sqrt_ac_prev", _f64(np.sqrt(d.alphas_cumprod_prev)))
        self.register_buffer("sqrt_1m_ac_prev", _f64(np.sqrt(1.0 - d.alphas_cumprod_prev)))
        # DDIM scalars, in float64 from mcfast.diffusion.coefficients (as samplers.ddim_step uses them).
        sig, c_x0, c_eps = [], [], []
        for i in range(d.num_timesteps):
            a_bar, a_prev = alpha_bars(d, i)
            s = ddim_sigma(a_bar, a_prev, self.eta)
            sig.append(s)
            c_x0.append(a_prev ** 0.5)
            c_eps.append(ddim_eps_coefficient(a_prev, s))
        self.register_buffer("ddim_sigma", _f64(sig))
        self.register_buffer("ddim_coef_x0", _f64(c_x0))
        self.register_buffer("ddim_coef_eps", _f64(c_eps))
        self.metadata_json = json.dumps(metadata or {}, sort_keys=True)

    # -- input checks (scripted: raise with one clear line) ---------------------------------------
    def _check_inputs(self, refs: Tensor, factors: Tensor, stop_steps: Tensor, weights: Tensor,
                      filters: Tensor) -> None:
        if refs.dim() != 4:
            raise ValueError("refs must have shape (B, S, H, W), got " + str(refs.shape))
        b, s, h, w = refs.shape[0], refs.shape[1], refs.shape[2], refs.shape[3]
        if b < 1:
            raise ValueError("refs holds no images (B = 0)")
        if self.image_size > 0 and (h != self.image_size or w != self.image_size):
            raise ValueError("refs are " + str(h) + "x" + str(w) + " but the sampler was exported for "
                             + str(self.image_size) + "x" + str(self.image_size) + " images")
        if list(factors.shape) != [b, s]:
            raise ValueError("factors must have shape (B, S) = " + str([b, s]) + ", got " + str(factors.shape))
        if list(stop_steps.shape) != [b, s]:
            raise ValueError("stop_steps must have shape (B, S) = " + str([b, s]) + ", got " + str(stop_steps.shape))
        if list(weights.shape) != [b, s, h, w]:
            raise ValueError("weights must have shape (B, S, H, W) = " + str([b, s, h, w]) + ", got "
                             + str(weights.shape))
        if list(filters.shape) != [b, s]:
            raise ValueError("filters must have shape (B, S) = " + str([b, s]) + ", got " + str(filters.shape))
        if refs.is_floating_point() is False or weights.is_floating_point() is False:
            raise ValueError("refs and weights must be floating-point tensors")
        if factors.is_floating_point() or stop_steps.is_floating_point():
            raise ValueError("factors and stop_steps must be integer tensors")
        if not bool(torch.isfinite(refs).all()):
            raise ValueError("refs contain NaN or Inf values")
        if not bool(torch.isfinite(weights).all()):
            raise ValueError("weights contain NaN or Inf values")
        if s > 0 and (bool((weights < 0).any()) or bool((weights > 1).any())):
            raise ValueError("weights must lie in [0, 1]")
        for bi in range(b):
            for si in range(s):
                stop = int(stop_steps[bi, si])
                if stop < 0:
                    continue
                f = int(factors[bi, si])
                if f < 1 or h % f != 0 or w % f != 0:
                    raise ValueError("factor " + str(f) + " of condition (" + str(bi) + ", " + str(si)
                                     + ") does not divide the image size " + str(h) + "x" + str(w))
                if stop > self.original_steps:
                    raise ValueError("stop step " + str(stop) + " of condition (" + str(bi) + ", " + str(si)
                                     + ") is past the diffusion's " + str(self.original_steps) + " timesteps")
                code = int(filters[bi, si])
                if code != 0 and code != 1:
                    raise ValueError("filter code " + str(code) + " of condition (" + str(bi) + ", " + str(si)
                                     + ") is not 0 (box) or 1 (bicubic)")

    def _check_noise(self, noise: Optional[Tensor], step_noise: Optional[Tensor], cond_noise: Optional[Tensor],
                     b: int, s: int, h: int, w: int) -> None:
        if noise is not None and list(noise.shape) != [b, 1, h, w]:
            raise ValueError("noise must have shape (B, 1, H, W) = " + str([b, 1, h, w]) + ", got " + str(noise.shape))
        if step_noise is not None and list(step_noise.shape) != [self.steps, b, 1, h, w]:
            raise ValueError("step_noise must have shape (steps, B, 1, H, W) = " + str([self.steps, b, 1, h, w])
                             + ", got " + str(step_noise.shape))
        if cond_noise is not None and list(cond_noise.shape) != [self.steps, b, s, h, w]:
            raise ValueError("cond_noise must have shape (steps, B, S, H, W) = " + str([self.steps, b, s, h, w])
                             + ", got " + str(cond_noise.shape))

    # -- filters: the scripted form of mcfast.guidance.filters (tests check they agree) ---------------
    def _box_down(self, x: Tensor, factor: int) -> Tensor:
        """down_N with the box filter: an (H, W) plane → (H/N, W/N) block means."""
        if factor == 1:
            return x
        h, w = x.shape[-2], x.shape[-1]
        return F.avg_pool2d(x.reshape(1, 1, h, w), factor).reshape(h // factor, w // factor)

    def _lowpass(self, x: Tensor, factor: int, code: int) -> Tensor:
        """φ_N of an (H, W) plane: box = avg-pool + nearest up; bicubic = antialiased resize down and up."""
        if factor == 1:
            return x
        h, w = x.shape[-2], x.shape[-1]
        x4 = x.reshape(1, 1, h, w)
        if code == 0:
            up = self._box_down(x, factor).repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
        else:
            low = F.interpolate(x4, size=[h // factor, w // factor], mode="bicubic", align_corners=False,
                                antialias=True)
            up = F.interpolate(low, size=[h, w], mode="bicubic", align_corners=False)
        return up.reshape(h, w)

    # -- one step -----------------------------------------------------------------------------------
    def _randn(self, shape: List[int], like: Tensor, gen: torch.Generator) -> Tensor:
        """mcfast.diffusion.noise.randn in the TorchScript subset: drawn on the (CPU) generator, moved to ``like``."""
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(like.device)

    def _step_update(self, x: Tensor, model_output: Tensor, i: int, z: Optional[Tensor]) -> Tensor:
        """x_i → x_{i−1} without guidance (DDPM ancestral or DDIM), as samplers.ddpm_step / ddim_step."""
        model_output = model_output.float()
        eps = model_output[:, :1]
        x0 = self.sqrt_recip_ac[i] * x - self.sqrt_recipm1_ac[i] * eps
        if self.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        if self.is_ddim:
            eps_c = (self.sqrt_recip_ac[i] * x - x0) / self.sqrt_recipm1_ac[i]
            x_prev = x0 * float(self.ddim_coef_x0[i]) + float(self.ddim_coef_eps[i]) * eps_c
            if z is not None:
                x_prev = x_prev + float(self.ddim_sigma[i]) * z
            return x_prev
        mean = self.post_coef1[i] * x0 + self.post_coef2[i] * x
        if z is None:
            return mean
        if self.var_type == 0:
            frac = (model_output[:, 1:2] + 1.0) / 2.0
            log_var = frac * self.log_betas[i] + (1.0 - frac) * self.post_logvar[i]
        elif self.var_type == 2:
            log_var = self.fixed_large_logvar[i].expand_as(x)
        else:
            log_var = self.post_logvar[i].expand_as(x)
        return mean + torch.exp(0.5 * log_var) * z

    def _needs_step_noise(self, i: int) -> bool:
        if i == 0:
            return False
        if self.is_ddim:
            return float(self.ddim_sigma[i]) > 0.0
        return True

    def _guide(self, x_prev: Tensor, i: int, low_refs: Tensor, factors: Tensor, stop_steps: Tensor,
               weights: Tensor, filters: Tensor, cond_noise_j: Optional[Tensor], gen: torch.Generator) -> Tensor:
        """x_{i−1} + Σ_s W_s ⊙ (φ(y_s) − φ(x_{i−1})) for every active condition, all r_s from the same x_{i−1}."""
        t_orig = int(self.timestep_map[i])
        a = float(self.sqrt_ac_prev[i])
        c = float(self.sqrt_1m_ac_prev[i])
        outs: List[Tensor] = []
        for b in range(x_prev.shape[0]):
            xb = x_prev[b, 0]
            acc = torch.zeros_like(xb)
            for s in range(low_refs.shape[1]):
                stop = int(stop_steps[b, s])
                if stop < 0 or t_orig < stop:
                    continue
                f = int(factors[b, s])
                code = int(filters[b, s])
                if cond_noise_j is not None:
                    eps = cond_noise_j[b, s]
                else:
                    eps = self._randn([xb.shape[0], xb.shape[1]], xb, gen)
                # φ is linear: φ(a·ref + c·ε) = a·φ(ref) + c·φ(ε), with φ(ref) computed once per run.
                r = a * low_refs[b, s] + c * self._lowpass(eps, f, code) - self._lowpass(xb, f, code)
                acc = acc + weights[b, s] * r
            outs.append(xb + acc)
        return torch.stack(outs, 0).unsqueeze(1)

    def _run(self, refs: Tensor, factors: Tensor, stop_steps: Tensor, weights: Tensor, noise: Optional[Tensor],
             step_noise: Optional[Tensor], cond_noise: Optional[Tensor], seed: int, filters: Optional[Tensor],
             keep: bool) -> Tuple[Tensor, List[Tensor]]:
        if filters is None:
            filters = torch.zeros(factors.shape, dtype=torch.long)
        self._check_inputs(refs, factors, stop_steps, weights, filters)
        b, s, h, w = refs.shape[0], refs.shape[1], refs.shape[2], refs.shape[3]
        self._check_noise(noise, step_noise, cond_noise, b, s, h, w)
        device = self.timestep_map.device
        refs = refs.to(device=device, dtype=torch.float32)
        weights = weights.to(device=device, dtype=torch.float32)
        gen = torch.Generator()
        gen.manual_seed(seed)
        if noise is not None:
            x = noise.to(device=device, dtype=torch.float32)
        else:
            x = self._randn([b, 1, h, w], refs, gen)
        low_refs = torch.zeros_like(refs)
        for bi in range(b):
            for si in range(s):
                if int(stop_steps[bi, si]) >= 0:
                    low_refs[bi, si] = self._lowpass(refs[bi, si], int(factors[bi, si]), int(filters[bi, si]))
        fused = self._prepare_fused(refs, factors, stop_steps, weights, filters)
        if fused is not None and (step_noise is None) != (cond_noise is None):
            # The fused op takes both noises or draws both in-kernel: draw the missing one here.
            if step_noise is None:
                step_noise = self._randn([self.steps, b, 1, h, w], refs, gen)
            else:
                cond_noise = self._randn([self.steps, b, s, h, w], refs, gen)
        kept: List[Tensor] = []
        if keep:
            kept.append(x)
        for j in range(self.steps):
            i = self.steps - 1 - j
            t = self.timestep_map[i].expand(b)
            if fused is not None:
                x = self._fused_step(x, t, i, j, step_noise, cond_noise, seed, fused)
                if keep:
                    kept.append(x)
                continue
            model_output = self.unet(x, t)
            z: Optional[Tensor] = None
            if self._needs_step_noise(i):
                if step_noise is not None:
                    z = step_noise[j].to(device=device, dtype=torch.float32)
                else:
                    z = self._randn([b, 1, h, w], x, gen)
            x = self._step_update(x, model_output, i, z)
            if s > 0:
                cn: Optional[Tensor] = None
                if cond_noise is not None:
                    cn = cond_noise[j].to(device=device, dtype=torch.float32)
                x = self._guide(x, i, low_refs, factors, stop_steps, weights, filters, cn, gen)
            if keep:
                kept.append(x)
        return x, kept

    # -- fused op hooks (the plain module has none; see mcfast.export.opsampler) ---------------------
    def _prepare_fused(self, refs: Tensor, factors: Tensor, stop_steps: Tensor, weights: Tensor,
                       filters: Tensor) -> Optional[FusedTables]:
        """Tables for torch.ops.mcfast.guided_step, or None when this run takes the plain PyTorch path."""
        return None

    def _fused_step(self, x: Tensor, t: Tensor, i: int, j: int, step_noise: Optional[Tensor],
                    cond_noise: Optional[Tensor], seed: int, tables: FusedTables) -> Tensor:
        """U-Net + the whole guided update of step j (chain index i) in one op call; the hook of the ops variant."""
        raise RuntimeError("this sampler was exported without the mcfast ops")

    def forward(self, refs: Tensor, factors: Tensor, stop_steps: Tensor, weights: Tensor,
                noise: Optional[Tensor] = None, step_noise: Optional[Tensor] = None,
                cond_noise: Optional[Tensor] = None, seed: int = 0, filters: Optional[Tensor] = None) -> Tensor:
        """Images (B, 1, H, W) in model space; see the module docstring for the inputs."""
        with torch.no_grad():
            out, _ = self._run(refs, factors, stop_steps, weights, noise, step_noise, cond_noise, seed, filters, False)
        return out

    @torch.jit.export
    def intermediates(self, refs: Tensor, factors: Tensor, stop_steps: Tensor, weights: Tensor,
                      noise: Optional[Tensor] = None, step_noise: Optional[Tensor] = None,
                      cond_noise: Optional[Tensor] = None, seed: int = 0,
                      filters: Optional[Tensor] = None) -> Tensor:
        """x_T and x after every step, stacked: (steps + 1, B, 1, H, W)."""
        with torch.no_grad():
            _, kept = self._run(refs, factors, stop_steps, weights, noise, step_noise, cond_noise, seed, filters, True)
        return torch.stack(kept, 0)

    @torch.jit.export
    def metadata(self) -> str:
        """JSON with the export settings (method, steps, image size, model and diffusion config)."""
        return self.metadata_json

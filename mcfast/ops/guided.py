"""Serve a whole guided reverse step with the fused op ``torch.ops.mcfast.guided_step``.

:func:`try_fused_step` is what ``ILVRGuidance.fused_step`` calls. It returns x_{i−1}, or None
(after logging the reason once on the ``mcfast.ops`` logger) when the fused op cannot serve —
then the sampler does the plain step and the PyTorch reference correction. With ``force=True``
it raises :class:`mcfast.errors.InputError` instead of returning None.

Per run, the conditions are packed once (low-passed references, factors, weights) and cached;
per step only the (B, M) ``active`` table and the (B, 9) coefficient table change.

Noise: when a ``generator`` is given the noise is drawn in PyTorch in the reference path's order
(the step noise z from ``generator`` exactly as ``mcfast.diffusion.samplers`` draws it, then a
full-resolution ε_s (1, H, W) for every active condition with √(1−ᾱ_prev) > 0, image by image,
from ``condition_generators[b][s]`` when given, else from ``generator``), box-filtered to low
resolution and passed in — so with the same generators the result equals the reference path up
to float rounding. Without a generator (or with ``noise="philox"``) the op draws all noise
in-kernel from Philox (``seed``, offset = the chain index), which is much faster and reproducible,
with the same statistics.
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mcfast.diffusion.coefficients import ddim_step_coefficients
from mcfast.diffusion.samplers import FUSABLE_METHODS, Generators, image_generator, randn
from mcfast.errors import InputError, McfastError
from mcfast.ops.reference import (LOGVAR_MAX, LOGVAR_MIN, MEAN_X0, MEAN_XT, NOISE_SCALE, NUM_COEFS, REF_NOISE,
                                  REF_SIGNAL, WEIGHT_FULL, WEIGHT_MAP, WEIGHT_PATCH, X0_FROM_EPS, X0_FROM_XT)

log = logging.getLogger("mcfast.ops")

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
NOISE_MODES = ("auto", "passed", "philox")
_CACHE_SIZE = 8
_logged: set[str] = set()


@dataclass
class PackedConditions:
    """The per-run tables of the fused op (see docs/kernels.md); ``active`` is filled per step.

    ``refs`` and ``weight_maps`` live on the samples' device; the small (B, M) tables stay on the host,
    which both the C++ and the Triton op accept on every device (the CUDA kernel ships them with one
    asynchronous copy, so a step never waits for the GPU).
    """

    conditions: list[list[Any]]      # kept alive so the id-based cache key stays valid
    refs: Tensor                     # float32 (R,): every down_N(ref), flattened
    ref_offsets: Tensor              # int64 (B, M)
    factors: Tensor                  # int64 (B, M); padding slots have factor 1 and are never active
    weight_kind: Tensor              # int64 (B, M): 0 full, 1 Gaussian patch, 2 weight map
    patch: Tensor                    # float32 (B, M, 7)
    weight_maps: Tensor              # float32 (Q,)
    weight_offsets: Tensor           # int64 (B, M)
    stop_steps: list[list[int]]
    low_sizes: list[list[int]]


_packed: "OrderedDict[tuple, PackedConditions]" = OrderedDict()


class _CannotServe(Exception):
    pass


def _is_patch_weight(cond: Any) -> bool:
    """True when the condition's weight is exactly its patch's Gaussian (so the kernel can rebuild it)."""
    patch = getattr(cond, "patch", None)
    if patch is None or cond.weight is None:
        return False
    return bool(torch.equal(cond.weight, patch.weight_map(cond.shape)))


def pack_conditions(per_image: Sequence[Sequence[Any]], height: int, width: int,
                    device: torch.device) -> PackedConditions:
    """Pack conditions (one list per image) into the op's tables on ``device`` (cached per run)."""
    key = (tuple(tuple(id(c) for c in conds) for conds in per_image), height, width, str(device))
    hit = _packed.get(key)
    if hit is not None:
        _packed.move_to_end(key)
        return hit
    B = len(per_image)
    M = max((len(c) for c in per_image), default=0)
    factors = torch.ones(B, M, dtype=torch.int64)
    ref_offsets = torch.zeros(B, M, dtype=torch.int64)
    weight_kind = torch.zeros(B, M, dtype=torch.int64)
    weight_offsets = torch.zeros(B, M, dtype=torch.int64)
    patch = torch.zeros(B, M, 7, dtype=torch.float32)
    refs: list[Tensor] = []
    maps: list[Tensor] = []
    ref_pos = map_pos = 0
    # Each (image, condition) slot owns its low-res reference region, because passed-in ref_noise is indexed
    # by the same offsets and every slot needs its own noise; weight maps (full-res, noise-free) are shared.
    map_at: dict[int, int] = {}
    for b, conds in enumerate(per_image):
        for m, c in enumerate(conds):
            factors[b, m] = c.factor
            low = c.low_reference(torch.device("cpu")).reshape(-1).float()
            refs.append(low)
            ref_offsets[b, m] = ref_pos
            ref_pos += low.numel()
            if c.weight is None:
                weight_kind[b, m] = WEIGHT_FULL
            elif _is_patch_weight(c):
                weight_kind[b, m] = WEIGHT_PATCH
                (bx, by, bw, bh), (cx, cy) = c.patch.box, c.patch.center
                patch[b, m] = torch.tensor([cx, cy, c.patch.sigma, bx, by, bw, bh], dtype=torch.float32)
            else:
                weight_kind[b, m] = WEIGHT_MAP
                if id(c) not in map_at:
                    map_at[id(c)] = map_pos
                    maps.append(c.weight.reshape(-1).float())
                    map_pos += height * width
                weight_offsets[b, m] = map_at[id(c)]
    packed = PackedConditions(
        conditions=[list(c) for c in per_image],
        refs=(torch.cat(refs) if refs else torch.zeros(0)).to(device),
        ref_offsets=ref_offsets, factors=factors, weight_kind=weight_kind, patch=patch,
        weight_maps=(torch.cat(maps) if maps else torch.zeros(0)).to(device), weight_offsets=weight_offsets,
        stop_steps=[[c.stop_step for c in conds] for conds in per_image],
        low_sizes=[[(height // c.factor) * (width // c.factor) for c in conds] for conds in per_image])
    _packed[key] = packed
    while len(_packed) > _CACHE_SIZE:
        _packed.popitem(last=False)
    return packed


def step_coefficients(diffusion: Any, i: int, method: str, eta: float, batch: int) -> tuple[Tensor, bool]:
    """The (B, 9) float32 coefficient table of chain index ``i`` and whether σ comes from the learned v."""
    sqrt_recip = float(diffusion.sqrt_recip_alphas_cumprod[i])
    sqrt_recipm1 = float(diffusion.sqrt_recipm1_alphas_cumprod[i])
    abar_prev = float(diffusion.alphas_cumprod_prev[i])
    row = [0.0] * NUM_COEFS
    row[X0_FROM_XT], row[X0_FROM_EPS] = sqrt_recip, sqrt_recipm1
    row[REF_SIGNAL], row[REF_NOISE] = math.sqrt(abar_prev), math.sqrt(max(0.0, 1.0 - abar_prev))
    learned = False
    if method == "ddpm":
        row[MEAN_X0] = float(diffusion.posterior_mean_coef1[i])
        row[MEAN_XT] = float(diffusion.posterior_mean_coef2[i])
        var_type = diffusion.model_var_type
        if var_type == "learned_range":
            learned = True
            row[LOGVAR_MIN] = float(diffusion.posterior_log_variance_clipped[i])
            row[LOGVAR_MAX] = float(diffusion.log_betas[i])
        else:
            lv = (diffusion.fixed_large_log_variance if var_type == "fixed_large"
                  else diffusion.posterior_log_variance_clipped)
            row[LOGVAR_MIN] = row[LOGVAR_MAX] = float(lv[i])
        row[NOISE_SCALE] = 1.0 if i > 0 else 0.0
    else:
        # DDIM: x_{t−1} = √ᾱ_prev·x0 + √(1−ᾱ_prev−σ²)·ε', ε' = (r0·x_t − x0)/r1 — linear in (x0, x_t).
        step = ddim_step_coefficients(diffusion, i, eta)
        row[MEAN_X0], row[MEAN_XT] = step.c_x0, step.c_xt
        use_noise = step.sigma > 0
        row[LOGVAR_MIN] = row[LOGVAR_MAX] = 2.0 * math.log(step.sigma) if use_noise else 0.0
        row[NOISE_SCALE] = 1.0 if use_noise else 0.0
    return torch.tensor([row], dtype=torch.float32).expand(batch, NUM_COEFS).contiguous(), learned


def _passed_noise(x_t: Tensor, packed: PackedConditions, active: list[list[bool]], coef_row: Tensor,
                  generator: Generators, condition_generators) -> tuple[Tensor, Tensor]:
    """(z, ref_noise) drawn in the reference path's order (see the module docstring)."""
    B, _, H, W = x_t.shape
    if float(coef_row[NOISE_SCALE]) != 0.0:
        z = randn(tuple(x_t.shape), generator, x_t.device)
    else:
        z = torch.zeros(x_t.shape, device=x_t.device)
    ref_noise = torch.zeros(packed.refs.numel(), device=x_t.device)
    if float(coef_row[REF_NOISE]) > 0.0:
        offsets = packed.ref_offsets.tolist()
        factors = packed.factors.tolist()
        for b in range(B):
            for m, on in enumerate(active[b]):
                if not on:
                    continue
                gen = condition_generators[b][m] if condition_generators is not None else image_generator(generator, b)
                eps = randn((1, H, W), gen, x_t.device)
                n = factors[b][m]
                low = F.avg_pool2d(eps, n) if n > 1 else eps
                o = offsets[b][m]
                ref_noise[o:o + low.numel()] = low.reshape(-1)
    return z, ref_noise


def _unsupported(reason: str, force: bool) -> None:
    if force:
        raise InputError(f"fused guided step cannot serve: {reason}")
    if reason not in _logged:
        _logged.add(reason)
        log.info("fused guided step not used: %s", reason)
    return None


CUDA_MAX_FACTOR = 64  # the CUDA kernel's largest tile (csrc/cuda/kernels.cu); the Triton kernel has no limit


def _kernel_for(device: torch.device, max_factor: int):
    """The op to call on ``device``, or a reason string."""
    if device.type == "cpu":
        return torch.ops.mcfast.guided_step
    if device.type == "cuda":
        if (max_factor <= CUDA_MAX_FACTOR
                and torch._C._dispatch_has_kernel_for_dispatch_key("mcfast::guided_step", "CUDA")):
            return torch.ops.mcfast.guided_step
        try:
            from mcfast.ops.triton_kernels import guided_step_triton
        except Exception as exc:  # triton missing or broken: the reference path still works
            return f"no CUDA kernel built and the Triton kernel is unavailable ({exc})"
        return guided_step_triton
    return f"device {device.type} is not supported"


def try_fused_step(x_t: Tensor, model_output: Tensor, diffusion: Any, i: int,
                   conditions_per_image: Sequence[Sequence[Any]], method: str, eta: float, clip_denoised: bool,
                   generator: Generators, force: bool = False, *,
                   condition_generators: Sequence[Sequence[torch.Generator]] | None = None,
                   noise: str = "auto", seed: int | None = None) -> Tensor | None:
    """x_{i−1} from one fused guided step, or None when the fused op cannot serve (reason logged once).

    ``noise``: "auto" (passed in when ``generator`` is given, else in-kernel Philox), "passed" or
    "philox". ``seed`` seeds the in-kernel generator (default: drawn from ``generator``, or from
    torch's global RNG when there is none); the offset is ``i``, so every step draws fresh noise.
    """
    if noise not in NOISE_MODES:
        raise InputError(f"unknown fused noise mode {noise!r}; expected one of {', '.join(NOISE_MODES)}")
    from mcfast import ops
    try:
        ops.load()
    except McfastError as exc:
        return _unsupported(str(exc), force)
    if method not in FUSABLE_METHODS:
        return _unsupported(f"sampling method {method!r}", force)
    if x_t.ndim != 4 or x_t.shape[1] != 1:
        return _unsupported(f"samples of shape {tuple(x_t.shape)} (the op takes (B, 1, H, W))", force)
    if x_t.dtype not in SUPPORTED_DTYPES:
        return _unsupported(f"dtype {x_t.dtype} (float32 and bfloat16 are supported)", force)
    B, _, H, W = x_t.shape
    if len(conditions_per_image) != B:
        return _unsupported(f"{len(conditions_per_image)} condition lists for a batch of {B}", force)
    for b, conds in enumerate(conditions_per_image):
        for c in conds:
            if c.filter != "box":
                return _unsupported(f"{c.label} uses the {c.filter!r} filter (the fused op needs 'box')", force)
            if c.factor & (c.factor - 1):
                return _unsupported(f"{c.label} has factor {c.factor}, not a power of two", force)
            if c.shape != (H, W):
                return _unsupported(f"{c.label} reference is {c.shape}, samples are {(H, W)}", force)
    kernel = _kernel_for(x_t.device, max((c.factor for conds in conditions_per_image for c in conds), default=1))
    if isinstance(kernel, str):
        return _unsupported(kernel, force)
    learned_needed = method == "ddpm" and diffusion.model_var_type == "learned_range"
    if model_output.shape[1] < (2 if learned_needed else 1) or model_output.shape[0] != B \
            or tuple(model_output.shape[2:]) != (H, W):
        return _unsupported(f"model output of shape {tuple(model_output.shape)}", force)

    packed = pack_conditions(conditions_per_image, H, W, x_t.device)
    t = int(diffusion.timestep_map[i])
    active_list = [[t >= s for s in stops] for stops in packed.stop_steps]
    M = packed.factors.shape[1]
    active = torch.tensor([row + [False] * (M - len(row)) for row in active_list], dtype=torch.bool).reshape(B, M)
    coefs, learned = step_coefficients(diffusion, i, method, eta, B)
    mode = noise if noise != "auto" else ("passed" if generator is not None else "philox")
    x_in = x_t.contiguous()
    mo = model_output.to(x_t.dtype).contiguous()
    if mode == "passed":
        z, ref_noise = _passed_noise(x_t, packed, active_list, coefs[0], generator, condition_generators)
        seed_value = 0
    else:
        z = ref_noise = None
        if seed is None:
            # One seed for the batch: in-kernel Philox noise is per batch, not per image.
            seed_gen = image_generator(generator, 0)
            gen_device = seed_gen.device if seed_gen is not None else torch.device("cpu")
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=seed_gen, device=gen_device).item())
        seed_value = int(seed)
    # coefs, active and the packed (B, M) tables stay on the host: both kernels take them there
    return kernel(x_in, mo, coefs, z, ref_noise, packed.refs, packed.ref_offsets, packed.factors, active,
                  packed.weight_kind, packed.patch, packed.weight_maps, packed.weight_offsets, seed_value, int(i),
                  learned, bool(clip_denoised))

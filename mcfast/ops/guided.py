"""Serve a whole guided reverse step with the fused op ``torch.ops.mcfast.guided_step``.

:class:`FusedGuidedStep` is what ``ILVRGuidance.fused_step`` calls (one per guidance object). It
returns x_{i−1}, or None (after logging the reason once on the ``mcfast.ops`` logger) when the
fused op cannot serve — then the sampler does the plain step and the PyTorch correction. With
``force=True`` it raises :class:`mcfast.errors.InputError` instead of returning None.

The conditions are packed once per bound batch (:func:`pack_op_tables`: low-passed references,
factors, weights) and kept on the :class:`FusedGuidedStep` (so on the guidance object: they go when
it goes); per step only the (B, M) ``active`` table and the (B, 9) coefficient row
(:func:`mcfast.diffusion.coefficients.fused_step_row`) change.

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
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from mcfast.diffusion.coefficients import FUSED_METHODS, NOISE_SCALE, NUM_COEFS, REF_NOISE, fused_step_row
from mcfast.diffusion.noise import Generators, image_generator, randn
from mcfast.errors import InputError, McfastError
from mcfast.guidance.filters import downsample
from mcfast.ops.step import WEIGHT_FULL, WEIGHT_MAP, WEIGHT_PATCH, guided_step

log = logging.getLogger("mcfast.ops")

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
NOISE_MODES = ("auto", "passed", "philox")
CUDA_MAX_FACTOR = 64  # kMaxTile in csrc/cuda/kernels.cu (tests/test_ops_import.py checks they agree)
_logged: set[str] = set()  # reasons already logged in this process (log once)


@dataclass
class OpTables:
    """The per-run tables of the fused op (see docs/kernels.md); ``active`` is filled per step.

    ``refs`` and ``weight_maps`` live on the samples' device; the small (B, M) tables stay on the host,
    which both the C++ and the Triton op accept on every device (the CUDA kernel ships them with one
    asynchronous copy, so a step never waits for the GPU).
    """

    refs: Tensor                     # float32 (R,): every down_N(ref), flattened
    ref_offsets: Tensor              # int64 (B, M)
    factors: Tensor                  # int64 (B, M); padding slots have factor 1 and are never active
    weight_kind: Tensor              # int64 (B, M): WEIGHT_FULL, WEIGHT_PATCH or WEIGHT_MAP
    patch: Tensor                    # float32 (B, M, 7): ops.step.PATCH_COLUMNS
    weight_maps: Tensor              # float32 (Q,)
    weight_offsets: Tensor           # int64 (B, M)
    stop_steps: list[list[int]]


def _is_patch_weight(cond: Any) -> bool:
    """True when the condition's weight is exactly its patch's Gaussian (so the kernel can rebuild it)."""
    patch = getattr(cond, "patch", None)
    if patch is None or cond.weight is None:
        return False
    return bool(torch.equal(cond.weight, patch.weight_map(cond.shape)))


def pack_op_tables(per_image: Sequence[Sequence[Any]], height: int, width: int, device: torch.device) -> OpTables:
    """Pack conditions (one list per image) into the op's tables, references on ``device``."""
    B = len(per_image)
    M = max((len(c) for c in per_image), default=0)
    factors = torch.ones(B, M, dtype=torch.int64)
    ref_offsets = torch.zeros(B, M, dtype=torch.int64)
    weight_kind = torch.full((B, M), WEIGHT_FULL, dtype=torch.int64)
    weight_offsets = torch.zeros(B, M, dtype=torch.int64)
    patch = torch.zeros(B, M, 7, dtype=torch.float32)
    refs: list[Tensor] = []
    maps: list[Tensor] = []
    ref_pos = 0
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
                continue
            if _is_patch_weight(c):
                weight_kind[b, m] = WEIGHT_PATCH
                (bx, by, bw, bh), (cx, cy) = c.patch.box, c.patch.center
                patch[b, m] = torch.tensor([cx, cy, c.patch.sigma, bx, by, bw, bh], dtype=torch.float32)
                continue
            weight_kind[b, m] = WEIGHT_MAP
            if id(c) not in map_at:
                map_at[id(c)] = len(maps) * height * width
                maps.append(c.weight.reshape(-1).float())
            weight_offsets[b, m] = map_at[id(c)]
    return OpTables(refs=(torch.cat(refs) if refs else torch.zeros(0)).to(device), ref_offsets=ref_offsets,
                    factors=factors, weight_kind=weight_kind, patch=patch,
                    weight_maps=(torch.cat(maps) if maps else torch.zeros(0)).to(device),
                    weight_offsets=weight_offsets, stop_steps=[[c.stop_step for c in conds] for conds in per_image])


def step_coefficients(diffusion: Any, i: int, method: str, eta: float, batch: int) -> tuple[Tensor, bool]:
    """The (B, 9) float32 coefficient table of chain index ``i`` and whether σ comes from the learned v."""
    row, learned = fused_step_row(diffusion, i, method, eta)
    return torch.tensor([row], dtype=torch.float32).expand(batch, NUM_COEFS).contiguous(), learned


def passed_noise(x_t: Tensor, tables: OpTables, active: list[list[bool]], coef_row: Tensor,
                 generator: Generators, condition_generators) -> tuple[Tensor, Tensor]:
    """(z, ref_noise) drawn in the reference path's order (see the module docstring)."""
    B, _, H, W = x_t.shape
    if float(coef_row[NOISE_SCALE]) != 0.0:
        z = randn(tuple(x_t.shape), generator, x_t.device)
    else:
        z = torch.zeros(x_t.shape, device=x_t.device)
    ref_noise = torch.zeros(tables.refs.numel(), device=x_t.device)
    if float(coef_row[REF_NOISE]) <= 0.0:
        return z, ref_noise
    offsets, factors = tables.ref_offsets.tolist(), tables.factors.tolist()
    for b in range(B):
        for m, on in enumerate(active[b]):
            if not on:
                continue
            gen = condition_generators[b][m] if condition_generators is not None else image_generator(generator, b)
            low = downsample(randn((1, H, W), gen, x_t.device), factors[b][m], "box")
            o = offsets[b][m]
            ref_noise[o:o + low.numel()] = low.reshape(-1)
    return z, ref_noise


def kernel_for(device: torch.device, max_factor: int) -> Callable[..., Tensor] | str:
    """The guided-step kernel for ``device`` (called with the op's keyword arguments), or a reason string."""
    if device.type == "cpu":
        return guided_step
    if device.type != "cuda":
        return f"device {device.type} is not supported"
    if max_factor <= CUDA_MAX_FACTOR and torch._C._dispatch_has_kernel_for_dispatch_key("mcfast::guided_step", "CUDA"):
        return guided_step
    try:
        from mcfast.ops.triton_kernels import guided_step_triton
    except Exception as exc:  # triton missing or broken: the reference path still works
        return f"no CUDA kernel built and the Triton kernel is unavailable ({exc})"
    return guided_step_triton


def _condition_problem(per_image: Sequence[Sequence[Any]], height: int, width: int) -> str | None:
    for conds in per_image:
        for c in conds:
            if c.filter != "box":
                return f"{c.label} uses the {c.filter!r} filter (the fused op needs 'box')"
            if c.factor & (c.factor - 1):
                return f"{c.label} has factor {c.factor}, not a power of two"
            if c.shape != (height, width):
                return f"{c.label} reference is {c.shape}, samples are {(height, width)}"
    return None


def unsupported_reason(x_t: Tensor, model_output: Tensor, diffusion: Any, per_image: Sequence[Sequence[Any]],
                       method: str) -> str | None:
    """Why the fused op cannot serve this step (None: it can); the kernel choice is :func:`kernel_for`."""
    from mcfast import ops
    try:
        ops.load()
    except McfastError as exc:
        return str(exc)
    if method not in FUSED_METHODS:
        return f"sampling method {method!r}"
    if x_t.ndim != 4 or x_t.shape[1] != 1:
        return f"samples of shape {tuple(x_t.shape)} (the op takes (B, 1, H, W))"
    if x_t.dtype not in SUPPORTED_DTYPES:
        return f"dtype {x_t.dtype} (float32 and bfloat16 are supported)"
    B, _, H, W = x_t.shape
    if len(per_image) != B:
        return f"{len(per_image)} condition lists for a batch of {B}"
    channels = 2 if method == "ddpm" and diffusion.model_var_type == "learned_range" else 1
    if model_output.shape[1] < channels or model_output.shape[0] != B or tuple(model_output.shape[2:]) != (H, W):
        return f"model output of shape {tuple(model_output.shape)}"
    return _condition_problem(per_image, H, W)


class FusedGuidedStep:
    """The fused guided step of one guidance object, with its packed tables (see the module docstring).

    ``force``: raise InputError instead of returning None when the op cannot serve. ``noise``:
    "auto" (passed in when the sampler's ``generator`` is given, else in-kernel Philox), "passed" or
    "philox". ``seed`` seeds the in-kernel generator (default: drawn each step from ``generator``,
    or from torch's global RNG when there is none); the offset is the chain index, so every step
    draws fresh noise.
    """

    def __init__(self, diffusion: Any, force: bool = False, noise: str = "auto", seed: int | None = None):
        if noise not in NOISE_MODES:
            raise InputError(f"unknown fused noise mode {noise!r}; expected one of {', '.join(NOISE_MODES)}")
        self.diffusion, self.force, self.noise, self.seed = diffusion, force, noise, seed
        self._key: tuple | None = None
        self._conditions: list[list[Any]] = []  # kept alive so the id-based key stays valid
        self._tables: OpTables | None = None

    def tables(self, per_image: Sequence[Sequence[Any]], height: int, width: int, device: torch.device) -> OpTables:
        """The op's tables for these conditions, packed on first use and kept until other conditions come."""
        key = (tuple(tuple(id(c) for c in conds) for conds in per_image), height, width, str(device))
        if self._tables is None or key != self._key:
            self._tables = pack_op_tables(per_image, height, width, device)
            self._key, self._conditions = key, [list(c) for c in per_image]
        return self._tables

    def release(self) -> None:
        """Drop the packed tables (their device memory)."""
        self._key, self._conditions, self._tables = None, [], None

    def _unsupported(self, reason: str) -> None:
        if self.force:
            raise InputError(f"fused guided step cannot serve: {reason}")
        if reason not in _logged:
            _logged.add(reason)
            log.info("fused guided step not used: %s", reason)
        return None

    def _seed(self, generator: Generators) -> int:
        if self.seed is not None:
            return int(self.seed)
        # One seed for the batch: in-kernel Philox noise is per batch, not per image.
        seed_gen = image_generator(generator, 0)
        gen_device = seed_gen.device if seed_gen is not None else torch.device("cpu")
        return int(torch.randint(0, 2 ** 62, (1,), generator=seed_gen, device=gen_device).item())

    def __call__(self, x_t: Tensor, model_output: Tensor, i: int, per_image: Sequence[Sequence[Any]], method: str,
                 eta: float, clip_denoised: bool, generator: Generators,
                 condition_generators: Sequence[Sequence[torch.Generator]] | None = None) -> Tensor | None:
        """x_{i−1} from one fused guided step, or None when the fused op cannot serve (reason logged once)."""
        reason = unsupported_reason(x_t, model_output, self.diffusion, per_image, method)
        kernel = kernel_for(x_t.device, max((c.factor for conds in per_image for c in conds), default=1)) \
            if reason is None else reason
        if isinstance(kernel, str):
            return self._unsupported(kernel)
        B, _, H, W = x_t.shape
        tables = self.tables(per_image, H, W, x_t.device)
        t = int(self.diffusion.timestep_map[i])
        active_rows = [[t >= s for s in stops] for stops in tables.stop_steps]
        M = tables.factors.shape[1]
        active = torch.tensor([row + [False] * (M - len(row)) for row in active_rows], dtype=torch.bool).reshape(B, M)
        coefs, learned = step_coefficients(self.diffusion, i, method, eta, B)
        mode = self.noise if self.noise != "auto" else ("passed" if generator is not None else "philox")
        noise = ref_noise = None
        seed = 0
        if mode == "passed":
            noise, ref_noise = passed_noise(x_t, tables, active_rows, coefs[0], generator, condition_generators)
        else:
            seed = self._seed(generator)
        # coefs, active and the packed (B, M) tables stay on the host: both kernels take them there
        return kernel(x_t=x_t.contiguous(), model_output=model_output.to(x_t.dtype).contiguous(), coefs=coefs,
                      noise=noise, ref_noise=ref_noise, refs=tables.refs, ref_offsets=tables.ref_offsets,
                      factors=tables.factors, active=active, weight_kind=tables.weight_kind, patch=tables.patch,
                      weight_maps=tables.weight_maps, weight_offsets=tables.weight_offsets, seed=seed, offset=int(i),
                      learned_variance=learned, clip=bool(clip_denoised))

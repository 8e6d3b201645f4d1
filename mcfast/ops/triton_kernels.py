"""Triton kernel of the fused guided step, same contract and noise streams as the C++/CUDA op.

Exposed as ``torch.ops.mcfast.guided_step_triton`` (``torch.library.triton_op``), with the
arguments of ``torch.ops.mcfast.guided_step``. One program per R×R tile of one image, R = the
largest active factor (at least 16, the smallest ``tl.dot``); a condition's box filter is
φ_n(x') = P·x'·P with P the block-averaging matrix of size R (P[i, j] = 1/n when i//n == j//n),
so the factor can stay a runtime value. Runs on CUDA, or on CPU tensors under
``TRITON_INTERPRET=1`` (the tests do that). The Philox4x32-10 + Box–Muller generator is the one of
``csrc/philox.h``: the raw words agree bitwise with the C++ generator.
"""
from __future__ import annotations

import torch

from mcfast.extras import require

triton = require("triton", extra="triton", feature="the Triton guided-step kernel")
import triton.language as tl  # noqa: E402
from torch import Tensor
from torch.library import triton_op, wrap_triton

MASK32 = 0xFFFFFFFF


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint64 lanes holding 32-bit values (so every product is exact)."""
    for r in tl.static_range(10):
        if r > 0:
            k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF
            k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF
        p0 = c0 * 0xD2511F53
        p1 = c2 * 0xCD9E8D57
        n0 = (p1 >> 32) ^ c1 ^ k0
        c1 = p1 & 0xFFFFFFFF
        c2 = (p0 >> 32) ^ c3 ^ k1
        c3 = p0 & 0xFFFFFFFF
        c0 = n0
    return c0, c1, c2, c3


@triton.jit
def philox_words(seed_lo, seed_hi, offset, stream, group):
    """The four words of group ``group`` (int64 tensor) of stream (seed, offset, stream)."""
    g = group.to(tl.uint64)
    zero = g * 0
    c0 = g & 0xFFFFFFFF
    c1 = g >> 32
    # offset, stream and the seed words arrive as 32-bit values (masked on the host).
    c2 = zero + offset
    c3 = zero + stream
    k0 = zero + seed_lo
    k1 = zero + seed_hi
    return philox4x32_10(c0, c1, c2, c3, k0, k1)


@triton.jit
def philox_normal(seed_lo, seed_hi, offset, stream, index):
    """Standard normal number ``index`` (int64 tensor) of stream (seed, offset, stream)."""
    w0, w1, w2, w3 = philox_words(seed_lo, seed_hi, offset, stream, index >> 2)
    lane = index & 3
    a = tl.where(lane < 2, w0, w2)
    b = tl.where(lane < 2, w1, w3)
    u0 = ((a >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08
    u1 = ((b >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08
    r = tl.sqrt(-2.0 * tl.log(u0))
    theta = 6.2831853071795864769 * u1
    return tl.where((lane & 1) == 1, r * tl.sin(theta), r * tl.cos(theta))


@triton.jit
def _philox_bits_kernel(out_ptr, groups, seed_lo, seed_hi, offset, stream, start, BLOCK: tl.constexpr):
    g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = g < groups
    w0, w1, w2, w3 = philox_words(seed_lo, seed_hi, offset, stream, g.to(tl.int64) + start)
    base = out_ptr + 4 * g.to(tl.int64)
    tl.store(base + 0, w0.to(tl.uint32).to(tl.int32, bitcast=True), mask=mask)
    tl.store(base + 1, w1.to(tl.uint32).to(tl.int32, bitcast=True), mask=mask)
    tl.store(base + 2, w2.to(tl.uint32).to(tl.int32, bitcast=True), mask=mask)
    tl.store(base + 3, w3.to(tl.uint32).to(tl.int32, bitcast=True), mask=mask)


@triton.jit
def _philox_normal_kernel(out_ptr, n, seed_lo, seed_hi, offset, stream, start, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    tl.store(out_ptr + i, philox_normal(seed_lo, seed_hi, offset, stream, i.to(tl.int64) + start), mask=mask)


@triton.jit
def _guided_step_kernel(x_ptr, mo_ptr, out_ptr, coef_ptr, noise_ptr, ref_noise_ptr, refs_ptr, ref_off_ptr, fac_ptr,
                        act_ptr, kind_ptr, patch_ptr, wmap_ptr, woff_ptr, H, W, K, M, seed_lo, seed_hi, offset,
                        HAS_NOISE: tl.constexpr, LEARNED: tl.constexpr, CLIP: tl.constexpr, R: tl.constexpr):
    b = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(1) * R + tl.arange(0, R)[:, None]
    cols = tl.program_id(0) * R + tl.arange(0, R)[None, :]
    inside = (rows < H) & (cols < W)
    HW = H.to(tl.int64) * W
    pix = rows.to(tl.int64) * W + cols
    gi = b * HW + pix
    mi = b * K * HW + pix
    cf = coef_ptr + b * 9
    c_x = tl.load(cf + 0)
    c_e = tl.load(cf + 1)
    m_x0 = tl.load(cf + 2)
    m_xt = tl.load(cf + 3)
    lv_min = tl.load(cf + 4)
    lv_max = tl.load(cf + 5)
    ns = tl.load(cf + 6)
    sa = tl.load(cf + 7)
    sn = tl.load(cf + 8)

    x = tl.load(x_ptr + gi, mask=inside, other=0.0).to(tl.float32)
    e = tl.load(mo_ptr + mi, mask=inside, other=0.0).to(tl.float32)
    x0 = c_x * x - c_e * e
    if CLIP:
        x0 = tl.minimum(tl.maximum(x0, -1.0), 1.0)
    mean = m_x0 * x0 + m_xt * x
    if LEARNED:
        v = tl.load(mo_ptr + mi + HW, mask=inside, other=0.0).to(tl.float32)
        frac = (v + 1.0) / 2.0
        lv = frac * lv_max + (1.0 - frac) * lv_min
    else:
        lv = lv_min + 0.0 * x
    if HAS_NOISE:
        z = tl.load(noise_ptr + gi, mask=inside, other=0.0)
    else:
        z = philox_normal(seed_lo, seed_hi, offset, 0, gi)
    xp = mean + ns * tl.exp(0.5 * lv) * z
    xp = tl.where(inside, xp, 0.0)
    acc = xp

    ri = tl.arange(0, R)
    for m in range(M):
        on = tl.load(act_ptr + b * M + m)
        if on != 0:
            n = tl.load(fac_ptr + b * M + m).to(tl.int32)
            inv_n = 1.0 / n.to(tl.float32)
            P = tl.where((ri[:, None] // n) == (ri[None, :] // n), inv_n, 0.0)
            phi_x = tl.dot(tl.dot(P, xp, input_precision="ieee"), P, input_precision="ieee")
            wl = W // n
            j = (rows // n).to(tl.int64) * wl + cols // n
            roff = tl.load(ref_off_ptr + b * M + m)
            refv = tl.load(refs_ptr + roff + j, mask=inside, other=0.0)
            if HAS_NOISE:
                en = tl.load(ref_noise_ptr + roff + j, mask=inside, other=0.0)
            else:
                en = philox_normal(seed_lo, seed_hi, offset, 1 + m, b * HW + j) * inv_n
            r = sa * refv + sn * en - phi_x
            kind = tl.load(kind_ptr + b * M + m)
            if kind == 0:
                acc = acc + r
            elif kind == 2:
                woff = tl.load(woff_ptr + b * M + m)
                w = tl.load(wmap_ptr + woff + pix, mask=inside, other=0.0)
                acc = acc + w * r
            else:
                pp = patch_ptr + (b * M + m) * 7
                cx = tl.load(pp + 0)
                cy = tl.load(pp + 1)
                sig = tl.load(pp + 2)
                bx = tl.load(pp + 3)
                by = tl.load(pp + 4)
                bw = tl.load(pp + 5)
                bh = tl.load(pp + 6)
                fx = cols.to(tl.float32)
                fy = rows.to(tl.float32)
                inv2s2 = 1.0 / (2.0 * sig * sig)
                dx = fx - cx
                dy = fy - cy
                wx = tl.where((fx >= bx) & (fx < bx + bw), tl.exp(-dx * dx * inv2s2), 0.0)
                wy = tl.where((fy >= by) & (fy < by + bh), tl.exp(-dy * dy * inv2s2), 0.0)
                acc = acc + (wy * wx) * r
    tl.store(out_ptr + gi, acc.to(out_ptr.dtype.element_ty), mask=inside)


def _seed_words(seed: int) -> tuple[int, int]:
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return s & MASK32, s >> 32


def _check(x_t: Tensor, model_output: Tensor, coefs: Tensor, noise: Tensor | None, ref_noise: Tensor | None,
           refs: Tensor, factors: Tensor, learned_variance: bool) -> None:
    op = "mcfast::guided_step_triton: "
    torch._check(x_t.dim() == 4 and x_t.shape[1] == 1, lambda: f"{op}x_t must have shape (B, 1, H, W)")
    torch._check(x_t.dtype in (torch.float32, torch.bfloat16), lambda: f"{op}x_t must be float32 or bfloat16")
    torch._check(model_output.dtype == x_t.dtype, lambda: f"{op}model_output dtype differs from x_t")
    torch._check(model_output.shape[1] >= (2 if learned_variance else 1), lambda: f"{op}model_output has too few channels")
    torch._check(x_t.is_contiguous() and model_output.is_contiguous(), lambda: f"{op}inputs must be contiguous")
    torch._check(tuple(coefs.shape) == (x_t.shape[0], 9), lambda: f"{op}coefs must have shape (B, 9)")
    torch._check((noise is None) == (ref_noise is None), lambda: f"{op}pass both noise and ref_noise, or neither")


@triton_op("mcfast::guided_step_triton", mutates_args=())
def guided_step_triton(x_t: Tensor, model_output: Tensor, coefs: Tensor, noise: Tensor | None,
                       ref_noise: Tensor | None, refs: Tensor, ref_offsets: Tensor, factors: Tensor, active: Tensor,
                       weight_kind: Tensor, patch: Tensor, weight_maps: Tensor, weight_offsets: Tensor, seed: int,
                       offset: int, learned_variance: bool, clip: bool) -> Tensor:
    """The fused guided step (same arguments and result as ``torch.ops.mcfast.guided_step``)."""
    _check(x_t, model_output, coefs, noise, ref_noise, refs, factors, learned_variance)
    B, _, H, W = x_t.shape
    M = factors.shape[1]
    out = torch.empty_like(x_t)
    on = factors[active]  # read where the tables are (on the host, as try_fused_step passes them: no sync)
    max_factor = int(on.max().item()) if on.numel() else 1
    # Like the C++ op, coefs and the small tables may come on the host; the kernel reads them on x_t's device.
    dev = x_t.device
    coefs, ref_offsets, factors, weight_kind, patch, weight_offsets = (
        t.to(dev) for t in (coefs, ref_offsets, factors, weight_kind, patch, weight_offsets))
    act = active.to(device=dev, dtype=torch.int8)
    torch._check(max_factor & (max_factor - 1) == 0, lambda: f"mcfast::guided_step_triton: factor {max_factor} is not a power of two")
    R = max(16, max_factor)
    lo, hi = _seed_words(seed)
    grid = (triton.cdiv(W, R), triton.cdiv(H, R), B)
    dummy = refs if refs.numel() else coefs
    wrap_triton(_guided_step_kernel)[grid](
        x_t, model_output, out, coefs, noise if noise is not None else dummy,
        ref_noise if ref_noise is not None else dummy, dummy, ref_offsets, factors, act, weight_kind, patch,
        weight_maps if weight_maps.numel() else dummy, weight_offsets, H, W, model_output.shape[1], M, lo, hi,
        int(offset) & MASK32, HAS_NOISE=noise is not None, LEARNED=bool(learned_variance), CLIP=bool(clip), R=R)
    return out


def philox_bits(groups: int, seed: int, offset: int, stream: int, start: int, device: torch.device | str) -> Tensor:
    """Raw Philox words (groups, 4) int32 from the Triton generator (tests compare them with the C++ one)."""
    out = torch.empty(groups, 4, dtype=torch.int32, device=device)
    lo, hi = _seed_words(seed)
    _philox_bits_kernel[(triton.cdiv(groups, 256),)](out, groups, lo, hi, offset & MASK32, stream & MASK32, start,
                                                     BLOCK=256)
    return out


def philox_normal_(out: Tensor, seed: int, offset: int, stream: int, start: int) -> Tensor:
    """Fill float32 ``out`` with normals start, start+1, ... from the Triton generator."""
    lo, hi = _seed_words(seed)
    _philox_normal_kernel[(triton.cdiv(out.numel(), 1024),)](out, out.numel(), lo, hi, offset & MASK32,
                                                             stream & MASK32, start, BLOCK=1024)
    return out

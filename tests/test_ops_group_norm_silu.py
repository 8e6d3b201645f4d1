"""mcfast::group_norm_silu (C++ on CPU, CUDA, Triton twin) against its PyTorch reference, and the U-Net's
fused-norm path against the plain one."""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from mcfast import ops
from mcfast.models import inference
from mcfast.models.unet import ResBlock, UNetModel, use_fused_norm
from mcfast.ops import norm
from mcfast.ops.norm import group_norm_silu, group_norm_silu_reference

pytestmark = [pytest.mark.skipif(not ops.available(), reason="mcfast._C is not built"),
              pytest.mark.usefixtures("one_thread")]

BF16_ULP = 2.0 ** -7  # spacing of bfloat16 relative to the leading power of two


def make_args(B=3, C=96, H=17, W=17, groups=32, dtype=torch.float32, channels_last=False, scale=True, shift=True,
              mod_dtype=torch.float32, seed=0, offset=0.5, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, C, H, W, generator=g) * spread + offset).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = 1 + 0.3 * torch.randn(C, generator=g)
    bias = 0.3 * torch.randn(C, generator=g)
    sc = (0.5 * torch.randn(B, C, generator=g)).to(mod_dtype) if scale else None
    sh = (0.5 * torch.randn(B, C, generator=g)).to(mod_dtype) if shift else None
    return x, weight, bias, sc, sh, groups


def oracle(x, weight, bias, scale, shift, groups, eps, apply_silu):
    """The op's definition in float64, not rounded."""
    xd = x.double()
    B, C = x.shape[:2]
    xg = xd.reshape(B, groups, -1)
    mean = xg.mean(-1, keepdim=True)
    var = xg.var(-1, unbiased=False, keepdim=True)
    y = ((xg - mean) / torch.sqrt(var + eps)).reshape(x.shape) * weight.double()[:, None, None] \
        + bias.double()[:, None, None]
    if scale is not None:
        y = y * (1 + scale.double()[:, :, None, None])
    if shift is not None:
        y = y + shift.double()[:, :, None, None]
    return torch.nn.functional.silu(y) if apply_silu else y


def op(*args, eps=1e-5, apply_silu=True):
    return torch.ops.mcfast.group_norm_silu(*args, eps, apply_silu)


# ---- the C++ op ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("apply_silu", [True, False])
@pytest.mark.parametrize("modulated", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(dtype, channels_last, modulated, apply_silu):
    args = make_args(dtype=dtype, channels_last=channels_last, scale=modulated, shift=modulated)
    got = op(*args, apply_silu=apply_silu)
    want = group_norm_silu_reference(*args, 1e-5, apply_silu)
    assert got.dtype == dtype and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        return
    # bfloat16: both round once, at the end: at most one ulp apart, and the op no less accurate than the
    # reference against the unrounded float64 result.
    torch.testing.assert_close(got.float(), want.float(), rtol=BF16_ULP, atol=1e-6)
    exact = oracle(*args, 1e-5, apply_silu)
    err_op = (got.double() - exact).abs().mean()
    err_ref = (want.double() - exact).abs().mean()
    assert err_op <= err_ref * 1.02 + 1e-9, (err_op.item(), err_ref.item())


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 8, 128, 128, 2),   # several moment chunks per group (Chan merges)
                                   (1, 32, 5, 3, 32),    # one channel per group, tiny image
                                   (2, 6, 9, 11, 1),     # one group
                                   (1, 512, 4, 4, 32)])  # more channels than a chunk's pixels hold
def test_shapes(shape, channels_last):
    B, C, H, W, G = shape
    args = make_args(B, C, H, W, G, channels_last=channels_last)
    torch.testing.assert_close(op(*args), group_norm_silu_reference(*args, 1e-5, True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_moments_are_stable_far_from_zero(channels_last):
    # mean 300, std 0.05: E[x²] − E[x]² in float32 gives σ² = 0.0156 instead of 0.0025 here (torch's
    # channels_last CPU GroupNorm is off by ~200). What is left is the folded a·x + c0, |a·x| ≈ 10⁴: ~ulp(10⁴).
    args = make_args(2, 32, 64, 64, 8, channels_last=channels_last, offset=300.0, spread=0.05)
    got = op(*args, apply_silu=False)
    torch.testing.assert_close(got.double(), oracle(*args, 1e-5, False), rtol=0, atol=5e-3)


def test_scale_or_shift_alone_and_other_dtypes():
    x, w, b, sc, sh, G = make_args(mod_dtype=torch.float64)
    for s1, s2 in ((sc, None), (None, sh), (sc.bfloat16(), sh.half())):
        torch.testing.assert_close(op(x, w, b, s1, s2, G), group_norm_silu_reference(x, w, b, s1, s2, G, 1e-5, True),
                                   rtol=1e-5, atol=1e-5)


def test_other_layouts_empty_batch_and_eps():
    x, w, b, sc, sh, G = make_args()
    strided = x[:, :, ::2, 1:]  # neither contiguous nor channels_last: read as contiguous
    got = op(strided, w, b, sc, sh, G)
    assert got.is_contiguous()
    torch.testing.assert_close(got, group_norm_silu_reference(strided, w, b, sc, sh, G, 1e-5, True))
    empty = op(x[:0], w, b, sc[:0], sh[:0], G)
    assert empty.shape == (0, 96, 17, 17)
    constant = torch.ones(1, 96, 4, 4)  # σ² = 0: eps alone sets the scale
    torch.testing.assert_close(op(constant, w, b, None, None, G, eps=0.5, apply_silu=False),
                               b[None, :, None, None].expand(1, 96, 4, 4))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype, channels_last):
    x, w, b, sc, sh, G = make_args(2, 64, 6, 5, 16, dtype=dtype, channels_last=channels_last)
    for args in ((x, w, b, sc, sh, G, 1e-5, True), (x, w, b, None, None, G, 1e-6, False),
                 (x, w, b, sc.bfloat16(), None, G, 1e-5, True)):
        torch.library.opcheck(torch.ops.mcfast.group_norm_silu, args)


@pytest.mark.parametrize("change, message", [
    (dict(x=torch.zeros(2, 96, 17)), r"x must have shape \(B, C, H, W\)"),
    (dict(x=torch.zeros(3, 96, 4, 4, dtype=torch.float64)), "x must be float32 or bfloat16"),
    (dict(groups=7), "C = 96 are not divisible by groups = 7"),
    (dict(groups=0), "groups must be positive"),
    (dict(weight=torch.ones(95)), r"weight must have shape \(C,\) = \(96,\)"),
    (dict(bias=torch.ones(96, dtype=torch.bfloat16)), "bias must be float32"),
    (dict(scale=torch.ones(96)), r"scale must have shape \(B, C\) = \(3, 96\)"),
    (dict(shift=torch.ones(3, 48)), r"shift must have shape \(B, C\) = \(3, 96\)"),
    (dict(scale=torch.ones(3, 96, dtype=torch.int64)), "scale must be a floating-point tensor"),
])
def test_errors(change, message):
    x, w, b, sc, sh, G = make_args()
    kw = dict(x=x, weight=w, bias=b, scale=sc, shift=sh, groups=G)
    kw.update(change)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.mcfast.group_norm_silu(kw["x"], kw["weight"], kw["bias"], kw["scale"], kw["shift"], kw["groups"],
                                         1e-5, True)


# ---- the Python entry ------------------------------------------------------------------------------------------
def test_entry_uses_the_op_and_keeps_gradients_on_the_reference():
    x, w, b, sc, sh, G = make_args()
    assert norm.kernel_for(x) is torch.ops.mcfast.group_norm_silu
    assert norm.kernel_for(x.double()) is None and norm.kernel_for(x[0]) is None
    torch.testing.assert_close(group_norm_silu(x, w, b, sc, sh, G, 1e-5), op(x, w, b, sc, sh, G))
    # float64 has no kernel: the reference serves (float32 math, float64 result)
    wide = group_norm_silu(x.double(), w, b, sc, sh, G)
    assert wide.dtype == torch.float64
    torch.testing.assert_close(wide, oracle(x, w, b, sc, sh, G, 1e-5, True), rtol=1e-5, atol=1e-5)
    # a gradient is needed: the differentiable reference runs, with the reference's gradients
    grads = []
    for fn in (group_norm_silu, group_norm_silu_reference):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        fn(xr, wr, b, sc, sh, G, 1e-5, True).square().sum().backward()
        grads.append((xr.grad, wr.grad))
    torch.testing.assert_close(grads[0], grads[1])


# ---- the Triton twin (interpreter on CPU tensors, in a subprocess so TRITON_INTERPRET=1 is set before import) ---
TRITON_SCRIPT = textwrap.dedent(r"""
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, sys.argv[1])
    import torch
    from mcfast.ops.norm import group_norm_silu_reference
    from mcfast.ops.triton_norm import group_norm_silu_triton
    from test_ops_group_norm_silu import make_args, BF16_ULP

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for channels_last in (False, True):
            for modulated, apply_silu in ((True, True), (False, False), (True, False)):
                args = make_args(dtype=dtype, channels_last=channels_last, scale=modulated, shift=modulated)
                got = group_norm_silu_triton(*args, 1e-5, apply_silu)
                want = group_norm_silu_reference(*args, 1e-5, apply_silu)
                assert got.dtype == dtype and got.is_contiguous(
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                # float16: one rounding (2^-10); bfloat16: the interpreter truncates float32 -> bfloat16 (its
                # cast passes no rounding mode; GPUs round to nearest), so one ulp either way.
                tol = {torch.float32: 1e-5, torch.float16: 2.0 ** -10, torch.bfloat16: BF16_ULP}[dtype]
                torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=1e-5)
    args = make_args(2, 8, 40, 40, 2)  # several blocks per group
    torch.testing.assert_close(group_norm_silu_triton(*args, 1e-5, True), group_norm_silu_reference(*args, 1e-5, True),
                               rtol=1e-5, atol=1e-5)
    print("TRITON-OK")
""")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_twin_under_the_interpreter():
    tests_dir = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", TRITON_SCRIPT, str(tests_dir)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0 and "TRITON-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_kernel_and_triton_match_reference(dtype, channels_last):
    from mcfast.ops.triton_norm import group_norm_silu_triton

    args = [a.cuda() if isinstance(a, torch.Tensor) else a
            for a in make_args(dtype=dtype, channels_last=channels_last)]
    want = group_norm_silu_reference(*args, 1e-5, True).float()
    tol = {torch.float32: 1e-5, torch.float16: 2.0 ** -10, torch.bfloat16: BF16_ULP}[dtype]
    for fn in (torch.ops.mcfast.group_norm_silu, group_norm_silu_triton):
        got = fn(*args, 1e-5, True)
        assert got.dtype == dtype and got.stride() == args[0].stride()
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=1e-5)


# ---- the U-Net's fused path ------------------------------------------------------------------------------------
def random_unet(seed=0, use_scale_shift_norm=True):
    torch.manual_seed(seed)
    # channels 32 → 64 with skips of 96: GroupNorm(32) over 1, 2 and 3 channels per group; attention at H/2
    model = UNetModel(image_size=16, model_channels=32, out_channels=2, num_res_blocks=1, attention_resolutions=(2,),
                      channel_mult=(1, 2), num_heads=2, use_scale_shift_norm=use_scale_shift_norm)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero-initialised output layers would hide the residual branches
        for name, p in model.named_parameters():
            is_norm_weight = name.endswith("norm.weight")
            p.copy_((1.0 if is_norm_weight else 0.0) + torch.randn(p.shape, generator=g) * (0.1 if is_norm_weight else 0.05))
    return model.eval()


def unet_inputs(batch=2, size=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 1, size, size, generator=g), torch.tensor([3, 700])[:batch]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_unet_fused_matches_plain(precision, channels_last):
    model = random_unet()
    x, t = unet_inputs()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def run(fused):
        use_fused_norm(model, fused)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            return model(x, t).float()

    plain, fused = run(False), run(True)
    assert plain.abs().mean() > 1e-2
    if dtype is None:
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    else:  # bfloat16 rounding differences propagate through the convs; the fused path is no less accurate
        rel = (fused - plain).norm() / plain.norm()
        assert rel < 2e-2, rel.item()
        use_fused_norm(model, False)
        with torch.no_grad():
            exact = model(x, t)
        assert (fused - exact).norm() <= 1.1 * (plain - exact).norm()


def test_unet_fused_without_scale_shift_norm():
    model = random_unet(use_scale_shift_norm=False)  # the embedding is added before the out norm
    x, t = unet_inputs()
    with torch.no_grad():
        plain = model(x, t)
        use_fused_norm(model)
        torch.testing.assert_close(model(x, t), plain, rtol=1e-4, atol=1e-4)


def test_unet_fused_op_sees_bf16_under_autocast(monkeypatch):
    seen = []

    def spy(x):
        kernel = torch.ops.mcfast.group_norm_silu

        def call(x, *rest):
            out = kernel(x, *rest)
            seen.append((x.dtype, out.dtype, x.is_contiguous(memory_format=torch.channels_last)))
            return out
        return call

    monkeypatch.setattr(norm, "kernel_for", spy)
    model = random_unet().to(memory_format=torch.channels_last)
    n_blocks = use_fused_norm(model)
    x, t = unet_inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x.contiguous(memory_format=torch.channels_last), t)
    assert n_blocks == sum(isinstance(m, ResBlock) for m in model.modules()) == 8
    assert len(seen) == 2 * n_blocks
    assert all(s == (torch.bfloat16, torch.bfloat16, True) for s in seen), seen


def test_unet_fused_scripts_and_trains_like_plain():
    model = random_unet()
    use_fused_norm(model)
    x, t = unet_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)  # scripted blocks take the plain path
    with torch.no_grad():
        torch.testing.assert_close(scripted(x, t), model(x, t), rtol=1e-4, atol=1e-4)
    # with gradients the fused blocks run the differentiable reference: same gradients as the plain model
    grads = []
    for fused in (True, False):
        use_fused_norm(model, fused)
        model.zero_grad()
        model(x, t).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_make_model_fn_turns_fused_norm_on_automatically(monkeypatch, caplog):
    model = random_unet()
    x, t = unet_inputs()
    cpu = torch.device("cpu")
    fused = inference.make_model_fn(model, cpu, "bf16", True)(x, t)
    assert all(m.fused_norm for m in model.modules() if isinstance(m, ResBlock))
    plain = inference.make_model_fn(model, cpu, "bf16", True, fused_norm=False)(x, t)
    assert not any(m.fused_norm for m in model.modules() if isinstance(m, ResBlock))
    assert (fused - plain).norm() / plain.norm() < 2e-2
    # no library: the plain path, said once
    monkeypatch.setattr(ops, "available", lambda: False)
    monkeypatch.setattr(inference, "_logged_plain", False)
    with caplog.at_level(logging.INFO, logger="mcfast.models"):
        for _ in range(2):
            inference.make_model_fn(model, cpu, "fp32", False)
    assert not any(m.fused_norm for m in model.modules() if isinstance(m, ResBlock))
    assert sum("plain GroupNorm" in r.getMessage() for r in caplog.records) == 1

"""mcfast::guided_step (C++ CPU kernel): against the op-level reference, the guidance oracle, opcheck, checks."""
import logging

import pytest
import torch

from mcfast import ops

pytestmark = pytest.mark.skipif(not ops.available(), reason="mcfast._C is not built")

from _ops_helpers import packed_args  # noqa: E402
from mcfast.ops.oracle import guided_step_oracle, philox_noise  # noqa: E402
from mcfast.ops.step import guided_step  # noqa: E402

OP = torch.ops.mcfast.guided_step


@pytest.mark.parametrize("learned,clip", [(True, True), (False, False)])
def test_passed_noise_matches_reference_fp32(learned, clip):
    args = packed_args(learned=learned)
    out = OP(*args, 0, 0, learned, clip)
    want = guided_step_oracle(*args, learned, clip)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_eight_conditions_per_image_mixed_batch():
    factors = ((1, 2, 4, 8, 16, 2, 4, 8), (8, 8, 4, 4, 2, 2, 1, 1), (4, 4, 4, 4, 4, 4, 4, 4))
    kinds = ((0, 1, 2, 0, 1, 2, 0, 1), (2, 2, 1, 1, 0, 0, 1, 2), (0, 0, 0, 0, 0, 0, 0, 0))
    active = ((1, 1, 0, 1, 1, 1, 0, 1), (1, 1, 1, 1, 1, 1, 1, 1), (0, 0, 0, 0, 0, 0, 0, 0))
    args = packed_args(B=3, H=32, W=64, factors=factors, kinds=kinds, active=active)
    out = OP(*args, 0, 0, True, True)
    torch.testing.assert_close(out, guided_step_oracle(*args, True, True), rtol=1e-5, atol=1e-5)


def test_bfloat16_to_its_precision():
    args = packed_args(dtype=torch.bfloat16)
    out = OP(*args, 0, 0, True, True)
    assert out.dtype == torch.bfloat16
    want = guided_step_oracle(*args, True, True)  # float32 math on the same bf16 inputs, rounded once
    torch.testing.assert_close(out.float(), want.float(), rtol=2 ** -7, atol=2 ** -7)


def test_in_kernel_noise_matches_reference_with_the_same_streams():
    args = packed_args(noise=False)
    x = args[0]
    z, ref_noise = philox_noise(11, 4, tuple(x.shape), args[7], args[6], args[8], args[5].numel())
    out = OP(*args, 11, 4, True, False)
    want = guided_step_oracle(*(args[:3] + [z, ref_noise] + args[5:]), True, False)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(out, OP(*args, 11, 4, True, False))       # reproducible
    assert not torch.equal(out, OP(*args, 11, 5, True, False))   # next step: fresh noise


def test_no_conditions_is_the_plain_step():
    args = packed_args(factors=((1,), (1,)), kinds=((0,), (0,)), active=((0,), (0,)))
    out = OP(*args, 0, 0, True, True)
    torch.testing.assert_close(out, guided_step_oracle(*args, True, True), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("noise", [True, False])
def test_opcheck(noise):
    args = packed_args(H=16, W=16, noise=noise)
    torch.library.opcheck(OP.default, tuple(args) + (3, 1, True, True))


def _mutate(args, what):
    a = list(args)
    if what == "x_shape":
        a[0] = a[0][:, :, :8].contiguous()
    elif what == "x_dtype":
        a[0], a[1] = a[0].double(), a[1].double()
    elif what == "mo_dtype":
        a[1] = a[1].to(torch.bfloat16)
    elif what == "noncontig":
        a[0] = a[0].transpose(2, 3).contiguous().transpose(2, 3)
    elif what == "coefs":
        a[2] = a[2][:, :8].contiguous()
    elif what == "noise_pair":
        a[4] = None
    elif what == "factor_divides":
        a[7] = a[7].clone(); a[7][0, 0] = 64
    elif what == "factor_pow2":
        a[7] = a[7].clone(); a[7][0, 0] = 3
    elif what == "ref_offset":
        a[6] = a[6].clone(); a[6][1, 2] = a[5].numel()
    elif what == "kind":
        a[9] = a[9].clone(); a[9][0, 0] = 5
    elif what == "table_dtype":
        a[7] = a[7].int()
    elif what == "channels":
        a[1] = a[1][:, :1].contiguous()
    return a


@pytest.mark.parametrize("what,msg", [
    ("x_shape", "model_output must have shape"),
    ("x_dtype", "must be float32 or bfloat16"),
    ("mo_dtype", "differs from x_t dtype"),
    ("noncontig", "x_t must be contiguous"),
    ("coefs", r"coefs must have shape \(B, 9\)"),
    ("noise_pair", "pass both noise and ref_noise"),
    ("factor_divides", "does not divide the image size"),
    ("factor_pow2", "is not a power of two"),
    ("ref_offset", "runs past refs"),
    ("kind", "weight_kind"),
    ("table_dtype", "factors must be Long"),
    ("channels", "needs 2 channels"),
])
def test_bad_inputs_have_clear_errors(what, msg):
    args = _mutate(packed_args(), what)
    with pytest.raises(RuntimeError, match=msg):
        OP(*args, 0, 0, True, True)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph_sampling_step(backend):
    args = packed_args(H=16, W=16, noise=False)

    def step(x, model_out, coefs, refs, offs, fac, act, kind, patch, maps, woff):
        # a plain step (no active condition) and a guided step in one graph, through the typed wrapper
        tables = dict(refs=refs, ref_offsets=offs, factors=fac, weight_kind=kind, patch=patch, weight_maps=maps,
                      weight_offsets=woff, seed=5, offset=7, learned_variance=True, clip=True)
        plain = guided_step(x_t=x, model_output=model_out, coefs=coefs, active=torch.zeros_like(act), **tables)
        guided = guided_step(x_t=x, model_output=model_out, coefs=coefs, active=act, **tables)
        return plain * 0.5 + guided * 0.5

    inputs = [args[i] for i in (0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12)]
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(*inputs), step(*inputs), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("noise", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_and_triton_match_cpu(noise, dtype):
    from mcfast.ops.triton_kernels import guided_step_triton

    args = packed_args(B=3, H=64, W=64, factors=((4, 2, 8), (1, 8, 2), (64, 16, 4)),
                       kinds=((0, 1, 2), (2, 0, 1), (0, 0, 1)), noise=noise, dtype=dtype)
    want = OP(*args, 9, 2, True, True).float()
    cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    tol = 1e-4 if dtype == torch.float32 else 2 ** -7
    # both ops also take coefs and the (B, M) tables on the host (what FusedGuidedStep passes on CUDA)
    host_tables = [a if i in (2, 6, 7, 8, 9, 10, 12) else c for i, (a, c) in enumerate(zip(args, cuda_args))]
    for fn in (OP, guided_step_triton):
        for fn_args in (cuda_args, host_tables):
            got = fn(*fn_args, 9, 2, True, True).float().cpu()
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    torch.library.opcheck(OP.default, tuple(cuda_args) + (9, 2, True, True))
    bits = torch.empty(64, 4, dtype=torch.int32, device="cuda")
    torch.ops.mcfast.philox_bits_(bits, 5, 6, 7, 8)
    ref = torch.empty(64, 4, dtype=torch.int32)
    torch.ops.mcfast.philox_bits_(ref, 5, 6, 7, 8)
    assert torch.equal(bits.cpu(), ref)


@pytest.mark.parametrize("noise", [True, False])
def test_strips_running_sums_and_patch_boxes_at_the_edges(noise):
    """Several strips per image (H=128 → strips of 64 rows), block rows taller than the row group (running
    sums), patch boxes crossing a strip boundary, leaving the image, with fractional or empty extents."""
    factors = ((16, 2, 4, 8, 1), (4, 16, 1, 2, 8))
    kinds = ((0, 1, 1, 2, 1), (1, 0, 1, 1, 1))
    args = packed_args(B=2, H=128, W=64, factors=factors, kinds=kinds, noise=noise)
    boxes = {  # (b, m): cx, cy, sigma, box x, y, w, h
        (0, 1): (20.0, 64.0, 9.0, 5.0, 50.0, 30.0, 30.0),      # crosses the strip boundary at y = 64
        (0, 2): (60.0, 120.0, 6.0, 50.0, 110.0, 40.0, 40.0),   # runs past the right and bottom edges
        (0, 4): (3.0, 3.0, 4.0, -6.5, -3.25, 12.5, 9.75),      # negative, fractional corner
        (1, 0): (32.0, 70.0, 12.0, 1.5, 33.5, 61.0, 60.5),     # fractional box, both strips
        (1, 2): (10.0, 10.0, 3.0, 8.0, 8.0, 0.0, 5.0),         # empty
        (1, 3): (40.0, 100.0, 5.0, 130.0, 90.0, 10.0, 10.0),   # entirely outside
        (1, 4): (30.0, 63.0, 7.0, 17.0, 57.0, 23.0, 14.0),     # unaligned to its factor 8, crosses y = 64
    }
    for (b, m), params in boxes.items():
        args[10][b, m] = torch.tensor(params)
    if noise:
        want = guided_step_oracle(*args, True, True)
        out = OP(*args, 0, 0, True, True)
    else:
        z, ref_noise = philox_noise(5, 9, tuple(args[0].shape), args[7], args[6], args[8], args[5].numel())
        want = guided_step_oracle(*(args[:3] + [z, ref_noise] + args[5:]), True, True)
        out = OP(*args, 5, 9, True, True)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)

"""mcfast::ddpm_step: the DDPM posterior step against PyTorch, opcheck, and its input checks."""
import pytest
import torch

from mcfast import ops

pytestmark = pytest.mark.skipif(not ops.available(), reason="mcfast._C is not built")


def _args(B=3, shape=(1, 8, 12), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, e, z = (torch.randn((B,) + shape, generator=g).to(dtype) for _ in range(3))
    coefs = [torch.rand(B, generator=g) * 2 for _ in range(5)]
    return x, e, z, coefs


def _reference(x, e, z, c, clip):
    v = [t.view(-1, *([1] * (x.dim() - 1))) for t in c]
    x0 = v[0] * x.float() - v[1] * e.float()
    if clip:
        x0 = x0.clamp(-1, 1)
    return v[2] * x0 + v[3] * x.float() + v[4] * z.float()


@pytest.mark.parametrize("clip", [True, False])
def test_matches_pytorch_float32(clip):
    x, e, z, c = _args()
    out = torch.ops.mcfast.ddpm_step(x, e, z, *c, clip)
    torch.testing.assert_close(out, _reference(x, e, z, c, clip), rtol=1e-6, atol=1e-6)


def test_bfloat16_in_out_float32_math():
    x, e, z, c = _args(dtype=torch.bfloat16)
    out = torch.ops.mcfast.ddpm_step(x, e, z, *c, True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, _reference(x, e, z, c, True).to(torch.bfloat16), rtol=1e-2, atol=1e-2)


def test_clip_limits_x0():
    x, e, z, c = _args()
    c[1] = torch.full_like(c[1], 100.0)  # x0 far outside [-1, 1]
    c[2] = torch.ones_like(c[2])
    c[3] = torch.zeros_like(c[3])
    c[4] = torch.zeros_like(c[4])
    out = torch.ops.mcfast.ddpm_step(x, e, z, *c, True)
    assert out.abs().max() <= 1.0


def test_opcheck():
    x, e, z, c = _args()
    torch.library.opcheck(torch.ops.mcfast.ddpm_step.default, (x, e, z, *c, True))


@pytest.mark.parametrize("bad,msg", [
    ("eps_shape", "eps must have the shape of x_t"),
    ("coef_shape", "coef_x0_from_xt must have shape"),
    ("coef_dtype", "coef_mean_x0 must be float32"),
    ("dtype", "must be float32 or bfloat16"),
    ("noncontig", "noise must be contiguous"),
])
def test_bad_inputs(bad, msg):
    x, e, z, c = _args()
    if bad == "eps_shape":
        e = e[:, :, :4]
    elif bad == "coef_shape":
        c[0] = torch.rand(2)
    elif bad == "coef_dtype":
        c[2] = c[2].double()
    elif bad == "dtype":
        x, e, z = x.double(), e.double(), z.double()
    elif bad == "noncontig":
        z = torch.randn(3, 1, 12, 8).transpose(2, 3)
    with pytest.raises(RuntimeError, match=msg):
        torch.ops.mcfast.ddpm_step(x, e, z, *c, True)


def test_library_path_and_load():
    path = ops.library_path()
    assert path.exists() and path.name.startswith("_C")
    ops.load()
    assert hasattr(torch.ops.mcfast, "guided_step")

import math

import pytest
import torch

from mcfast.errors import InputError
from mcfast.guidance.filters import downsample, lowpass, upsample


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_box_lowpass_is_the_block_mean_repeated():
    x = _randn(2, 1, 16, 24)
    n = 4
    blocks = x.reshape(2, 1, 16 // n, n, 24 // n, n).mean(dim=(3, 5))
    expected = blocks[:, :, :, None, :, None].expand(2, 1, 16 // n, n, 24 // n, n).reshape(2, 1, 16, 24)
    torch.testing.assert_close(lowpass(x, n, "box"), expected)
    torch.testing.assert_close(downsample(x, n, "box"), blocks)


def test_box_lowpass_is_idempotent_and_bicubic_is_not():
    x = _randn(1, 1, 32, 32)
    box = lowpass(x, 4, "box")
    torch.testing.assert_close(lowpass(box, 4, "box"), box)
    bic = lowpass(x, 4, "bicubic")
    assert (lowpass(bic, 4, "bicubic") - bic).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["box", "bicubic"])
def test_filters_are_linear_and_keep_constants(kind):
    a, b = _randn(1, 1, 32, 32, seed=1), _randn(1, 1, 32, 32, seed=2)
    torch.testing.assert_close(lowpass(2.0 * a - 0.5 * b, 4, kind), 2.0 * lowpass(a, 4, kind) - 0.5 * lowpass(b, 4, kind),
                               atol=1e-5, rtol=1e-5)
    const = torch.full((1, 32, 32), -0.3)
    torch.testing.assert_close(lowpass(const, 8, kind), const, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["box", "bicubic"])
def test_factor_one_is_identity_and_shapes_follow_the_input(kind):
    x = _randn(3, 1, 16, 32)
    assert lowpass(x, 1, kind) is x
    assert downsample(x, 4, kind).shape == (3, 1, 4, 8)
    assert downsample(x[0, 0], 4, kind).shape == (4, 8)
    assert downsample(x[0], 2, kind).shape == (1, 8, 16)
    assert upsample(downsample(x, 4, kind), 4, kind).shape == x.shape


@pytest.mark.parametrize("kind", ["box", "bicubic"])
def test_filters_remove_the_finest_checkerboard_and_keep_smooth_waves(kind):
    ii, jj = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    checker = ((ii + jj) % 2) * 2 - 1
    assert lowpass(checker, 4, kind).abs().max() < 0.05
    smooth = torch.cos(2 * math.pi * ii / 64) * torch.cos(2 * math.pi * jj / 64)
    # a period of 64 px survives a factor-4 low-pass with small error (box: block-constant staircase)
    tol = 0.16 if kind == "box" else 0.03
    assert (lowpass(smooth, 4, kind) - smooth).abs().max() < tol


def test_bicubic_is_antialiased_not_point_sampled():
    # A period-4 stripe pattern aliases to a constant under point sampling every 4th pixel;
    # an antialiased shrink by 4 averages it out to (near) its mean of 0.
    jj = torch.arange(64.0).repeat(64, 1)
    stripes = torch.cos(2 * math.pi * jj / 4)
    # (the outermost low-res columns see the edge clamping, so look inside)
    assert downsample(stripes, 4, "bicubic")[:, 2:-2].abs().max() < 1e-3
    assert stripes[:, ::4].abs().min() == 1.0


def test_bicubic_differs_from_box():
    x = _randn(1, 1, 32, 32, seed=3)
    assert (lowpass(x, 4, "box") - lowpass(x, 4, "bicubic")).abs().max() > 0.05


@pytest.mark.parametrize("factor,message", [(3, "guidance factor 3 does not divide the image size 32x32"),
                                            (0, "must be >= 1"), (64, "does not divide"),
                                            (2.0, "must be an integer"), (True, "must be an integer")])
def test_bad_factor_is_one_clear_line(factor, message):
    with pytest.raises(InputError, match=message) as info:
        lowpass(torch.zeros(1, 32, 32), factor)
    assert "\n" not in str(info.value)


def test_unknown_filter_is_rejected():
    with pytest.raises(InputError, match="unknown guidance filter 'gauss'"):
        lowpass(torch.zeros(8, 8), 2, "gauss")

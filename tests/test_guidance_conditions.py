import math

import numpy as np
import pytest
import torch

from mcfast.diffusion import create_diffusion
from mcfast.errors import InputError
from mcfast.guidance import ILVRGuidance
from mcfast.guidance.conditions import (Condition, PatchWeight, check_conditions, conditions_per_image,
                                        gaussian_patch_weight, paste_patch)


def _ref(size=32, seed=0):
    return torch.rand(size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_gaussian_patch_weight_shape_support_peak_and_sigma():
    box = (5, 9, 11, 7)  # x, y, w, h: odd sizes so the centre (10, 12) is a pixel
    w = gaussian_patch_weight((32, 40), box)
    assert w.shape == (32, 40) and w.dtype == torch.float32
    inside = torch.zeros(32, 40, dtype=torch.bool)
    inside[9:16, 5:16] = True
    assert (w[~inside] == 0).all() and (w[inside] > 0).all()
    assert w[12, 10] == 1.0 and w.max() == 1.0
    sigma = 0.5 * max(11, 7) / 2  # default sigma_scale 0.5
    assert w[12, 10 + 2] == pytest.approx(math.exp(-4 / (2 * sigma ** 2)), rel=1e-6)
    assert w[12 + 3, 10] == pytest.approx(math.exp(-9 / (2 * sigma ** 2)), rel=1e-6)
    # spherical: equal distance, equal weight
    assert w[12, 10 + 3] == pytest.approx(w[12 + 3, 10].item(), rel=1e-6)
    wide = gaussian_patch_weight((32, 40), box, sigma_scale=2.0)
    assert wide[12, 12] == pytest.approx(math.exp(-4 / (2 * (2.0 * 11 / 2) ** 2)), rel=1e-6)


def test_patch_weight_parameters_rebuild_the_same_map():
    pw = PatchWeight.from_box((4, 6, 8, 10), sigma_scale=0.75)
    assert pw.center == (7.5, 10.5) and pw.sigma == pytest.approx(0.75 * 10 / 2)
    torch.testing.assert_close(pw.weight_map((32, 32)), gaussian_patch_weight((32, 32), (4, 6, 8, 10), 0.75))
    cond = Condition.on_canvas(_ref(), (4, 6, 8, 10), factor=2, sigma_scale=0.75, name="nodule")
    torch.testing.assert_close(cond.weight_map(), pw.weight_map((32, 32)))
    assert cond.patch == pw and not cond.is_full
    assert PatchWeight.from_box((4, 6, 8, 10), sigma_scale=np.float32(0.75)) == pw


def test_condition_normalises_reference_and_defaults():
    ref = _ref().numpy().astype(np.float64)
    cond = Condition(ref, 4)
    assert cond.ref.shape == (1, 32, 32) and cond.ref.dtype == torch.float32
    assert cond.stop_step == 0 and cond.filter == "box" and cond.is_full
    torch.testing.assert_close(cond.weight_map(), torch.ones(32, 32))
    assert cond.low_reference().shape == (1, 8, 8)
    torch.testing.assert_close(cond.low_reference(), cond.ref.reshape(1, 8, 4, 8, 4).mean(dim=(2, 4)))
    assert cond.active_at(0) and cond.active_at(999)
    late = Condition.full(torch.from_numpy(ref).unsqueeze(0), 4, stop_step=300)
    assert late.active_at(300) and not late.active_at(299)


def test_from_patch_places_the_patch_and_weights_its_box():
    patch = torch.full((6, 10), 0.8)
    cond = Condition.from_patch(patch, (3, 20), 32, factor=2, fill=-1.0, name="mass")
    assert cond.patch.box == (3, 20, 10, 6)
    assert (cond.ref[0, 20:26, 3:13] == 0.8).all()
    assert cond.ref[0].sum() == pytest.approx(0.8 * 60 - (32 * 32 - 60))
    assert (cond.weight_map()[cond.ref[0] == -1.0] == 0).all()
    canvas, box = paste_patch(patch, (0, 0), (8, 16))
    assert box == (0, 0, 10, 6) and canvas.shape == (8, 16)


def test_explicit_weight_is_kept():
    weight = torch.zeros(32, 32)
    weight[8:16, 8:16] = 1.0
    cond = Condition(_ref(), 8, weight=weight)
    torch.testing.assert_close(cond.weight_map(), weight)


def test_conditions_per_image_broadcasts_or_checks_length():
    a, b = Condition(_ref(), 2), Condition(_ref(seed=1), 4)
    assert conditions_per_image(a, 3) == [[a], [a], [a]]
    assert conditions_per_image([a, b], 2) == [[a, b], [a, b]]
    assert conditions_per_image([[a], [], [b, a]], 3) == [[a], [], [b, a]]
    assert conditions_per_image([], 2) == [[], []]
    with pytest.raises(InputError, match="conditions for 2 images but the batch has 3"):
        conditions_per_image([[a], [b]], 3)
    with pytest.raises(InputError, match="must be a Condition"):
        conditions_per_image([a, "x"], 2)


def _nan_ref():
    r = _ref()
    r[3, 4] = float("nan")
    return r


def _inf_ref():
    r = _ref()
    r[0, 0] = float("inf")
    return r


@pytest.mark.parametrize("make,message", [
    (lambda: Condition(_ref(), 3, name="lung"), "guidance condition 'lung': guidance factor 3 does not divide"),
    (lambda: Condition(_ref(), 0), "factor must be >= 1"),
    (lambda: Condition(_ref(), 4, stop_step=1001), "stop_step 1001 is outside 0..1000"),
    (lambda: Condition(_ref(), 4, stop_step=-1), "stop_step -1 is outside"),
    (lambda: Condition(_ref(), 4, stop_step=2.5), "stop_step must be an integer"),
    (lambda: Condition(_nan_ref(), 4, name="ct"), "guidance condition 'ct' reference contains NaN or Inf"),
    (lambda: Condition(_inf_ref(), 4), "reference contains NaN or Inf"),
    (lambda: Condition(_ref(), 4, weight=torch.ones(16, 16)), r"weight has shape \(16, 16\), expected \(32, 32\)"),
    (lambda: Condition(_ref(), 4, weight=torch.ones(2, 32, 32)), "weight must have shape"),
    (lambda: Condition(_ref(), 4, weight=torch.full((32, 32), 1.5)), r"weight must lie in \[0, 1\]"),
    (lambda: Condition(_ref(), 4, weight=torch.full((32, 32), float("nan"))), "weight contains NaN"),
    (lambda: Condition(torch.zeros(2, 32, 32), 4), "reference must have shape"),
    (lambda: Condition(_ref(), 4, filter="lanczos"), "unknown guidance filter 'lanczos'"),
    (lambda: Condition.on_canvas(_ref(), (28, 4, 8, 8), 4, name="p"), r"patch box \(28, 4, 8, 8\) lies outside the 32x32"),
    (lambda: Condition.on_canvas(_ref(), (-1, 4, 8, 8), 4), "lies outside"),
    (lambda: Condition.on_canvas(_ref(), (4, 4, 0, 8), 4), "empty size"),
    (lambda: Condition.on_canvas(_ref(), (4, 4, 8, 8), 4, sigma_scale=0), "sigma_scale must be a positive"),
    (lambda: Condition.from_patch(torch.zeros(8, 8), (30, 0), 32, 4), "lies outside the 32x32 image"),
    (lambda: gaussian_patch_weight((32, 32), (0, 0, 40, 4)), "lies outside"),
])
def test_bad_conditions_raise_one_clear_line(make, message):
    with pytest.raises(InputError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_stop_step_past_the_original_chain_is_rejected():
    short = create_diffusion(T=100, schedule="linear", respacing="ddim10", model_var_type="fixed_small",
                             loss_type="simple")
    cond = Condition(_ref(), 4, stop_step=500, name="anatomy")
    with pytest.raises(InputError, match="'anatomy' .*stop_step 500 is past the diffusion's 100 timesteps"):
        ILVRGuidance([cond], short)
    with pytest.raises(InputError, match="stop_step 500 is past"):
        check_conditions([[cond]], (32, 32), short)
    ILVRGuidance([Condition(_ref(), 4, stop_step=100)], short)  # at T: allowed (never applies)


def test_reference_size_must_match_the_samples():
    d = create_diffusion(T=1000, schedule="linear", respacing="10", model_var_type="fixed_small", loss_type="simple")
    with pytest.raises(InputError, match="has a 32x32 reference but the samples are 64x64"):
        check_conditions([[Condition(_ref(), 4)]], (64, 64), d)


def test_condition_keeps_its_own_copy_so_the_cached_lowpass_stays_true():
    ref = torch.rand(16, 16)
    weight = torch.rand(16, 16)
    cond = Condition(ref, 4, weight=weight)
    low = cond.low_reference().clone()
    ref.add_(1.0)
    weight.zero_()
    torch.testing.assert_close(cond.low_reference(), low)
    assert cond.weight.max() > 0

import warnings

import pytest
import torch

from mcfast.errors import InputError
from mcfast.models.unet import UNetModel, attention_factors, preset_config


pytestmark = pytest.mark.usefixtures("one_thread")


def small_unet(out_channels=2, seed=0):
    torch.manual_seed(seed)
    model = UNetModel(image_size=16, model_channels=16, out_channels=out_channels, num_res_blocks=1,
                      attention_resolutions=(2,), channel_mult=(1, 2), num_heads=2, dropout=0.0)
    # The output conv and residual branches start at zero; randomise so comparisons mean something.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def inputs(batch=2, size=16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 1, size, size, generator=g), torch.tensor([0, 999])[:batch]


@pytest.mark.parametrize("out_channels", [1, 2])
def test_output_shape_and_timestep_dependence(out_channels):
    model = small_unet(out_channels)
    x, t = inputs()
    y = model(x, t)
    assert y.shape == (2, out_channels, 16, 16) and torch.isfinite(y).all()
    assert not torch.allclose(model(x, torch.tensor([5, 5])), model(x, torch.tensor([600, 600])))


def test_torchscript_matches_eager():
    model = small_unet()
    x, t = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x, t), model(x, t), rtol=1e-5, atol=1e-5)
    assert model(x, t).abs().mean() > 1e-3


def test_channels_last_and_bf16_autocast():
    model = small_unet()
    x, t = inputs()
    ref = model(x, t)
    cl_model = small_unet().to(memory_format=torch.channels_last)
    out = cl_model(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t)
    assert low.dtype == torch.bfloat16
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_config_round_trip_and_parameter_count():
    model = small_unet()
    cfg = model.model_config()
    clone = UNetModel(**cfg)
    assert clone.model_config() == cfg
    assert clone.count_parameters() == sum(p.numel() for p in model.parameters()) == model.count_parameters()
    assert [n for n, _ in clone.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_gradients_reach_every_parameter():
    model = small_unet()
    x, t = inputs()
    model(x, t).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_presets_and_bad_sizes():
    cfg = preset_config("tiny", 32, learn_sigma=False)
    assert cfg["out_channels"] == 1 and UNetModel(**cfg)(torch.zeros(1, 1, 32, 32), torch.tensor([1])).shape == (1, 1, 32, 32)
    assert attention_factors(256, (32, 16, 8)) == (8, 16, 32)
    with pytest.raises(InputError, match="'huge'"):
        preset_config("huge", 64)
    with pytest.raises(InputError, match="image size 18"):
        UNetModel(image_size=18, model_channels=16, channel_mult=(1, 2, 2), attention_resolutions=())
    with pytest.raises(InputError, match="out_channels"):
        UNetModel(image_size=16, model_channels=16, out_channels=3, channel_mult=(1, 2))

"""SDEdit start: begin the reverse chain at start_step from the anatomy reference noised to that step."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mcfast.diffusion.gaussian import create_diffusion
from mcfast.diffusion.samplers import sample, sdedit_start, start_index
from mcfast.errors import InputError
from mcfast.synthesis.recipe import recipe_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def toy_model(x, t):
    return torch.cat([0.3 * x + 1e-4 * t.view(-1, 1, 1, 1).float(), torch.tanh(x)], 1)


def test_start_index_maps_the_1000_step_scale_to_the_respaced_chain():
    d = create_diffusion(1000, "cosine", respacing="50")
    assert start_index(d, None) == start_index(d, 1000) == 49
    i = start_index(d, 500)
    assert int(d.timestep_map[i]) <= 500 < int(d.timestep_map[i + 1])
    with pytest.raises(InputError, match="start_step must be >= 1"):
        start_index(d, 0)


def test_start_step_T_is_exactly_ordinary_sampling():
    d = create_diffusion(1000, "cosine", respacing="10")
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = torch.zeros(2, 1, 8, 8)
    x, first = sdedit_start(d, ref, noise, 1000)
    assert first == 9 and torch.equal(x, noise)
    plain = sample(toy_model, d, noise.shape, noise=noise, generator=torch.Generator().manual_seed(2), progress=False)
    started = sample(toy_model, d, noise.shape, noise=x, start_at=first,
                     generator=torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(plain, started)


def test_x_at_start_step_has_the_q_marginal():
    d = create_diffusion(1000, "cosine", respacing="50")
    ref = torch.linspace(-1, 1, 16).view(1, 1, 4, 4).expand(4000, 1, 4, 4)
    noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    x, i = sdedit_start(d, ref, noise, 400)
    abar = float(d.alphas_cumprod[i])
    assert 0.2 < abar < 0.9
    mean, std = x.mean(0), x.std(0)
    assert torch.allclose(mean, abar ** 0.5 * ref[0], atol=0.06)
    assert torch.allclose(std, torch.full_like(std, (1 - abar) ** 0.5), atol=0.04)


def test_sampling_from_a_start_index_runs_only_the_remaining_steps():
    d = create_diffusion(1000, "cosine", respacing="20")
    calls = []

    def counting(x, t):
        calls.append(int(t[0]))
        return toy_model(x, t)
    i = start_index(d, 300)
    sample(counting, d, (1, 1, 8, 8), noise=torch.zeros(1, 1, 8, 8), start_at=i, progress=False,
           generator=torch.Generator().manual_seed(0))
    assert len(calls) == i + 1 and max(calls) <= 300
    with pytest.raises(InputError, match="outside the chain"):
        sample(toy_model, d, (1, 1, 8, 8), start_at=20, progress=False)


def test_recipe_start_step_is_checked():
    with pytest.raises(InputError, match="sampler.start_step = 0"):
        recipe_from_dict({"sampler": {"start_step": 0}})
    assert recipe_from_dict({"sampler": {"start_step": 400}}).sampler.start_step == 400


def test_pipeline_sdedit_start_at_a_larger_size_than_trained(tmp_path):
    """A fully convolutional run trained at 16² synthesizes 64² items from a start step, deterministically,
    with fewer network calls; the anatomy shows through the start."""
    from mcfast.models.unet import UNetModel, preset_config
    from mcfast.synthesis.pipeline import synthesize
    from mcfast.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = dict(preset_config("crop", 16), model_channels=8, channel_mult=(1, 2), num_res_blocks=1)
    model = UNetModel(**cfg)
    state = model.state_dict()
    run = tmp_path / "run"
    save_checkpoint(run, model_state=state, ema_state=state, optimizer_state=torch.optim.AdamW(
        model.parameters()).state_dict(), config={
        "model": model.model_config(), "step": 0, "data": {"modality": "ct", "image_size": 32},
        "diffusion": {"T": 1000, "schedule": "cosine", "model_var_type": "learned_range", "loss_type": "hybrid"}})
    recipe = {"recipe": {"modality": "ct", "image_size": 64, "seed": 3},
              "sampler": {"steps": "10", "start_step": 500, "batch_size": 2, "backend": "reference"},
              "anatomy": {"source": "phantom", "factor": 8, "stop_step": 100},
              "pathology": [{"source": "synthetic", "count": [1, 1], "size": [8, 10]}],
              "output": {"npy": True, "png": False, "dicom": False, "seg": False}}
    for name in ("a", "b"):
        synthesize(run, recipe_from_dict(recipe), 2, tmp_path / name, progress=False)
    a = np.load(tmp_path / "a" / "000001" / "image.npy")
    assert a.shape == (64, 64) and np.array_equal(a, np.load(tmp_path / "b" / "000001" / "image.npy"))
    meta = json.loads((tmp_path / "a" / "000001" / "meta.json").read_text())
    assert json.dumps(meta).count('"network_calls": 5') == 1

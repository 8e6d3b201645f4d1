"""The companded diffusion space (mcfast.diffusion.companding): the map itself, training in it, sampling
through it (references encoded, images decoded), and the places that refuse it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mcfast.diffusion.companding import get_companding
from mcfast.diffusion.gaussian import create_diffusion
from mcfast.errors import InputError
from mcfast.io.windows import HU_MAX, HU_MIN, hu_to_model, model_to_hu

pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(argv):
    from mcfast.cli import main
    return main([str(a) for a in argv])


def test_ct_asinh_is_a_monotone_map_of_the_range_onto_itself_and_decode_inverts_it():
    c = get_companding("ct_asinh")
    hu = torch.linspace(HU_MIN, HU_MAX, 40961, dtype=torch.float64)
    z = c.encode(hu_to_model(hu))
    assert float(z[0]) == pytest.approx(-1.0, abs=1e-9) and float(z[-1]) == pytest.approx(1.0, abs=1e-9)
    assert bool((z[1:] > z[:-1]).all())
    assert float((model_to_hu(c.decode(z)) - hu).abs().max()) < 1e-6
    assert float(c.decode(torch.tensor([-3.0, 3.0]))[0]) == -1.0  # out of range: clipped, as model_to_hu clips


@pytest.mark.parametrize("hu, gain", [(-850.0, 1.04), (40.0, 2.53), (1000.0, 0.73), (2000.0, 0.39)])
def test_ct_asinh_stretches_soft_tissue_and_keeps_the_lung_as_its_docstring_says(hu, gain):
    c = get_companding("ct_asinh")
    pair = hu_to_model(torch.tensor([hu - 0.5, hu + 0.5], dtype=torch.float64))
    z = c.encode(pair)
    linear_slope = float(pair[1] - pair[0])
    assert float(z[1] - z[0]) / linear_slope == pytest.approx(gain, abs=0.01)


def test_linear_is_the_identity_and_unknown_names_are_refused():
    x = torch.linspace(-1, 1, 11)
    linear = get_companding(None)
    assert linear.name == "linear" and linear.encode(x) is x and linear.decode(x) is x
    with pytest.raises(InputError, match="unknown companding 'log'"):
        get_companding("log")
    assert create_diffusion().companding.name == "linear"
    assert create_diffusion(respacing="10", companding="ct_asinh").companding.name == "ct_asinh"


def test_training_runs_in_the_companded_space_and_records_it(tmp_path, capsys, monkeypatch):
    from mcfast.diffusion.gaussian import GaussianDiffusion
    from mcfast.train.checkpoint import read_config

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 500, (2, 16, 16))
    for k in range(2):
        np.save(data / f"im{k}.npy", hu_to_model(hu[k]).astype(np.float32))
    seen = []
    original = GaussianDiffusion.training_losses

    def spy(self, model_fn, x0, t, **kw):
        seen.append(x0.detach().clone())
        return original(self, model_fn, x0, t, **kw)

    monkeypatch.setattr(GaussianDiffusion, "training_losses", spy)
    common = ["--preset", "crop", "--model-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1",
              "--diffusion-steps", "20", "--no-progress", "--sample-every", "0", "--batch-size", "2",
              "--crop", "16", "--log-every", "1"]
    out = tmp_path / "run"
    assert _cli(["train", "--data", data, "--out", out, "--modality", "ct", "--companding", "ct_asinh",
                 "--max-steps", 1, "--save-every", 1, *common]) == 0
    config = read_config(out)
    assert config["diffusion"]["companding"] == "ct_asinh"
    # What the chain was trained on is the encoded crops: every value is one of the encoded image values.
    encoded = get_companding("ct_asinh").encode(torch.from_numpy(hu_to_model(hu).astype(np.float32)))
    assert seen and np.isin(seen[0].numpy().round(5), encoded.numpy().round(5)).all()
    assert not np.isin(seen[0].numpy().round(5), hu_to_model(hu).astype(np.float32).round(5)).all()
    capsys.readouterr()
    # A resumed run keeps its space; a mammography run cannot take a HU map.
    assert _cli(["train", "--out", out, "--resume", "--companding", "linear", "--max-steps", 2]) == 2
    assert "a resumed run keeps it" in capsys.readouterr().err
    assert _cli(["train", "--data", data, "--out", tmp_path / "mg", "--modality", "mg", "--companding", "ct_asinh",
                 "--max-steps", 1, *common]) == 2
    assert "needs --modality ct" in capsys.readouterr().err
    # A linear run written before the option existed has no key: --companding linear keeps it that way.
    lin = tmp_path / "lin"
    assert _cli(["train", "--data", data, "--out", lin, "--modality", "ct", "--companding", "linear",
                 "--max-steps", 1, "--save-every", 1, *common]) == 0
    assert "companding" not in read_config(lin)["diffusion"]


def _companded_tiny_run(run):
    """tests/synthesis_helpers' untrained tiny CT run, its config naming the ct_asinh space."""
    from synthesis_helpers import make_tiny_run

    from mcfast.train.checkpoint import checkpoint_dir

    make_tiny_run(run, image_size=32)
    path = checkpoint_dir(run) / "config.json"
    config = json.loads(path.read_text())
    config["diffusion"]["companding"] = "ct_asinh"
    path.write_text(json.dumps(config))
    return run


def test_sampling_encodes_the_references_and_decodes_the_image(tmp_path):
    """An untrained tiny run predicts ε = 0, so a chain started at t = 20 from the noised anatomy ends near
    that anatomy in the space it runs in: decoded, the image is the reference slice again. Without the
    decode it would be the encoded slice, hundreds of HU away in soft tissue."""
    from mcfast.api import Synthesizer
    from mcfast.synthesis.plan import plan_item
    from mcfast.synthesis.recipe import recipe_from_dict

    run = _companded_tiny_run(tmp_path / "run")
    recipe = recipe_from_dict({"recipe": {"modality": "ct", "image_size": 32, "seed": 1},
                               "sampler": {"steps": "50", "start_step": 20, "backend": "reference"},
                               "anatomy": {"source": "phantom", "factor": 4, "stop_step": 0},
                               "pathology": [],
                               "output": {"npy": True, "png": False, "dicom": False, "seg": False}})
    image_hu = Synthesizer.from_pretrained(run, recipe=recipe).generate(1)[0].image
    reference = plan_item(recipe, 0).conditions[0].ref[0].numpy()
    body = model_to_hu(reference) > -500
    error_hu = np.abs(image_hu - model_to_hu(reference))[body]
    assert np.median(error_hu) < 40
    encoded = get_companding("ct_asinh").encode(torch.from_numpy(reference)).numpy()
    assert np.median(np.abs(model_to_hu(encoded) - model_to_hu(reference))[body]) > 300


def test_export_refuses_a_companded_run(tmp_path):
    from mcfast.errors import CheckpointError
    from mcfast.export.build import sampler_from_run

    run = _companded_tiny_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match="companded space"):
        sampler_from_run(run, steps=5)

import json

import pytest
import torch

import mcfast.train.checkpoint as ckpt
from mcfast.errors import CheckpointError
from mcfast.train.checkpoint import flatten_optimizer_state, load_model, unflatten_optimizer_state
from mcfast.train.data import ImageFolderDataset
from test_train import make_trainer, write_images


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def run(tmp_path):
    data = ImageFolderDataset(write_images(tmp_path / "data"))
    trainer = make_trainer(tmp_path, data, max_steps=2, save_every=2)
    trainer.train()
    return tmp_path / "run", trainer


def test_load_model_returns_ema_or_raw_weights_without_unpickling(run, monkeypatch):
    run_dir, trainer = run
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must not be used"))
    model, diffusion_kwargs, config = load_model(run_dir, ema=True)
    assert config["step"] == 2 and diffusion_kwargs == trainer.diffusion_kwargs
    for a, b in zip(model.state_dict().values(), trainer.ema_model.state_dict().values()):
        assert torch.equal(a, b)
    raw, _, _ = load_model(run_dir, ema=False)
    for a, b in zip(raw.state_dict().values(), trainer.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not model.training
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), raw.state_dict().values()))


def test_optimizer_state_round_trip():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.01, betas=(0.8, 0.9))
    p.grad = torch.ones(3)
    opt.step()
    tensors, groups = flatten_optimizer_state(opt.state_dict())
    json.dumps(groups)
    restored = unflatten_optimizer_state(tensors, groups)
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.5)
    opt2.load_state_dict(restored)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.9)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_corrupt_weights_file_is_named(run):
    run_dir, _ = run
    (run_dir / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt"):
        load_model(run_dir)


def test_missing_or_corrupt_config(run):
    run_dir, _ = run
    (run_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json.*corrupt"):
        load_model(run_dir)
    with pytest.raises(CheckpointError, match="config.json.*missing"):
        load_model(run_dir / "nowhere")


def test_mismatched_files_and_architecture(run):
    run_dir, _ = run
    config = json.loads((run_dir / "config.json").read_text())
    stale = dict(config, step=1)
    (run_dir / "config.json").write_text(json.dumps(stale))
    with pytest.raises(CheckpointError, match="mismatched"):
        load_model(run_dir)
    other = dict(config, model=dict(config["model"], model_channels=8))
    (run_dir / "config.json").write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match="model.safetensors.*shape|model.safetensors.*match"):
        load_model(run_dir)


def test_failed_save_keeps_previous_checkpoint(run, monkeypatch):
    run_dir, trainer = run
    before = {name: (run_dir / name).read_bytes() for name in ("model.safetensors", "optimizer.safetensors",
                                                                "config.json")}

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError):
        trainer.save()
    after = {name: (run_dir / name).read_bytes() for name in before}
    assert after == before
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []
    load_model(run_dir)


def test_resume_rejects_other_architecture(tmp_path, run):
    run_dir, trainer = run
    from mcfast.models.unet import UNetModel
    from mcfast.train.trainer import Trainer
    other = UNetModel(image_size=16, model_channels=8, out_channels=2, num_res_blocks=1,
                      attention_resolutions=(), channel_mult=(1, 2), num_heads=2)
    with pytest.raises(CheckpointError, match="model settings"):
        Trainer(other, trainer.diffusion, trainer.dataset, run_dir, trainer.config,
                diffusion_kwargs=trainer.diffusion_kwargs, resume=True, progress=False, device="cpu")

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
    (ckpt.checkpoint_dir(run_dir) / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors.*corrupt"):
        load_model(run_dir)


def test_missing_or_corrupt_config(run):
    run_dir, _ = run
    (ckpt.checkpoint_dir(run_dir) / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json.*corrupt"):
        load_model(run_dir)
    with pytest.raises(CheckpointError, match="config.json.*missing"):
        load_model(run_dir / "nowhere")


def test_mismatched_files_and_architecture(run):
    run_dir, _ = run
    config = json.loads((ckpt.checkpoint_dir(run_dir) / "config.json").read_text())
    stale = dict(config, step=1)
    (ckpt.checkpoint_dir(run_dir) / "config.json").write_text(json.dumps(stale))
    with pytest.raises(CheckpointError, match="mismatched"):
        load_model(run_dir)
    other = dict(config, model=dict(config["model"], model_channels=8))
    (ckpt.checkpoint_dir(run_dir) / "config.json").write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match="differ from those saved with the weights"):
        load_model(run_dir)


def test_failed_save_keeps_previous_checkpoint(run, monkeypatch):
    run_dir, trainer = run
    folder = ckpt.checkpoint_dir(run_dir)
    before = {name: (folder / name).read_bytes() for name in ("model.safetensors", "optimizer.safetensors",
                                                              "config.json")}

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError):
        trainer.save()
    assert ckpt.checkpoint_dir(run_dir) == folder
    after = {name: (folder / name).read_bytes() for name in before}
    assert after == before
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", folder.name]
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


class _Killed(BaseException):
    """Stands for SIGKILL: not an Exception, and the save's own clean-up is disabled while it flies."""


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5])
def test_kill_at_each_point_of_a_save_leaves_a_resumable_run(run, monkeypatch, kill_at):
    # _fsync runs after each of the 3 files, after the rename of the step folder and after the pointer.
    run_dir, trainer = run
    old_step = ckpt.read_config(run_dir)["step"]
    calls = []

    def fsync(path):
        calls.append(path)
        if len(calls) == kill_at:
            raise _Killed()

    trainer.step += 1
    monkeypatch.setattr(ckpt, "_fsync", fsync)
    monkeypatch.setattr(ckpt.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(_Killed):
        trainer.save()
    monkeypatch.undo()
    published = ckpt.read_config(run_dir)["step"]
    assert published == (old_step + 1 if kill_at == 5 else old_step)
    ckpt.load_checkpoint(run_dir)  # consistent files of one step
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir()]
    assert len(leftovers) >= 3  # latest, the published folder and what the kill left
    resumed = make_trainer(run_dir.parent, trainer.dataset, resume=True, max_steps=published + 1)
    assert resumed.step == published
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == sorted(
        ["latest", ckpt.checkpoint_dir(run_dir).name])
    resumed.train()
    assert ckpt.read_config(run_dir)["step"] == published + 1


def test_random_sigkills_during_saves_never_break_resume(tmp_path):
    """Kill a training process (checkpoint every step) at random moments, then resume, several times."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    data = write_images(tmp_path / "data")
    run_dir = tmp_path / "run"
    base = [sys.executable, "-m", "mcfast", "train", "--data", str(data), "--out", str(run_dir), "--preset", "tiny",
            "--max-steps", "100000", "--save-every", "1", "--sample-every", "0", "--batch-size", "2",
            "--log-every", "1", "--no-progress", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rng = random.Random(0)
    steps = []
    for _ in range(4):
        argv = base + (["--resume"] if ckpt.has_checkpoint(run_dir) else [])
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "latest").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        start = ckpt.read_config(run_dir)["step"]
        while ckpt.read_config(run_dir)["step"] < start + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        config, _, _ = ckpt.load_checkpoint(run_dir)  # always one complete, consistent checkpoint
        steps.append(config["step"])
    assert steps == sorted(steps) and steps[-1] > steps[0]
    done = subprocess.run(base[:6] + ["--out", str(run_dir), "--resume", "--max-steps", str(steps[-1] + 1),
                                      "--no-progress", "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert ckpt.read_config(run_dir)["step"] == steps[-1] + 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest", f"step_{steps[-1] + 1:07d}"]
    logged = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps[-1] + 2))  # lines past a checkpoint were dropped on resume


def test_non_finite_weights_are_refused(run):
    from safetensors.torch import load_file, save_file

    run_dir, _ = run
    path = ckpt.weights_file(run_dir)
    tensors = load_file(str(path))
    name = next(k for k in tensors if k.startswith("ema.") and tensors[k].is_floating_point())
    tensors[name][0] = float("nan")
    with open(path, "rb") as f:
        from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=f"{name}.*NaN"):
        load_model(run_dir)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model"].update(model_channels="16"), "differ from those saved"),
    (lambda c: c["model"].update(image_size=32), "differ from those saved"),
    (lambda c: c.update(step="2"), "'step' must be a whole number"),
])
def test_edited_config_is_refused_with_one_line(run, edit, message):
    run_dir, _ = run
    path = ckpt.checkpoint_dir(run_dir) / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_model(run_dir)


@pytest.mark.parametrize("settings, message", [
    (dict(image_size=16, model_channels="16"), "model_channels' = '16' has the wrong kind"),
    (dict(image_size=16.0), "image_size' = 16.0 has the wrong kind"),
    (dict(image_size=16, channel_mult=[1, "2"]), "channel_mult"),
    (dict(image_size=16, colour=True), "unknown model setting 'colour'"),
    (dict(image_size=15, channel_mult=[1, 2]), "not divisible"),
])
def test_model_settings_without_saved_copy_are_checked_by_kind(settings, message):
    # Shipped models and runs from before the weights carried their settings rely on this check.
    with pytest.raises(CheckpointError, match=f"x/config.json: .*{message}"):
        ckpt.build_model(settings, "x/config.json")

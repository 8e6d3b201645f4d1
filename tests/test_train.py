import json

import numpy as np
import pytest
import torch
from PIL import Image

from mcfast.diffusion.gaussian import create_diffusion
from mcfast.errors import InputError
from mcfast.models.unet import UNetModel
from mcfast.train.data import ImageFolderDataset, load_image
from mcfast.train.trainer import TrainConfig, Trainer, global_batch_indices
from mcfast.train.checkpoint import checkpoint_dir, weights_file


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(out_channels=2, size=16):
    torch.manual_seed(0)
    return UNetModel(image_size=size, model_channels=16, out_channels=out_channels, num_res_blocks=1,
                     attention_resolutions=(2,), channel_mult=(1, 2), num_heads=2)


def write_images(folder, n=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        cx, cy = rng.uniform(4, size - 4, 2)
        img = (np.hypot(xx - cx, yy - cy) < size / 4) * 200 + 30
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img{k}.png")
    return folder


def make_trainer(tmp_path, data, out="run", resume=False, **cfg):
    dkw = dict(T=50, schedule="cosine", model_var_type="learned_range", loss_type="hybrid")
    config = TrainConfig(**{**dict(batch_size=2, lr=1e-3, max_steps=6, save_every=3, sample_every=0, log_every=1,
                                   seed=3, timestep_sampler="loss-second-moment", importance_history=1), **cfg})
    return Trainer(tiny_model(), create_diffusion(**dkw), data, tmp_path / out, config, diffusion_kwargs=dkw,
                   resume=resume, progress=False, device="cpu")


def test_png_and_npy_loading(tmp_path):
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(tmp_path / "a16.png")
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).save(tmp_path / "a8.png")
    np.save(tmp_path / "hu.npy", np.array([[-1024.0, 3071.0]], dtype=np.float32))
    np.testing.assert_allclose(load_image(tmp_path / "a16.png"), [[-1, 1]])
    np.testing.assert_allclose(load_image(tmp_path / "a8.png"), [[-1, 1]])
    np.testing.assert_allclose(load_image(tmp_path / "hu.npy", (-1024, 3071)), [[-1, 1]])
    with pytest.raises(InputError, match="hu.npy.*--npy-range"):
        load_image(tmp_path / "hu.npy")


def test_dataset_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="no .png or .npy"):
        ImageFolderDataset((tmp_path / "empty").mkdir() or tmp_path / "empty")
    data = write_images(tmp_path / "d")
    (data / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="notes.txt"):
        ImageFolderDataset(data)
    (data / "notes.txt").unlink()
    (data / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="broken.png"):
        ImageFolderDataset(data)
    (data / "broken.png").unlink()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(data / "big.png")
    with pytest.raises(InputError, match="big.png.*one size"):
        ImageFolderDataset(data)
    (data / "big.png").unlink()
    ds = ImageFolderDataset(data, image_size=8)
    assert len(ds) == 4 and ds[0].shape == (1, 8, 8) and ds[0].min() >= -1 and ds[0].max() <= 1


def test_data_order_is_a_function_of_seed_and_step():
    a = [global_batch_indices(5, 3, seed=1, step=s) for s in range(5)]
    flat = sum(a, [])
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert a == [global_batch_indices(5, 3, seed=1, step=s) for s in range(5)]


def test_resume_reproduces_uninterrupted_loss_curve(tmp_path):
    torch.set_num_threads(1)
    data = ImageFolderDataset(write_images(tmp_path / "data"))
    straight = make_trainer(tmp_path, data, out="straight").train()
    first = make_trainer(tmp_path, data, out="split", max_steps=3).train()
    second = make_trainer(tmp_path, data, out="split", resume=True).train()
    assert [r["step"] for r in first + second] == list(range(1, 7))
    assert [r["loss"] for r in first + second] == [r["loss"] for r in straight]
    assert len({r["loss"] for r in straight}) == 6
    logged = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logged] == [r["loss"] for r in straight]


def test_existing_run_is_not_overwritten(tmp_path):
    data = ImageFolderDataset(write_images(tmp_path / "data"))
    make_trainer(tmp_path, data, max_steps=1, save_every=1).train()
    before = weights_file(tmp_path / "run").read_bytes()
    with pytest.raises(InputError, match="already holds a run"):
        make_trainer(tmp_path, data, max_steps=2)
    assert weights_file(tmp_path / "run").read_bytes() == before


def test_sample_grid_written(tmp_path):
    data = ImageFolderDataset(write_images(tmp_path / "data"))
    trainer = make_trainer(tmp_path, data, max_steps=1, sample_every=1, sample_n=3, sample_steps=4)
    trainer.train()
    grid = np.asarray(Image.open(tmp_path / "run" / "samples" / "step_0000001.png"))
    assert grid.shape == (32, 32)


def test_tiny_model_overfits_four_images(tmp_path):
    torch.set_num_threads(1)
    data = ImageFolderDataset(write_images(tmp_path / "data"))
    dkw = dict(T=100, schedule="linear", model_var_type="fixed_small", loss_type="simple")
    config = TrainConfig(batch_size=4, lr=3e-3, max_steps=300, save_every=10_000, sample_every=0, log_every=1,
                         seed=0, grad_clip=1.0)
    trainer = Trainer(tiny_model(out_channels=1), create_diffusion(**dkw), data, tmp_path / "run", config,
                      diffusion_kwargs=dkw, progress=False, device="cpu")
    losses = [r["loss"] for r in trainer.train()]
    first, last = np.mean(losses[:10]), np.mean(losses[-30:])
    assert first / last >= 10, (first, last)


def _cli(argv):
    import argparse

    from mcfast.commands import sample as sample_cmd
    from mcfast.commands import train as train_cmd
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    train_cmd.register(sub)
    sample_cmd.register(sub)
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_cli_train_resume_and_deterministic_sample(tmp_path):
    torch.set_num_threads(1)
    data = write_images(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--model-channels", "16", "--channel-mult", "1,2", "--num-res-blocks", "1",
              "--attention-resolutions", "8", "--num-heads", "2", "--diffusion-steps", "50", "--no-progress"]
    assert _cli(["train", "--data", data, "--out", run, "--max-steps", 2, "--save-every", 1, "--batch-size", 2,
                 "--sample-every", 0, "--log-every", 1] + common) == 0
    config = json.loads((checkpoint_dir(run) / "config.json").read_text())
    assert config["step"] == 2 and config["model"]["attention_resolutions"] == [2]
    with pytest.raises(InputError, match="already holds a run"):
        _cli(["train", "--data", data, "--out", run, "--max-steps", 3] + common)
    assert _cli(["train", "--out", run, "--resume", "--max-steps", 3, "--no-progress"]) == 0
    assert json.loads((checkpoint_dir(run) / "config.json").read_text())["step"] == 3
    for name in ("a", "b"):
        assert _cli(["sample", "--ckpt", run, "--out", tmp_path / name, "--n", 3, "--steps", 5, "--batch-size", 2,
                     "--sampler", "ddim", "--seed", 7, "--no-progress"]) == 0
    a, b = np.load(tmp_path / "a" / "samples.npy"), np.load(tmp_path / "b" / "samples.npy")
    assert a.shape == (3, 1, 16, 16) and np.array_equal(a, b)
    from mcfast.models.inference import fastest_precision  # the default "auto", recorded as what it resolved to

    assert json.loads((tmp_path / "a" / "samples.json").read_text())["precision"] == fastest_precision("cpu")
    # Image k depends on the seed and k only, not on the batch it was sampled in.
    assert _cli(["sample", "--ckpt", run, "--out", tmp_path / "c", "--n", 3, "--steps", 5, "--batch-size", 3,
                 "--sampler", "ddim", "--eta", 0.5, "--seed", 7, "--no-progress"]) == 0
    assert _cli(["sample", "--ckpt", run, "--out", tmp_path / "d", "--n", 3, "--steps", 5, "--batch-size", 1,
                 "--sampler", "ddim", "--eta", 0.5, "--seed", 7, "--no-progress"]) == 0
    c, d = np.load(tmp_path / "c" / "samples.npy"), np.load(tmp_path / "d" / "samples.npy")
    assert np.abs(c - d).max() < 1e-3 and np.abs(c[0] - c[1]).max() > 1e-2
    assert np.asarray(Image.open(tmp_path / "a" / "sample_0002.png")).shape == (16, 16)
    with pytest.raises(InputError, match="already holds samples"):
        _cli(["sample", "--ckpt", run, "--out", tmp_path / "a", "--n", 1, "--steps", 5])


def test_bf16_autocast_training_on_cpu_and_fp16_rejected(tmp_path):
    data = ImageFolderDataset(write_images(tmp_path / "data"))
    trainer = make_trainer(tmp_path, data, max_steps=2, precision="bf16")
    assert trainer.precision == "bf16"
    records = trainer.train()
    assert all(np.isfinite(r["loss"]) for r in records)
    with pytest.raises(InputError, match="fp16"):
        make_trainer(tmp_path, data, out="other", precision="fp16")

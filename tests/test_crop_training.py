"""Crop training of a fully convolutional U-Net, sampling at a larger size, --init warm starts, the
visited-timestep sampler and Min-SNR-γ weighting."""
import json

import numpy as np
import pytest
import torch

from mcfast.diffusion.gaussian import create_diffusion
from mcfast.errors import InputError
from mcfast.models.unet import UNetModel, check_sampling_size, is_fully_convolutional, preset_config
from mcfast.train.crops import apply_crops, draw_crop_boxes, foreground_fraction, pick_foreground_boxes
from mcfast.train.timesteps import create_timestep_sampler
from mcfast.train.checkpoint import checkpoint_dir, weights_file

pytestmark = pytest.mark.usefixtures("one_thread")

CONV = ["--preset", "crop", "--model-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1",
        "--diffusion-steps", "20", "--no-progress", "--sample-every", "0", "--log-every", "1"]


def write_npy_images(folder, n=3, size=32, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        np.save(folder / f"im{k}.npy", rng.uniform(-1, 1, (size, size)).astype(np.float32))
    return folder


def _cli(argv):
    from mcfast.cli import main
    return main([str(a) for a in argv])


def test_crop_boxes_lie_inside_and_apply_cuts_the_right_pixels():
    g = torch.Generator().manual_seed(0)
    boxes = draw_crop_boxes(64, (20, 30), 8, g)
    assert boxes[:, 0].min() >= 0 and boxes[:, 0].max() <= 12 and boxes[:, 1].max() <= 22
    assert set(boxes[:, 2].tolist()) == {0, 1}
    images = torch.arange(2 * 20 * 30, dtype=torch.float32).reshape(2, 1, 20, 30)
    b = torch.tensor([[3, 5, 0], [1, 2, 1]])
    crops = apply_crops(images, b, 8)
    assert torch.equal(crops[0, 0], images[0, 0, 3:11, 5:13])
    assert torch.equal(crops[1, 0], images[1, 0, 1:9, 2:10].flip(-1))
    with pytest.raises(InputError, match="crop size 40"):
        draw_crop_boxes(1, (20, 30), 40, g)


def test_no_flip_and_candidate_boxes_keep_the_default_stream():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(draw_crop_boxes(16, (40, 40), 8, g1), draw_crop_boxes(16, (40, 40), 8, g2, candidates=1))
    unflipped = draw_crop_boxes(64, (40, 40), 8, torch.Generator().manual_seed(3), flip=False)
    assert unflipped[:, 2].eq(0).all()
    cands = draw_crop_boxes(5, (40, 40), 8, torch.Generator().manual_seed(3), candidates=4)
    assert cands.shape == (5, 4, 3)


def test_foreground_crops_avoid_the_padding_of_a_framed_image():
    # Left quarter "breast" (above the minimum), the rest padding at exactly the minimum.
    images = torch.full((6, 1, 64, 64), -1.0)
    images[:, :, :, :16] = torch.rand(6, 1, 64, 16) * 0.5
    g = torch.Generator().manual_seed(0)
    cands = draw_crop_boxes(6, (64, 64), 16, g, candidates=8)
    picked = pick_foreground_boxes(images, cands, 16, 0.5)
    assert picked.shape == (6, 3)
    fractions = [foreground_fraction(img, t, l, 16) for img, (t, l, _) in zip(images, picked.tolist())]
    # 8 uniform draws fail to reach half foreground with probability (1 - P(left <= 8 of 49))^8 ~ 0.2 per
    # item; the pick is then the candidate with the most foreground, never one with less than another's.
    for img, cand, frac in zip(images, cands.tolist(), fractions):
        best = max(foreground_fraction(img, t, l, 16) for t, l, _ in cand)
        assert frac >= 0.5 or frac == best
    assert np.mean(fractions) > 0.4  # uniform crops: ~0.14 foreground on average


def test_crop_foreground_option_is_validated_and_recorded(tmp_path):
    data = write_npy_images(tmp_path / "data", size=32)
    assert _cli(["train", "--data", data, "--out", tmp_path / "bad", "--crop", 16, "--max-steps", 1,
                 "--crop-foreground", 1.5, *CONV]) == 2
    assert _cli(["train", "--data", data, "--out", tmp_path / "ok", "--crop", 16, "--max-steps", 1,
                 "--batch-size", 2, "--crop-foreground", 0.3, "--no-crop-flip", *CONV]) == 0
    train = json.loads((checkpoint_dir(tmp_path / "ok") / "config.json").read_text())["train"]
    assert train["crop_foreground"] == 0.3 and train["crop_flip"] is False


def test_crop_preset_is_fully_convolutional_and_samples_any_size():
    cfg = preset_config("crop", 64)
    assert is_fully_convolutional(cfg)
    model = UNetModel(**cfg)
    assert 3e6 < model.count_parameters() < 8e6
    assert not any(type(m).__name__ == "AttentionBlock" for m in model.modules())
    check_sampling_size(cfg, 512, 64)
    with pytest.raises(InputError, match="multiple of 8"):
        check_sampling_size(cfg, 100, 64)
    attn = preset_config("tiny", 64)
    check_sampling_size(attn, 64, 64)
    with pytest.raises(InputError, match="self-attention"):
        check_sampling_size(attn, 128, 64)


def test_fully_convolutional_output_is_local():
    """A change in one corner moves that corner's output and barely moves the far corner: without attention
    only GroupNorm's per-image statistics carry information across the image."""
    cfg = dict(preset_config("crop", 16), model_channels=8, channel_mult=(1, 2), num_res_blocks=1)
    torch.manual_seed(0)
    model = UNetModel(**cfg).eval()
    for p in model.parameters():  # zero-initialised output convs would hide any dependence
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 1, 64, 64)
    y = x.clone()
    y[..., :8, :8] += 1.0
    t = torch.tensor([10])
    with torch.no_grad():
        a, b = model(x, t), model(y, t)
    near = (a - b)[..., :8, :8].abs().mean()
    far = (a - b)[..., 40:, 40:].abs().mean()
    assert near > 1e-2 and far < 0.05 * near, (near, far)


def test_crop_training_cli_samples_larger_and_is_deterministic(tmp_path):
    data = write_npy_images(tmp_path / "data", size=32)
    for name in ("a", "b"):
        assert _cli(["train", "--data", data, "--out", tmp_path / name, "--crop", 16, "--max-steps", 3,
                     "--batch-size", 2, "--save-every", 3, *CONV]) == 0
    ca = json.loads((checkpoint_dir(tmp_path / "a") / "config.json").read_text())
    assert ca["model"]["image_size"] == 16 and ca["train"]["crop_size"] == 16 and ca["data"]["image_size"] == 32
    def losses(run):
        return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # same seed: same init, crops and losses
    assert _cli(["sample", "--ckpt", tmp_path / "a", "--out", tmp_path / "s", "--n", 2, "--steps", 3,
                 "--size", 48, "--no-progress", "--precision", "fp32"]) == 0
    assert np.load(tmp_path / "s" / "samples.npy").shape == (2, 1, 48, 48)


def test_crop_resume_matches_uninterrupted(tmp_path):
    data = write_npy_images(tmp_path / "data", size=32)
    common = ["--data", data, "--crop", 16, "--batch-size", 2, "--save-every", 2, *CONV]
    assert _cli(["train", "--out", tmp_path / "full", "--max-steps", 4, *common]) == 0
    assert _cli(["train", "--out", tmp_path / "part", "--max-steps", 2, *common]) == 0
    assert _cli(["train", "--out", tmp_path / "part", "--resume", "--max-steps", 4, "--no-progress"]) == 0
    full = [json.loads(line)["loss"] for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    part = [json.loads(line)["loss"] for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert full == part


def test_init_warm_start_from_run_and_from_shipped_bf16_asset(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    data = write_npy_images(tmp_path / "data", size=32)
    assert _cli(["train", "--data", data, "--out", tmp_path / "first", "--crop", 16, "--max-steps", 2,
                 "--batch-size", 2, "--save-every", 2, *CONV]) == 0
    first = load_file(str(weights_file(tmp_path / "first")))
    # An asset folder holds only bf16 EMA weights and a config (what mcfast.demo.ship writes).
    asset = tmp_path / "asset"
    asset.mkdir()
    save_file({k: v.to(torch.bfloat16) for k, v in first.items() if k.startswith("ema.")},
              str(asset / "model.safetensors"), metadata={"step": "2", "format": "mcfast"})
    (asset / "config.json").write_text((checkpoint_dir(tmp_path / "first") / "config.json").read_text())
    for src in (tmp_path / "first", asset):
        out = tmp_path / f"warm_{src.name}"
        # --max-steps 0 writes nothing: train 1 step with lr 0 so the weights stay the init's
        assert _cli(["train", "--data", data, "--out", out, "--crop", 16, "--init", src, "--max-steps", 1,
                     "--lr", 0, "--batch-size", 2, "--save-every", 1, "--no-progress", "--sample-every", 0]) == 0
        warm = load_file(str(weights_file(out)))
        cfg = json.loads((checkpoint_dir(out) / "config.json").read_text())
        assert cfg["step"] == 1 and cfg["data"]["init"] == str(src)
        key = next(k for k in first if k.startswith("model.") and k.endswith("in_conv.weight"))
        expected = first[key.replace("model.", "ema.", 1)]
        if src == asset:
            expected = expected.to(torch.bfloat16).float()
        assert torch.equal(warm[key], expected)
    capsys.readouterr()
    assert _cli(["train", "--out", tmp_path / "first", "--resume", "--init", asset]) == 2
    assert "pick one" in capsys.readouterr().err
    assert _cli(["train", "--data", data, "--out", tmp_path / "bad", "--crop", 16, "--init", tmp_path / "data"]) == 2
    err = capsys.readouterr().err
    assert "config.json: missing" in err and len(err.strip().splitlines()) == 1


def test_visited_timestep_sampler_draws_only_respaced_steps():
    from mcfast.diffusion.schedule import space_timesteps

    sampler = create_timestep_sampler("visited:10", 1000)
    t, w = sampler.sample(500, torch.Generator().manual_seed(0))
    allowed = space_timesteps(1000, "10")
    assert set(t.tolist()) <= allowed and len(set(t.tolist())) == len(allowed)
    assert torch.equal(w, torch.ones(500))
    with pytest.raises(InputError, match="visited"):
        create_timestep_sampler("nope", 1000)


def test_min_snr_weighting_down_weights_low_noise_steps_only():
    d = create_diffusion(T=100, schedule="cosine", model_var_type="fixed_small", loss_type="simple")
    x0 = torch.zeros(2, 1, 4, 4)
    t = torch.tensor([1, 95])
    noise = torch.ones_like(x0)

    def model(x, tt):
        return torch.zeros_like(x)
    plain = d.training_losses(model, x0, t, noise=noise)
    snr = d.training_losses(model, x0, t, noise=noise, min_snr_gamma=5.0)
    s = d.snr(t)
    assert s[0] > 5 > s[1]
    assert torch.allclose(snr["loss"][0], plain["loss"][0] * 5.0 / s[0])
    assert torch.allclose(snr["loss"][1], plain["loss"][1])
    assert torch.equal(snr["mse"], plain["mse"])

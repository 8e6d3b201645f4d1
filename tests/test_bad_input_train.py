"""`mcfast train` on bad input: exit 2, one line naming the file or value, no traceback, nothing lost."""
import json

import numpy as np
import pytest
import torch

from mcfast.cli import main
from mcfast.train import checkpoint as ckpt
from test_train import write_images

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "tiny", "--sample-every", "0", "--batch-size", "2", "--no-progress", "--device", "cpu"]


def _one_line_error(capsys, argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture()
def data(tmp_path):
    return write_images(tmp_path / "data")


@pytest.mark.parametrize("extra, expected", [
    (["--lr", "-1"], "--lr -1.0: must be a number >= 0"),
    (["--lr", "nan"], "--lr nan"),
    (["--image-size", "0"], "--image-size 0"),
    (["--image-size", "200000"], "--image-size 200000"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--ema-rate", "1.5"], "--ema-rate 1.5"),
    (["--save-every", "0"], "--save-every 0"),
    (["--crop-foreground", "1.5"], "--crop-foreground 1.5"),
    (["--device", "cuda"], "--device cuda"),
    (["--device", "tpu:0"], "tpu:0"),
])
def test_bad_values_are_one_line(tmp_path, data, capsys, extra, expected):
    err = _one_line_error(capsys, ["train", "--data", data, "--out", tmp_path / "run", "--max-steps", 1, *TINY, *extra])
    assert expected in err
    assert not (tmp_path / "run").exists() or not ckpt.has_checkpoint(tmp_path / "run")


def test_out_is_a_file_or_under_a_file(tmp_path, data, capsys):
    (tmp_path / "file").write_text("keep me")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        err = _one_line_error(capsys, ["train", "--data", data, "--out", out, "--max-steps", 1, *TINY])
        assert "file" in err
    assert (tmp_path / "file").read_text() == "keep me"


def _trained(tmp_path, data, steps=2):
    run = tmp_path / "run"
    assert main([str(a) for a in ["train", "--data", data, "--out", run, "--max-steps", steps, "--save-every", 1,
                                  "--log-every", 1, *TINY]]) == 0
    return run


@pytest.mark.parametrize("edit, expected", [
    (lambda c: c["train"].update(lr="fast"), "lr = 'fast' should be float"),
    (lambda c: c["train"].update(batch_size=2.5), "batch_size = 2.5 should be int"),
    (lambda c: c["model"].update(attention_heads=4), "model settings differ from those saved"),
    (lambda c: c["model"].update(image_size=32), "differ from those saved"),
    (lambda c: c["data"].update(image_size="big"), "image_size 'big' is not a size"),
])
def test_edited_config_on_resume(tmp_path, data, capsys, edit, expected):
    run = _trained(tmp_path, data)
    path = ckpt.checkpoint_dir(run) / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    before = ckpt.weights_file(run).read_bytes()
    err = _one_line_error(capsys, ["train", "--out", run, "--resume", "--max-steps", 3, "--no-progress"])
    assert expected in err and "config.json" in err
    assert ckpt.weights_file(run).read_bytes() == before


def test_half_written_last_log_line_does_not_block_resume(tmp_path, data, capsys):
    run = _trained(tmp_path, data)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.9')  # a kill during the append
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "3", "--no-progress"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    # A broken line that is not the last is not a kill's trace: refused, naming the line.
    (run / "log.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    err = _one_line_error(capsys, ["train", "--out", run, "--resume", "--max-steps", 4, "--no-progress"])
    assert "log.jsonl: line 2" in err


def test_nan_data_with_npy_range_is_refused_naming_the_file(tmp_path, capsys):
    folder = tmp_path / "hu"
    folder.mkdir()
    for k in range(2):
        np.save(folder / f"s{k}.npy", np.full((16, 16), -500.0, np.float32))
    bad = np.full((16, 16), -500.0, np.float32)
    bad[3, 4] = np.nan
    np.save(folder / "s2.npy", bad)
    err = _one_line_error(capsys, ["train", "--data", folder, "--out", tmp_path / "run", "--npy-range=-1024,3071",
                                   "--max-steps", 4, "--save-every", 1, *TINY])
    assert "s2.npy" in err and "NaN" in err


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, data, capsys):
    run = _trained(tmp_path, data)
    before = ckpt.weights_file(run).read_bytes()
    err = _one_line_error(capsys, ["train", "--out", run, "--resume", "--max-steps", 6, "--lr", "1e30",
                                   "--grad-clip", "0", "--no-progress"])
    config, _, _ = ckpt.load_checkpoint(run)  # what is published stays finite and loadable
    assert f"step {config['step'] + 1}: loss is nan (non-finite)" in err, err
    assert f"the last checkpoint (step {config['step']})" in err


def test_same_seed_gives_identical_fresh_runs(tmp_path, data):
    for name in ("a", "b"):
        assert main([str(a) for a in ["train", "--data", data, "--out", tmp_path / name, "--max-steps", 1,
                                      "--preset", "small", "--dropout", "0.1", "--sample-every", "0",
                                      "--batch-size", "2", "--seed", "11", "--no-progress", "--device", "cpu"]]) == 0
    from safetensors.torch import load_file

    a, b = (load_file(str(ckpt.weights_file(tmp_path / name))) for name in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

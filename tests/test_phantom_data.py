"""`mcfast phantoms` writes training sets the trainer reads; shipping a run keeps only EMA weights."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mcfast.cli import main
from mcfast.train.data import ImageFolderDataset


@pytest.mark.parametrize("modality", ["ct", "mg"])
def test_phantom_dataset_feeds_the_trainer(tmp_path, modality, capsys):
    out = tmp_path / modality
    assert main(["phantoms", "--modality", modality, "--n", "3", "--size", "32", "--out", str(out),
                 "--no-progress"]) == 0
    assert "wrote 3" in capsys.readouterr().out
    files = sorted(out.glob("*.npy"))
    assert len(files) == 3
    x = np.load(files[0])
    assert x.shape == (32, 32) and x.min() >= -1 and x.max() <= 1 and x.std() > 0.05
    assert json.loads((out / "manifest.json").read_text())["modality"] == modality
    data = ImageFolderDataset(out)
    assert len(data) == 3 and tuple(data[0].shape) == (1, 32, 32)
    before = files[0].stat().st_mtime_ns
    main(["phantoms", "--modality", modality, "--n", "3", "--size", "32", "--out", str(out), "--no-progress"])
    assert files[0].stat().st_mtime_ns == before  # resumable: existing phantoms are kept


def test_ship_keeps_ema_weights_and_loads(tmp_path):
    from safetensors import safe_open

    from mcfast.demo.ship import ship
    from mcfast.train.checkpoint import load_model
    from synthesis_helpers import make_tiny_run

    run = make_tiny_run(tmp_path / "run", 32, "mg")
    dest = ship(run, tmp_path / "shipped")
    with safe_open(str(dest / "model.safetensors"), framework="pt") as f:
        assert all(k.startswith("ema.") for k in f.keys())
    model, _, config = load_model(dest)
    assert config["data"]["modality"] == "mg" and "phantom" in config["trained_on"]
    assert "mcfast phantoms" in config["reproduce"] and "mcfast train" in config["reproduce"]

"""`mcfast evaluate classifier|realism|memorization` end to end on tiny generated folders."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mcfast.commands import evaluate as cmd
from mcfast.errors import InputError

from test_eval_classifier import make_labelled_folder


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)  # the command sets study.threads


def _parse(argv):
    parser = argparse.ArgumentParser(prog="mcfast")
    sub = parser.add_subparsers(dest="command")
    cmd.register(sub)
    return parser.parse_args(argv)


def _write_config(tmp_path: Path, synthetic: Path | None) -> Path:
    real = make_labelled_folder(tmp_path / "real", 24, seed=1)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f"""
[study]
name = "cli smoke"
output_dir = "{tmp_path / 'out'}"
seeds = [0]
increments = [0.33]
n_bootstrap = 20
[data]
dataset = "folder"
root = "{real}"
image_size = 32
synthetic_dir = "{synthetic or ''}"
split_fractions = [0.5, 0.25, 0.25]
[train]
epochs = 1
batch_size = 8
[realism]
epochs = 1
feature_epochs = 1
msssim_pairs = 10
[memorization]
max_shift = 3
threshold = 0.9
top_k = 3
""")
    return cfg


def test_cli_classifier_realism_memorization(tmp_path, capsys):
    synth = make_labelled_folder(tmp_path / "synth", 12, seed=5)
    cfg = _write_config(tmp_path, synth)
    # a planted copy of a real training image must be flagged by the memorization audit
    (synth / "abnormal" / "copy.png").write_bytes((tmp_path / "real" / "abnormal" / "img001.png").read_bytes())
    args = _parse(["evaluate", "classifier", "--config", str(cfg)])
    assert args.func(args) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["increment"] for r in res["rows"]] == [0.33] and res["rows"][0]["n_synthetic"] == 4
    assert (tmp_path / "out" / "table.md").is_file() and (tmp_path / "out" / "auc_vs_synthetic.png").is_file()

    args = _parse(["evaluate", "realism", "--config", str(cfg)])
    assert args.func(args) == 0
    rep = json.loads((tmp_path / "out" / "realism" / "realism.json").read_text())
    assert 0 <= rep["two_sample"]["auc"] <= 1 and rep["frechet"]["synthetic_vs_real"] >= 0

    args = _parse(["evaluate", "memorization", "--config", str(cfg)])
    assert args.func(args) == 0
    mem = json.loads((tmp_path / "out" / "memorization" / "memorization.json").read_text())
    flagged = [p["synthetic_name"] for p in mem["flagged"]]
    assert "abnormal/copy.png" in flagged
    assert (tmp_path / "out" / "memorization" / "top_pairs.png").is_file()
    assert "flagged" in capsys.readouterr().out


def test_cli_realism_without_synthetic_is_a_clear_error(tmp_path):
    cfg = _write_config(tmp_path, None)
    args = _parse(["evaluate", "realism", "--config", str(cfg)])
    with pytest.raises(InputError, match="synthetic folder"):
        args.func(args)

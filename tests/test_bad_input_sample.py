"""`mcfast sample` on bad input: exit 2, one stderr line naming the file or value, no traceback, no
warning, and the folder it ran in left exactly as it was (an earlier run's samples included)."""
import os

import pytest
import torch

from bad_input_helpers import run_bad, symlink_loop
from mcfast.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def sandbox(tmp_path, tiny_run_32):
    os.symlink(tiny_run_32, tmp_path / "run")
    (tmp_path / "afile").write_text("keep me")
    symlink_loop(tmp_path)
    return tmp_path


@pytest.fixture()
def with_prev(sandbox, tiny_run_32):
    assert main(["sample", "--ckpt", str(tiny_run_32), "--out", str(sandbox / "prev"), "--n", "1", "--steps", "2",
                 "--no-progress"]) == 0
    return sandbox


S = ["sample", "--ckpt", "run", "--steps", "2", "--n", "1", "--no-progress"]

CASES = [
    (S + ["--out", "afile"], "afile: is a file, not a folder"),
    (S + ["--out", "afile/out"], "afile/out: afile is a file, not a folder"),
    (S + ["--out", "/proc/mcfast-bad-input"], "/proc/mcfast-bad-input: cannot write in /proc"),
    (S + ["--out", "loop"], "loop: symlink loop"),
    (S + ["--out", "o", "--n", "0"], "argument --n: must be >= 1, got 0"),
    (S + ["--out", "o", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (S + ["--out", "o", "--batch-size", "-1"], "argument --batch-size: must be >= 1, got -1"),
    (S + ["--out", "o", "--batch-size", "1.5"], "argument --batch-size: expected an integer >= 1, got '1.5'"),
    (S + ["--out", "o", "--device", "gpu"], "--device 'gpu': not a device name"),
    (S + ["--out", "o", "--device", "cuda:99"], "--device cuda:99"),
    (S + ["--out", "o", "--steps", "0"], "'0'"),
    (S + ["--out", "o", "--sampler", "ddim", "--eta", "-1"], "eta must be >= 0, got -1.0"),
    (S + ["--out", "o", "--eps-scale", "0"], "--eps-scale = 0.0"),
    (S + ["--out", "o", "--size", "7"], "7x7"),
    (S + ["--out", "o", "--sampler", "plms"], "argument --sampler"),
    (["sample", "--ckpt", "nope", "--out", "o", "--no-progress"], "nope"),
    (["sample", "--ckpt", "afile", "--out", "o", "--no-progress"], "afile"),
]
if not torch.cuda.is_available():
    CASES.append((S + ["--out", "o", "--device", "cuda"], "--device cuda: no CUDA"))


@pytest.mark.parametrize("argv, expected", CASES, ids=[" ".join(a[8:])[:60] for a, _ in CASES])
def test_bad_input_is_one_line(sandbox, capsys, argv, expected):
    run_bad(capsys, argv, expected, sandbox, cwd=sandbox)


@pytest.mark.parametrize("extra, expected", [
    ([], "prev: already holds samples.npy"),
    (["--batch-size", "0"], "--batch-size"),
    (["--device", "gpu"], "prev: already holds samples.npy"),
])
def test_earlier_samples_stay(with_prev, capsys, extra, expected):
    run_bad(capsys, S + ["--out", "prev", *extra], expected, with_prev, cwd=with_prev)

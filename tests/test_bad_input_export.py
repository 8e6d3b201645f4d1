"""`mcfast export` on bad input: exit 2, one stderr line naming the file or value, no traceback, no
warning, and the folder it ran in left exactly as it was (an earlier export included)."""
import os

import pytest

from bad_input_helpers import run_bad, symlink_loop

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def sandbox(tmp_path, tiny_run_32):
    os.symlink(tiny_run_32, tmp_path / "run")
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "sampler.pt").write_bytes(b"an earlier export")
    (tmp_path / "folder").mkdir()
    (tmp_path / "pt2").mkdir()
    (tmp_path / "pt2" / "s.pt2.json").mkdir()
    symlink_loop(tmp_path)
    return tmp_path


E = ["export", "--ckpt", "run", "--steps", "2"]

CASES = [
    (E + ["--out", "folder"], "folder: is a folder, expected a file"),
    (E + ["--out", "afile/sampler.pt"], "afile/sampler.pt: afile is a file, not a folder"),
    (E + ["--out", "/proc/mcfast-bad-input.pt"], "/proc/mcfast-bad-input.pt: cannot write in /proc"),
    (E + ["--out", "loop"], "loop: symlink loop"),
    (E + ["--out", "loop/sampler.pt"], "symlink loop"),
    (E + ["--out", "pt2/s.pt2", "--format", "pt2"], "pt2/s.pt2.json: is a folder, expected a file"),
    (E + ["--out", "sampler.pt", "--steps", "0"], "--steps must be in 1..1000, got 0"),
    (E + ["--out", "sampler.pt", "--steps", "5000"], "--steps must be in 1..1000, got 5000"),
    (E + ["--out", "sampler.pt", "--sampler", "ddim", "--eta", "-1"], "eta must be >= 0, got -1.0"),
    (E + ["--out", "s.pt2", "--format", "pt2", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (E + ["--out", "sampler.pt", "--format", "onnx"], "argument --format"),
    (E + ["--out", "sampler.pt", "--ops", "maybe"], "argument --ops"),
    (["export", "--ckpt", "nope", "--out", "sampler.pt"], "nope"),
    (["export", "--ckpt", "afile", "--out", "sampler.pt"], "afile"),
]


@pytest.mark.parametrize("argv, expected", CASES, ids=[" ".join(a[4:])[:60] for a, _ in CASES])
def test_bad_input_is_one_line(sandbox, capsys, argv, expected):
    run_bad(capsys, argv, expected, sandbox, cwd=sandbox)

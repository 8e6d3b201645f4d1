"""`mcfast prepare` on bad input: exit 2, one stderr line naming the file or value, no traceback, no
warning, and the folder it ran in left exactly as it was (an earlier run's items included)."""
import json

import numpy as np
import pytest
from PIL import Image

from bad_input_helpers import npy_claiming, png_claiming, run_bad, symlink_loop
from mcfast.cli import main
from mcfast.io.images import MAX_OUTPUT_SIZE


def _mammogram(path):
    img = np.zeros((40, 30), np.uint8)
    img[6:34, :18] = 170
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture()
def sandbox(tmp_path):
    _mammogram(tmp_path / "in" / "good.png")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not an image")
    (tmp_path / "afile").write_text("keep me")
    png_claiming(tmp_path / "bomb.png", 100000, 100000)
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "cut.png").write_bytes((tmp_path / "in" / "good.png").read_bytes()[:40])
    good = (tmp_path / "in" / "good.png").read_bytes()
    (tmp_path / "trunc2").mkdir()
    (tmp_path / "trunc2" / "cut.png").write_bytes(good[:good.index(b"IDAT") + 8])  # header whole, pixels cut
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 0] = 200
    (tmp_path / "colour").mkdir()
    Image.fromarray(rgb).save(tmp_path / "colour" / "red.png")
    symlink_loop(tmp_path)
    # an earlier run's output that a failed re-run must leave as it was
    assert main(["prepare", "--modality", "mg", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "prev"),
                 "--size", "16", "--no-progress"]) == 0
    return tmp_path


MG = ["prepare", "--modality", "mg", "--no-progress", "--size", "16"]

CASES = [
    # output folder: a file, under a file, somewhere nothing can be written (also for root), a symlink loop
    (MG + ["--in", "in", "--out", "afile"], "afile: is a file, not a folder"),
    (MG + ["--in", "in", "--out", "afile/out"], "afile/out: afile is a file, not a folder"),
    (MG + ["--in", "in", "--out", "/proc/mcfast-bad-input/out"], "/proc/mcfast-bad-input/out: cannot write in /proc"),
    (MG + ["--in", "in", "--out", "loop"], "loop: symlink loop"),
    (MG + ["--in", "in", "--out", "in/sub"], "in/sub: the output folder must be outside the input folder"),
    # input: missing, a symlink loop (not "no such file")
    (MG + ["--in", "missing", "--out", "o"], "missing: no such file or folder"),
    (MG + ["--in", "loop", "--out", "o"], "loop: symlink loop"),
    # sizes: refused before anything is allocated, the limit stated
    (["prepare", "--modality", "mg", "--in", "in", "--out", "o", "--size", "200000"],
     f"--size = 200000 is outside 8..{MAX_OUTPUT_SIZE}"),
    (["prepare", "--modality", "mg", "--in", "in", "--out", "o", "--size", "4"], "--size = 4 is outside"),
    (["prepare", "--modality", "mg", "--in", "in", "--out", "o", "--size", "-1"], "--size = -1 is outside"),
    (["prepare", "--modality", "mg", "--in", "in", "--out", "o", "--size", "big"], "argument --size"),
    (["prepare", "--modality", "xray", "--in", "in", "--out", "o"], "argument --modality"),
    (["prepare", "--modality", "mg", "--in", "in"], "--out"),
    # nothing usable: say how many files were seen and why each kind was skipped
    (MG + ["--in", "notes", "--out", "o"], "notes: no usable MG images (1 files skipped) of 1 seen: 1 not an image"),
    (MG + ["--in", "notes", "--out", "prev"], "no usable MG images"),  # prev's items stay
    (["prepare", "--modality", "ct", "--no-progress", "--in", "in", "--out", "o"],
     "--modality ct reads DICOM only"),
    (MG + ["--in", "bomb.png", "--out", "o"], "bomb.png: header claims 10000000000 pixels"),
    (MG + ["--in", "trunc", "--out", "o"], "1 not an image file PIL can read"),
    (MG + ["--in", "trunc2", "--out", "o"], "1 unreadable or truncated image"),
    (MG + ["--in", "colour", "--out", "o"], "colour image"),
    # options
    (MG + ["--in", "in", "--out", "o", "--window", "lung"], "--window applies to --modality ct only"),
    (["prepare", "--modality", "ct", "--in", "in", "--out", "o", "--window", "nonsense"], "nonsense"),
]


@pytest.mark.parametrize("argv, expected", CASES, ids=[" ".join(a[1:])[:60] for a, _ in CASES])
def test_bad_input_is_one_line(sandbox, capsys, argv, expected):
    run_bad(capsys, argv, expected, sandbox, cwd=sandbox)


def test_bomb_and_loop_in_a_folder_are_skipped_and_counted(sandbox, capsys):
    png_claiming(sandbox / "in" / "bomb.png", 100000, 100000)
    symlink_loop(sandbox / "in", "loop")
    npy_claiming(sandbox / "in" / "huge.npy", (100000, 100000))  # not an MG suffix: skipped as such
    assert main(MG + ["--in", str(sandbox / "in"), "--out", str(sandbox / "o")]) == 0
    manifest = json.loads((sandbox / "o" / "manifest.json").read_text())
    assert manifest["counts"] == {"items": 1, "skipped": 4}  # the loop is two links
    reasons = {s["source"].rsplit("/", 1)[-1]: s["reason"] for s in manifest["skipped"]}
    assert "header claims 10000000000 pixels" in reasons["bomb.png"]
    assert reasons["loop"] == reasons["loop.b"] == "symlink loop"
    assert "4 file(s) skipped" in capsys.readouterr().out


def test_size_limit_is_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    assert f"8 to {MAX_OUTPUT_SIZE}" in capsys.readouterr().out

"""`mcfast synthesize` (and its recipes) on bad input: exit 2, one stderr line naming the file or value,
no traceback, no warning, and the folder it ran in left exactly as it was."""
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from bad_input_helpers import npy_claiming, png_claiming, run_bad, symlink_loop
from mcfast.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

GOOD = """[recipe]
modality = "ct"
image_size = 32
[sampler]
steps = "2"
batch_size = 2
[anatomy]
source = "phantom"
factor = 4
[[pathology]]
source = "synthetic"
size = [8, 12]
"""
HEAD = '[recipe]\nmodality = "ct"\nimage_size = 32\n'

RECIPES = {
    "sampler_int.toml": "sampler = 5\n",
    "recipe_int.toml": "recipe = 3\n",
    "sampler_array.toml": '[[sampler]]\nsteps = "2"\n',
    "pathology_strings.toml": 'pathology = ["nodule"]\n',
    "pathology_string.toml": 'pathology = "nodule"\n',
    "source_file.toml": HEAD + '[[pathology]]\nsource = "file"\npath = "afile"\n',
    "small_lesion.toml": HEAD + '[[pathology]]\nsource = "synthetic"\nsize = [4, 8]\n',
    "big_lesion.toml": HEAD + '[[pathology]]\nsource = "synthetic"\nsize = [8, 20]\n',
    "msd_empty.toml": HEAD + '[[pathology]]\nsource = "msd"\npath = "empty.h5"\n',
    "msd_no_tumour.toml": HEAD + '[[pathology]]\nsource = "msd"\npath = "blank.h5"\n',
    "msd_missing.toml": HEAD + '[[pathology]]\nsource = "msd"\npath = "nope.h5"\n',
    "anatomy_missing.toml": HEAD + '[anatomy]\nsource = "file"\npath = "nope.npy"\n',
    "anatomy_loop.toml": HEAD + '[anatomy]\nsource = "file"\npath = "loop"\n',
    "anatomy_bomb.toml": HEAD + '[anatomy]\nsource = "file"\npath = "bomb.png"\n',
    "anatomy_huge.toml": HEAD + '[anatomy]\nsource = "file"\npath = "huge.npy"\n',
    "anatomy_inf.toml": HEAD + '[anatomy]\nsource = "file"\npath = "inf.npy"\n',
    "anatomy_3d.toml": HEAD + '[anatomy]\nsource = "file"\npath = "stack.npy"\n',
    "bad_key.toml": HEAD + '[sampler]\nstepz = "2"\n',
    "steps_int.toml": HEAD + '[sampler]\nsteps = 5\n',
    "not_toml.toml": "[recipe\n",
    "not_utf8.toml": None,
}


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_run_32):
    tmp_path = tmp_path_factory.mktemp("template")
    os.symlink(tiny_run_32, tmp_path / "run")
    (tmp_path / "r.toml").write_text(GOOD)
    for name, text in RECIPES.items():
        if text is None:
            (tmp_path / name).write_bytes(b"[recipe]\nmodality = \"\xff\"\n")
        else:
            (tmp_path / name).write_text(text)
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "sub").mkdir()
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["images"] = np.zeros((0, 16, 16), np.float32)
        f["labels"] = np.zeros((0, 16, 16), np.float32)
    with h5py.File(tmp_path / "blank.h5", "w") as f:
        f["images"] = np.zeros((2, 16, 16), np.float32)
        f["labels"] = np.zeros((2, 16, 16), np.float32)
    symlink_loop(tmp_path)
    png_claiming(tmp_path / "bomb.png", 100000, 100000)
    npy_claiming(tmp_path / "huge.npy", (100000, 100000))
    np.save(tmp_path / "inf.npy", np.full((32, 32), 1e300))  # float64 beyond float32: Inf, no overflow warning
    np.save(tmp_path / "stack.npy", np.zeros((3, 32, 32), np.float32))
    # a finished run that a failed command must not touch
    assert main(["synthesize", "--ckpt", str(tiny_run_32), "--recipe", str(tmp_path / "r.toml"), "--n", "1",
                 "--out", str(tmp_path / "prev"), "--no-progress"]) == 0
    return tmp_path


@pytest.fixture()
def sandbox(template, tmp_path):
    """A fresh copy of the template (links kept as links) for each case."""
    shutil.copytree(template, tmp_path / "s", symlinks=True)
    return tmp_path / "s"


SYN = ["synthesize", "--ckpt", "run", "--no-progress"]
R = ["--recipe", "r.toml"]
NO_GPU = "no CUDA" if not torch.cuda.is_available() else "only"

CASES = [
    # output folder
    (SYN + R + ["--out", "afile"], "afile: is a file, not a folder"),
    (SYN + R + ["--out", "afile/out"], "afile/out: afile is a file, not a folder"),
    (SYN + R + ["--out", "/proc/mcfast-bad-input"], "/proc/mcfast-bad-input: cannot write in /proc"),
    (SYN + R + ["--out", "loop"], "loop: symlink loop"),
    # counts (--batch-size -1 used to print "wrote 1 images" and write none; 0 meant the recipe's)
    (SYN + R + ["--out", "o", "--batch-size", "-1"], "argument --batch-size: must be >= 1, got -1"),
    (SYN + R + ["--out", "o", "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    (SYN + R + ["--out", "o", "--batch-size", "two"], "argument --batch-size"),
    (SYN + R + ["--out", "o", "--n", "0"], "argument --n/--num-images: must be >= 1, got 0"),
    (SYN + R + ["--out", "o", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
    (SYN + R + ["--out", "o", "--steps", "0"], "'0'"),
    (SYN + R + ["--out", "o", "--eta", "-1"], "sampler.eta = -1.0"),
    (SYN + R + ["--out", "o", "--eps-scale", "0"], "eps_scale"),
    (SYN + R + ["--out", "o", "--deterministic-below", "1001"], "sampler.deterministic_below = 1001"),
    (SYN + R + ["--out", "o", "--deterministic-below", "-5"], "sampler.deterministic_below = -5"),
    # devices
    (SYN + R + ["--out", "o", "--device", "cuda:99"], "--device cuda:99"),
    (SYN + R + ["--out", "o", "--device", "gpu"], "--device 'gpu': not a device name"),
    # the run folder and the recipe file
    (["synthesize", "--ckpt", "nope", "--recipe", "r.toml", "--out", "o", "--no-progress"], "nope"),
    (SYN + ["--recipe", "missing.toml", "--out", "o"], "missing.toml: recipe file not found"),
    (SYN + ["--recipe", "loop", "--out", "o"], "loop: symlink loop"),
    (SYN + ["--recipe", "sub", "--out", "o"], "sub: is a folder, expected a recipe file"),
    (SYN + ["--recipe", "not_toml.toml", "--out", "o"], "not_toml.toml: not a valid TOML recipe"),
    (SYN + ["--recipe", "not_utf8.toml", "--out", "o"], "not_utf8.toml: not a valid TOML recipe"),
    # recipes: a value of the wrong kind where a table belongs is named as such
    (SYN + ["--recipe", "sampler_int.toml", "--out", "o"], "sampler_int.toml: [sampler] must be a table"),
    (SYN + ["--recipe", "recipe_int.toml", "--out", "o"], "recipe_int.toml: [recipe] must be a table"),
    (SYN + ["--recipe", "sampler_array.toml", "--out", "o"], "[sampler] must be a table of settings"),
    (SYN + ["--recipe", "pathology_strings.toml", "--out", "o"],
     "pathology_strings.toml: pathology[0] must be a table of settings ([[pathology]] with source = ..., "
     "size = ... lines), got the string 'nodule'"),
    (SYN + ["--recipe", "pathology_string.toml", "--out", "o"], "got the string 'nodule'"),
    (SYN + ["--recipe", "bad_key.toml", "--out", "o"], "unknown key(s) in [sampler]: stepz"),
    (SYN + ["--recipe", "steps_int.toml", "--out", "o"], "sampler.steps must be a string, got 5"),
    # validator and code share one list of source names and one lesion-size bound
    (SYN + ["--recipe", "source_file.toml", "--out", "o"],
     "source_file.toml: pathology[0].source = 'file' is not one of synthetic, msd, voc, mias"),
    (SYN + ["--recipe", "small_lesion.toml", "--out", "o"],
     "small_lesion.toml: pathology[0].size = [4, 8] must lie in [8, 16]"),
    (SYN + ["--recipe", "big_lesion.toml", "--out", "o"], "big_lesion.toml: pathology[0].size = [8, 20]"),
    # the recipe's files, opened before the model is loaded or --out is made
    (SYN + ["--recipe", "msd_empty.toml", "--out", "o"],
     "msd_empty.toml: pathology[0].path = 'empty.h5': the MSD file holds no patches"),
    (SYN + ["--recipe", "msd_no_tumour.toml", "--out", "o"], "pathology[0].path = 'blank.h5': every MSD patch (2)"),
    (SYN + ["--recipe", "msd_missing.toml", "--out", "o"], "pathology[0].path = 'nope.h5': no such file"),
    (SYN + ["--recipe", "anatomy_missing.toml", "--out", "o"], "anatomy.path = 'nope.npy': no such file"),
    (SYN + ["--recipe", "anatomy_loop.toml", "--out", "o"], "anatomy.path = 'loop': symlink loop"),
    (SYN + ["--recipe", "anatomy_bomb.toml", "--out", "o"], "anatomy.path = 'bomb.png': header claims 10000000000"),
    (SYN + ["--recipe", "anatomy_huge.toml", "--out", "o"],
     "anatomy.path = 'huge.npy': header claims 100000 x 100000"),
    (SYN + ["--recipe", "anatomy_inf.toml", "--out", "o"], "anatomy.path = 'inf.npy': array contains 1024 NaN/Inf"),
    (SYN + ["--recipe", "anatomy_3d.toml", "--out", "o"], "anatomy.path = 'stack.npy': array has shape (3, 32, 32)"),
    # a bad value on top of a finished run leaves it as it was
    (SYN + R + ["--out", "prev", "--batch-size", "0"], "--batch-size"),
    (SYN + R + ["--out", "prev", "--n", "2", "--device", "gpu"], "--device 'gpu'"),
]
if not torch.cuda.is_available():
    CASES.append((SYN + R + ["--out", "o", "--device", "cuda"], "--device cuda: no CUDA"))


@pytest.mark.parametrize("argv, expected", CASES, ids=[" ".join(a[4:])[:70] for a, _ in CASES])
def test_bad_input_is_one_line(sandbox, capsys, argv, expected):
    run_bad(capsys, argv, expected, sandbox, cwd=sandbox)


def test_other_run_in_out_is_refused_untouched(sandbox, capsys):
    run_bad(capsys, SYN + R + ["--out", "prev", "--n", "2"], "prev: holds a run with a different", sandbox,
            cwd=sandbox)


def test_resume_by_absolute_or_relative_recipe_path_is_the_same_run(sandbox, capsys):
    """Started with a relative recipe path, resumed with the absolute one, or from another folder."""
    old = os.getcwd()
    try:
        os.chdir(sandbox)
        assert main(SYN + ["--recipe", "r.toml", "--n", "2", "--out", "o"]) == 0
        assert "wrote 2 images (0 already done)" in capsys.readouterr().out
        assert main(SYN + ["--recipe", str(sandbox / "r.toml"), "--n", "2", "--out", str(sandbox / "o")]) == 0
        assert "wrote 0 images (2 already done)" in capsys.readouterr().out
        os.chdir(sandbox / "sub")
        assert main(["synthesize", "--ckpt", "../run", "--no-progress", "--recipe", "../r.toml", "--n", "2",
                     "--out", "../o"]) == 0
        assert "wrote 0 images (2 already done)" in capsys.readouterr().out
    finally:
        os.chdir(old)
    assert len(list((sandbox / "o").glob("provenance*.json"))) == 1


def test_every_source_name_the_validator_accepts_is_served():
    from mcfast.errors import InputError
    from mcfast.pathology.synthetic import MIN_PATCH
    from mcfast.synthesis import recipe as R_, sources

    assert R_.PATHOLOGY_SOURCES is sources.PATHOLOGY_SOURCES and R_.ANATOMY_SOURCES is sources.ANATOMY_SOURCES
    for name in sources.PATHOLOGY_SOURCES:
        try:
            sources.load_patch("ct" if name != "mias" else "mg", name, "/nonexistent", np.random.default_rng(0),
                               MIN_PATCH)
        except InputError as exc:
            assert "unknown pathology source" not in str(exc)
    # the smallest synthetic size the validator accepts is one sampling draws
    lo, _ = sources.patch_side_range("synthetic")
    assert sources.load_patch("ct", "synthetic", "", np.random.default_rng(0), lo).shape[0] >= lo
    R_.recipe_from_dict({"recipe": {"image_size": 32}, "pathology": [{"size": [lo, lo]}]})
    with pytest.raises(InputError, match=r"pathology\[0\]\.size"):
        R_.recipe_from_dict({"recipe": {"image_size": 32}, "pathology": [{"size": [lo - 1, lo]}]})

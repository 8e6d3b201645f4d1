"""Synthesis outputs name no source folder: meta.json and provenance.json hash folder paths (clinical
trees are often named after the patient) unless the recipe asks for full paths."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mcfast.synthesis.outputs import private_path, private_provenance
from mcfast.synthesis.recipe import load_recipe
from synthesis_helpers import make_tiny_run

CONFIGS = Path(__file__).resolve().parents[1] / "mcfast" / "configs"
PATIENT = "DOE_JANE_19600101"


def test_private_path_hides_folders_keeps_names_and_slices(tmp_path, monkeypatch):
    folder = tmp_path / PATIENT / "CT"
    folder.mkdir(parents=True)
    (folder / "IM0001.npy").write_bytes(b"")
    stored = private_path(str(folder / "IM0001.npy"))
    assert PATIENT not in stored and stored.startswith("sha256:") and stored.endswith("/IM0001.npy")
    monkeypatch.chdir(tmp_path)  # the same file written relative: the same text (a resumed run must match)
    assert private_path(os.path.join(PATIENT, "CT", "IM0001.npy")) == stored
    series = private_path(f"{folder}#slice12")  # a DICOM series folder is hashed whole: its name may be the patient's
    assert PATIENT not in series and "CT" not in series.split(":", 1)[1] and series.endswith("#slice12")
    assert private_path(str(tmp_path / "other" / "IM0001.npy")) != stored  # another folder, another digest


def test_private_provenance_covers_every_path_and_full_paths_keeps_them():
    provenance = {"recipe": {"source": f"/data/{PATIENT}/r.toml", "anatomy": {"path": f"/data/{PATIENT}/ct"},
                             "pathology": [{"path": ""}, {"path": f"/data/{PATIENT}/msd.h5"}]},
                  "checkpoint": f"/runs/{PATIENT}", "n": 3}
    hidden = json.dumps(private_provenance(provenance, full_paths=False))
    assert PATIENT not in hidden and '"paths": "folder hashed' in hidden and '"path": ""' in hidden
    full = private_provenance(provenance, full_paths=True)
    assert full["recipe"] == provenance["recipe"] and full["checkpoint"] == provenance["checkpoint"]
    assert full["paths"] == "full" and provenance.get("paths") is None  # the input is not changed


@pytest.mark.parametrize("full_paths", [False, True])
def test_synthesized_outputs_name_no_patient_folder(tmp_path, full_paths):
    from mcfast.anatomy.phantom import lung_phantom
    from mcfast.synthesis.pipeline import synthesize

    run = make_tiny_run(tmp_path / "run", 32, "ct")
    anatomy = tmp_path / PATIENT / "slice.npy"
    anatomy.parent.mkdir()
    np.save(anatomy, lung_phantom(size=32, seed=1).astype(np.float32))  # an NPY in HU
    recipe = load_recipe(CONFIGS / "demo_ct.toml")
    recipe.image_size, recipe.sampler.steps, recipe.pathology = 32, "2", []
    recipe.anatomy.source, recipe.anatomy.path, recipe.anatomy.factor = "file", str(anatomy), 4
    recipe.output.png, recipe.output.full_paths = False, full_paths
    out = tmp_path / "out"
    synthesize(run, recipe, 1, out, progress=False)
    meta, provenance = (out / "000000" / "meta.json").read_text(), (out / "provenance.json").read_text()
    assert (PATIENT in meta) == full_paths and (PATIENT in provenance) == full_paths
    assert json.loads(meta)["anatomy"].endswith("slice.npy")  # the name stays (realism groups by it)
    again = synthesize(run, recipe, 1, out, progress=False)  # the stored (hashed) recipe is the same run
    assert (again.written, again.skipped) == (0, 1)

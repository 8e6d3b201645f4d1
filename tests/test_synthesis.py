"""The synthesis pipeline: recipes, item plans, outputs, COCO, DICOM, resume and determinism."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from mcfast.errors import InputError
from mcfast.io.coco import annotation_mask, read_coco
from mcfast.synthesis.plan import plan_item
from mcfast.synthesis.recipe import load_recipe, recipe_from_dict
from synthesis_helpers import make_tiny_run

CONFIGS = Path(__file__).resolve().parents[1] / "mcfast" / "configs"


def _recipe(modality: str = "ct", **sampler):
    r = load_recipe(CONFIGS / f"demo_{modality}.toml")
    r.sampler.steps = "5"
    r.sampler.batch_size = 2
    r.image_size = 64
    for k, v in sampler.items():
        setattr(r.sampler, k, v)
    return r


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("run") / "ct", 64, "ct")


@pytest.mark.parametrize("data, message", [
    ({"recipe": {"modality": "pet"}}, "recipe.modality"),
    ({"anatomy": {"factor": 3}}, "does not divide image_size"),
    ({"anatomy": {"stop_step": 1200}}, "outside [0, 1000]"),
    ({"pathology": [{"count": [3, 1]}]}, "min > max"),
    ({"sampler": {"method": "euler"}}, "sampler.method"),
    ({"anatomy": {"source": "file"}}, "needs anatomy.path"),
    ({"recipe": {"colour": 1}}, "unknown key"),
    ({"extra": {}}, "unknown section"),
])
def test_recipe_errors_name_the_key(data, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        recipe_from_dict(data, source="r.toml")


def test_bad_toml_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[recipe\nmodality = 'ct'")
    with pytest.raises(InputError, match="bad.toml: not a valid TOML"):
        load_recipe(bad)


@pytest.mark.parametrize("modality", ["ct", "mg"])
def test_plan_is_deterministic_and_lesions_lie_in_tissue(modality):
    r = _recipe(modality)
    a, b = plan_item(r, 3), plan_item(r, 3)
    assert a.seed == b.seed and np.array_equal(a.anatomy.values, b.anatomy.values)
    assert [l.box for l in a.lesions] == [l.box for l in b.lesions]
    assert plan_item(r, 4).seed != a.seed
    assert 1 <= len(a.lesions) <= 3
    for lesion in a.lesions:
        inside = (lesion.mask > 0) & a.anatomy.tissue
        assert inside.sum() >= 0.9 * lesion.mask.sum() - 1e-9
        rows, cols = np.nonzero(lesion.mask)
        assert lesion.box == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
    # the anatomy guides the whole image, each lesion only inside its patch square
    assert a.conditions[0].is_full
    for cond, lesion in zip(a.conditions[1:], a.lesions):
        x, y, w, h = lesion.patch_box
        weight = cond.weight.numpy()
        outside = np.ones_like(weight, dtype=bool)
        outside[y:y + h, x:x + w] = False
        assert weight[outside].max() == 0 and weight.max() > 0.9


def test_anatomy_guiding_to_the_last_step_carries_the_lesions():
    """An anatomy condition that still acts at t = 0 guides to the anatomy with the lesions pasted (else it
    would pull each lesion back to the lesion-free anatomy to the end); one that stops earlier keeps the
    lesion-free reference, so recipes with stop_step > 0 plan exactly as before."""
    from mcfast.synthesis.plan import to_model

    r = _recipe("ct")
    assert r.anatomy.stop_step > 0
    early = plan_item(r, 3)
    assert early.lesions and np.array_equal(early.conditions[0].ref.numpy().reshape(64, 64),
                                            to_model("ct", early.anatomy.values))
    r.anatomy.stop_step = 0
    late = plan_item(r, 3)
    ref = late.conditions[0].ref.numpy().reshape(64, 64)
    assert np.array_equal(ref, late.pathology_reference)
    assert not np.array_equal(ref, to_model("ct", late.anatomy.values))
    assert [c.ref.numpy().tobytes() for c in late.conditions[1:]] == [c.ref.numpy().tobytes() for c in early.conditions[1:]]


def test_pipeline_writes_consistent_outputs_and_resumes(tmp_path, ct_run):
    from mcfast.synthesis.pipeline import synthesize

    r = _recipe("ct")
    out = tmp_path / "out"
    res = synthesize(ct_run, r, 3, out, progress=False)
    assert (res.written, res.skipped) == (3, 0)
    coco = read_coco(out / "coco.json")
    assert len(coco["images"]) == 3 and coco["annotations"]
    for img in coco["images"]:
        folder = out / img["file_name"].split("/")[0]
        for name in ("image.npy", "image_hu.npy", "lung.png", "soft_tissue.png", "bone.png", "mask.png",
                     "labels.npy", "overlay.png", "image.dcm", "seg.dcm", "meta.json"):
            assert (folder / name).is_file(), name
        labels = np.load(folder / "labels.npy")
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        assert len(anns) == labels.max()
        for ann in anns:
            mask = annotation_mask(ann, img["height"], img["width"])
            rows, cols = np.nonzero(mask)
            assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
            assert mask.any() and (labels[mask > 0] > 0).all()
        ds = pydicom.dcmread(folder / "image.dcm")
        assert "DERIVED" in ds.ImageType and ds.PatientIdentityRemoved == "YES"
        hu = np.load(folder / "image_hu.npy")
        assert np.abs(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) - hu).max() <= 1.0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["n"] == 3 and len(provenance["checkpoint_sha256"]) == 64
    before = (out / "000001" / "image.npy").stat().st_mtime_ns
    again = synthesize(ct_run, r, 3, out, progress=False)
    assert (again.written, again.skipped) == (0, 3)
    assert (out / "000001" / "image.npy").stat().st_mtime_ns == before
    r.seed = 99
    with pytest.raises(InputError, match="different recipe"):
        synthesize(ct_run, r, 3, out, progress=False)


def test_same_seed_same_image(tmp_path, ct_run):
    from mcfast.synthesis.pipeline import synthesize

    r = _recipe("ct", backend="reference")
    synthesize(ct_run, r, 2, tmp_path / "a", progress=False)
    synthesize(ct_run, r, 2, tmp_path / "b", progress=False)
    for k in ("000000", "000001"):
        assert np.array_equal(np.load(tmp_path / "a" / k / "image.npy"), np.load(tmp_path / "b" / k / "image.npy"))


def test_model_and_recipe_must_agree(tmp_path, ct_run):
    from mcfast.synthesis.pipeline import synthesize

    with pytest.raises(InputError, match="trained on 'ct'"):
        synthesize(ct_run, _recipe("mg"), 1, tmp_path / "x", progress=False)
    r = _recipe("ct")
    r.image_size = 32
    with pytest.raises(InputError, match="trained at 64x64"):
        synthesize(ct_run, r, 1, tmp_path / "y", progress=False)


def test_cli_synthesize(tmp_path, ct_run, capsys):
    from mcfast.cli import main

    code = main(["synthesize", "--ckpt", str(ct_run), "--recipe", str(CONFIGS / "demo_ct.toml"), "--n", "1",
                 "--steps", "4", "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 0 and "wrote 1 images" in capsys.readouterr().out
    assert main(["synthesize", "--ckpt", str(ct_run), "--recipe", str(tmp_path / "none.toml"), "--out",
                 str(tmp_path / "o2")]) == 2
    assert "none.toml: recipe file not found" in capsys.readouterr().err


def test_torchrun_splits_items_and_merges_one_coco(tmp_path, ct_run):
    import os
    import subprocess
    import sys

    out = tmp_path / "dist"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "mcfast", "synthesize",
           "--ckpt", str(ct_run), "--recipe", str(CONFIGS / "demo_ct.toml"), "--num-images", "3", "--steps", "3",
           "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((out / f"{i:06d}" / "meta.json").read_text())["rank"] for i in range(3)]
    assert ranks == [0, 1, 0]
    coco = read_coco(out / "coco.json")
    assert sorted(img["id"] for img in coco["images"]) == [1, 2, 3]
    # World size 2 makes the same images as one process (each item's seeds are its own).
    single = subprocess.run(cmd[:1] + cmd[5:-3] + ["--out", str(tmp_path / "single"), "--no-progress"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    for i in range(3):
        a, b = (np.load(folder / f"{i:06d}" / "image.npy") for folder in (out, tmp_path / "single"))
        assert np.array_equal(a, b), i


def test_prepared_folder_anatomy_draws_only_chest_slices(tmp_path):
    from mcfast.anatomy.phantom import lung_phantom
    from mcfast.io.datasets import prepare
    from mcfast.io.writers import write_ct_dicom
    from mcfast.synthesis.sources import load_anatomy

    chest = lung_phantom(size=64, seed=1)
    abdomen = np.where(chest > -500, chest, 40.0).astype(np.float32)  # no air inside the body
    abdomen[30:33, 30:33] = -1000.0                                      # a little bowel gas
    for k, hu in enumerate((abdomen, chest, abdomen)):
        write_ct_dicom(tmp_path / "dcm" / f"{k}.dcm", hu, series_uid="1.2.826.0.1.3680043.8.498.77",
                       instance_number=k + 1)
    prepare("ct", tmp_path / "dcm", tmp_path / "prep", size=64, progress=False)
    sources = set()
    for seed in range(6):
        a = load_anatomy("ct", "prepared", str(tmp_path / "prep"), 64, seed, np.random.default_rng(seed))
        sources.add(Path(a.source).name)
        assert abs(float(np.median(a.values[chest > -500])) - float(np.median(chest[chest > -500]))) < 30
    assert sources == {"ct_000001.npy"}
    # drawn patient first, the lung rule still holds (each DICOM file here is its own patient or one
    # anonymous patient: either way only the chest slice passes)
    for seed in range(3):
        a = load_anatomy("ct", "prepared", str(tmp_path / "prep"), 64, seed, np.random.default_rng(seed), per_patient=True)
        assert Path(a.source).name == "ct_000001.npy"
    with pytest.raises(InputError, match="prepared as 'ct'"):
        load_anatomy("mg", "prepared", str(tmp_path / "prep"), 64, 0, np.random.default_rng(0))
    prepare("ct", tmp_path / "dcm", tmp_path / "win", size=64, window="lung", progress=False)
    with pytest.raises(InputError, match="display window"):
        load_anatomy("ct", "prepared", str(tmp_path / "win"), 64, 0, np.random.default_rng(0))


def test_a_setting_added_later_at_its_default_is_the_same_run():
    """Provenance written before mcfast had a setting still resumes when the setting is at its default."""
    from mcfast.synthesis.pipeline import same_recipe

    new = json.loads(json.dumps(_recipe("mg").to_dict()))
    new["pathology"] = [dict(new["pathology"][0])] if new["pathology"] else [{"size": [8, 10], "factor": 1}]
    old = json.loads(json.dumps(new))
    assert same_recipe(old, new)
    del old["anatomy"]["padding_band"]  # written by an mcfast without the setting
    assert same_recipe(old, new)
    new["anatomy"]["padding_band"] = 3  # ... but not when the new run sets it
    assert not same_recipe(old, new)
    new["anatomy"]["padding_band"] = 0
    del old["pathology"][0]["min_overlap"]  # a list item's setting: the same rule
    new["pathology"][0]["min_overlap"] = 0.9  # PathologySpec's default
    assert same_recipe(old, new)
    new["pathology"][0]["min_overlap"] = 0.5
    assert not same_recipe(old, new)
    old["anatomy"]["unknown_old_key"] = 1  # a setting the new run lacks is a different run
    assert not same_recipe(old, new)
    assert not same_recipe(None, new) and same_recipe(None, None)


def test_per_patient_draws_make_every_patient_equally_likely():
    from mcfast.synthesis.sources import draw_order

    patients = ["A"] * 8 + ["B", "C"]
    for per_patient in (False, True):
        order = draw_order(patients, np.random.default_rng(0), per_patient)
        assert sorted(order) == list(range(10))  # every item is tried once
    # patient first: a patient's items come together (two changes of patient in the whole order)
    runs = [patients[k] for k in draw_order(patients, np.random.default_rng(1), True)]
    assert sum(a != b for a, b in zip(runs, runs[1:])) == 2
    first = {flag: np.array([patients[draw_order(patients, np.random.default_rng(s), flag)[0]] == "A"
                             for s in range(600)]).mean() for flag in (False, True)}
    assert first[False] == pytest.approx(0.8, abs=0.06)  # by item: A's 8 of 10 slices
    assert first[True] == pytest.approx(1 / 3, abs=0.06)  # by patient: one of three
    with pytest.raises(InputError, match="per_patient .* needs anatomy.source = 'prepared'"):
        recipe_from_dict({"anatomy": {"source": "phantom", "per_patient": True}}, source="r.toml")

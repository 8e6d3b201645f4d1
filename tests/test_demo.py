"""The embedded default: `mcfast demo` at a tiny size, every promised output present and consistent."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from mcfast.cli import main
from mcfast.demo.defaults import default_checkpoint
from mcfast.io.coco import annotation_mask, read_coco

PATIENT_TAGS = ("PatientBirthDate", "PatientAddress", "OtherPatientIDs", "PatientTelephoneNumbers",
                "InstitutionName", "ReferringPhysicianName")


@pytest.mark.parametrize("modality, model", [("ct", "phantom64"), ("mg", "phantom64"), ("ct", "real"),
                                             ("mg", "real")])
def test_shipped_defaults_are_small_and_load(modality, model):
    from mcfast.train.checkpoint import load_model

    ckpt = default_checkpoint(modality, model)
    assert (ckpt / "model.safetensors").stat().st_size <= 30 * 2**20
    model_, diffusion, config = load_model(ckpt)
    assert config["data"]["modality"] == modality
    assert "trained_on" in config and ("phantom" in config["trained_on"]) == (model == "phantom64")


def test_default_models_are_the_real_ones_and_unknown_names_fail():
    from mcfast.errors import InputError

    assert default_checkpoint("ct").name == "ct_real"
    assert default_checkpoint("mg").name == "mg_mias"
    with pytest.raises(InputError, match="no shipped mg model named 'tiny'"):
        default_checkpoint("mg", "tiny")


def test_mg_mias_model_card_carries_the_licence_and_matches_the_realism_json():
    from pathlib import Path

    card = (default_checkpoint("mg", "real") / "README.md").read_text()
    assert "research use only" in card.lower() and "Suckling" in card and "1994" in card
    config = json.loads((default_checkpoint("mg", "real") / "config.json").read_text())
    assert "research use only" in config["trained_on"].lower()
    assert f"{config['step']} steps" in card and "CPU-hours" in card
    results = Path(__file__).resolve().parents[1] / "docs" / "results" / "realism_mg.json"
    data = json.loads(results.read_text())
    assert data["checkpoint_step"] == config["step"], "the card's numbers are for the shipped weights"
    assert data["checkpoint_total_steps"] == config["history"]["total_steps"]
    block = card.split("<!-- realism:begin -->")[1].split("<!-- realism:end -->")[0]
    for size, sizes in data["sizes"].items():
        for name, r in [("floor", sizes["floor"])] + list(sizes["synthetic"].items()):
            row = next(line for line in block.splitlines() if line.startswith(f"| {size} | {name} |"))
            assert f"{r['patch_cnn']['auc']:.2f}" in row and f"{r['hand_features']['auc']:.2f}" in row, row
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "research use only" in readme.lower() and "Suckling" in readme


def test_ct_real_model_card_names_data_licences_and_matches_the_realism_json():
    import re
    from pathlib import Path

    card = (default_checkpoint("ct", "real") / "README.md").read_text()
    for needed in ("Lung-PET-CT-Dx", "TCGA-LUAD", "TCGA-LUSC", "COVID-19-NY-SBU", "CC BY", "CPU-hours",
                   "scripts/prepare_real.py", "mcfast train"):
        assert needed in card, needed
    assert "MSD lung-tumour patches (CC BY-SA) are not used" in card
    config = json.loads((default_checkpoint("ct", "real") / "config.json").read_text())
    assert f"step {config['step']}" in card or f"{config['step']} steps" in card
    results = Path(__file__).resolve().parents[1] / "docs" / "results" / "realism_ct.json"
    block = card.split("<!-- realism:begin -->")[1].split("<!-- realism:end -->")[0]
    data = json.loads(results.read_text())
    assert data["checkpoint_step"] == config["step"], "the card's numbers are for the shipped weights"
    assert data["checkpoint_total_steps"] == config["history"]["total_steps"]
    for size, sizes in data["sizes"].items():
        for name, r in [("floor", sizes["floor"])] + list(sizes["synthetic"].items()):
            row = next(line for line in block.splitlines() if line.startswith(f"| {size} | {name} |"))
            assert f"{r['patch_cnn']['auc']:.2f}" in row and f"{r['hand_features']['auc']:.2f}" in row, row
    assert re.search(r"\d+ steps", card)


def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n", "2", "--steps", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "index.html" in printed
    page = (out / "index.html").read_text()
    for run, modality, display in (("lung_ct", "ct", "lung.png"), ("mammography", "mg", "image.png")):
        coco = read_coco(out / run / "coco.json")
        assert len(coco["images"]) == 2
        for img in coco["images"]:
            folder = out / run / img["file_name"].split("/")[0]
            assert img["file_name"].endswith(display) and (out / run / img["file_name"]).is_file()
            for name in ("anatomy_ref.png", "pathology_ref.png", "overlay.png", "mask.png", "image.dcm", "seg.dcm"):
                assert (folder / name).is_file(), name
                if name.endswith(".png"):
                    assert f"{run}/{folder.name}/{name}" in page or name == "mask.png"
            if modality == "ct":
                assert all((folder / f"{w}.png").is_file() for w in ("lung", "soft_tissue", "bone"))
            anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
            assert anns, "every demo image has at least one lesion"
            labels = np.load(folder / "labels.npy")
            for ann in anns:
                mask = annotation_mask(ann, img["height"], img["width"])
                x, y, w, h = ann["bbox"]
                assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
                assert mask.sum() == ann["area"] and (labels[mask > 0] > 0).all()
            ds = pydicom.dcmread(folder / "image.dcm")
            assert ds.Modality == modality.upper() and "DERIVED" in ds.ImageType
            assert ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
            # type-2 attributes may be present, but empty: no patient information at all
            assert not any(str(ds.get(tag, "") or "") for tag in PATIENT_TAGS)
            assert str(ds.PatientName).startswith("MCFAST") or "SYNTH" in str(ds.PatientName).upper()
            seg = pydicom.dcmread(folder / "seg.dcm")
            assert seg.Modality == "SEG"
            assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ds.SeriesInstanceUID
    # a re-run skips finished work
    assert main(["demo", "--out", str(out), "--n", "2", "--steps", "4", "--no-progress"]) == 0
    assert "skipped 2 finished" in capsys.readouterr().out
    meta = json.loads((out / "lung_ct" / "000000" / "meta.json").read_text())
    assert meta["lesions"] and meta["anatomy"].startswith("phantom:lung")
    assert meta["height"] == 256  # the real-CT default samples 256², not its 64² training crops
    meta = json.loads((out / "mammography" / "000000" / "meta.json").read_text())
    assert meta["lesions"] and meta["anatomy"].startswith("phantom:breast") and meta["height"] == 256


@pytest.mark.parametrize("modality, run, asset", [("ct", "lung_ct", "default_ct"), ("mg", "mammography", "default_mg")])
def test_demo_phantom64_models_stay_available(tmp_path, capsys, modality, run, asset):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n", "1", "--steps", "3", "--modality", modality,
                 f"--{modality}-model", "phantom64", "--no-progress"]) == 0
    meta = json.loads((out / run / "000000" / "meta.json").read_text())
    assert meta["height"] == 64 and asset in capsys.readouterr().out


def test_demo_jobs_run_the_modalities_at_once_with_the_same_images(tmp_path, capsys):
    """--jobs 2 samples CT and mammography in two threads at once; an image depends on its seed only."""
    for jobs in ("1", "2"):
        assert main(["demo", "--out", str(tmp_path / jobs), "--n", "1", "--steps", "3", "--jobs", jobs,
                     "--no-progress"]) == 0
    for run in ("lung_ct", "mammography"):
        one, two = (np.load(tmp_path / jobs / run / "000000" / "image.npy") for jobs in ("1", "2"))
        assert np.array_equal(one, two), run
    capsys.readouterr()
    assert main(["demo", "--out", str(tmp_path / "x"), "--jobs", "0"]) == 2
    assert "--jobs must be >= 1, got 0" in capsys.readouterr().err and not (tmp_path / "x").exists()

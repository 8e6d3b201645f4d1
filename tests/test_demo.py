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


@pytest.mark.parametrize("modality", ["ct", "mg"])
def test_shipped_defaults_are_small_and_load(modality):
    from mcfast.train.checkpoint import load_model

    ckpt = default_checkpoint(modality)
    assert (ckpt / "model.safetensors").stat().st_size <= 30 * 2**20
    model, diffusion, config = load_model(ckpt)
    assert config["data"]["modality"] == modality
    assert "trained_on" in config and "phantom" in config["trained_on"]


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

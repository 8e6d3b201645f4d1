import json

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from mcfast.errors import InputError
from mcfast.io import dicom
from mcfast.io.datasets import CTSliceDataset, MammogramDataset, PreparedDataset, prepare, read_manifest
from mcfast.io.mammo import MammoTransform
from mcfast.io.windows import hu_to_model, model_to_hu
from mcfast.io.writers import write_ct_dicom


def ct_folder(root, n=4, shape=(16, 16)):
    """A small series (HU rising with the slice) plus a non-DICOM file and a truncated slice."""
    series = root / "series"
    uid = "1.2.826.0.1.3680043.8.498.1"
    for k in range(n):
        hu = np.full(shape, -1000.0 + 300 * k, np.float32)
        hu[:2] = 40.0
        write_ct_dicom(series / f"{k:02d}.dcm", hu, series_uid=uid, instance_number=k + 1)
    # a slice between 01 and 02 whose pixels are missing: skipped at decode time, in the middle of the order
    write_ct_dicom(series / "01b.dcm", np.zeros(shape), series_uid=uid, position=(0.0, 0.0, 1.5))
    ds = pydicom.dcmread(series / "01b.dcm")
    del ds.PixelData
    ds.save_as(series / "01b.dcm")
    (series / "README.txt").write_text("not an image")
    broken = (series / "00.dcm").read_bytes()
    (series / "zz_truncated.dcm").write_bytes(broken[:400])
    return series


def test_ct_dataset_items_are_model_space_and_cached(tmp_path, monkeypatch):
    src = ct_folder(tmp_path)
    ds = CTSliceDataset(src, size=8, cache_dir=tmp_path / "cache")
    assert len(ds) == 4 and len(ds.skipped) == 3
    x = ds[1]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    np.testing.assert_allclose(model_to_hu(x[0, 4, 4].item()), -700.0, atol=0.1)
    assert ds[-1][0, 5, 5] > ds[0][0, 5, 5]  # ordered along the series
    # second construction: no decoding at all
    monkeypatch.setattr(dicom, "read_ct_slice", lambda p: pytest.fail("decoded again"))
    again = CTSliceDataset(src, size=8, cache_dir=tmp_path / "cache")
    torch.testing.assert_close(again[1], x)
    np.testing.assert_allclose(model_to_hu(again[2][0, 5, 5].item()), -400.0, atol=0.1)  # row after the skip
    assert sorted(str(p) for p in again.skipped) == sorted(str(p) for p in ds.skipped)


def test_ct_dataset_with_window_and_without_cache(tmp_path):
    src = ct_folder(tmp_path)
    ds = CTSliceDataset(src, size=16, window="lung")
    x = ds[0][0]
    assert x[8, 8] == pytest.approx(-1.0 + 2 * (-1000 + 1350) / 1500, abs=1e-5)
    assert x.min() >= -1 and x.max() <= 1


def mg_folder(root):
    root.mkdir(parents=True, exist_ok=True)
    h, w = 60, 40
    rr, cc = np.mgrid[:h, :w]
    for name, side in (("r.png", "right"), ("l.png", "left")):
        x = cc if side == "left" else (w - 1 - cc)
        breast = ((rr - h / 2) ** 2 + (x * 1.3) ** 2) < (h * 0.4) ** 2
        Image.fromarray(np.where(breast, 180, 5).astype(np.uint8)).save(root / name)
    Image.fromarray(np.tile(np.array([255, 0, 0], np.uint8), (8, 8, 1))).save(root / "colour.png")
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(root / "blank.png")
    return root


def test_mammogram_dataset(tmp_path):
    ds = MammogramDataset(mg_folder(tmp_path / "mg"), size=32)
    assert len(ds) == 2 and ds[0].shape == (1, 32, 32)
    assert set(ds.skipped.values()) == {"RGB colour image; mcfast needs grayscale (convert it to 8- or 16-bit gray)",
                                        "no breast found (the image has no contrast)"}
    for i in range(2):
        img = ds[i][0].numpy()
        assert img[:, :8].mean() > img[:, -8:].mean()  # chest wall on the left for both
        assert img.min() == -1.0 and img.max() <= 1.0
    t = MammoTransform.from_dict(ds.items[0]["transform"])
    assert t.out_shape == (32, 32) and t.src_shape == (60, 40)


def test_prepare_ct_writes_a_training_folder(tmp_path):
    src = ct_folder(tmp_path)
    out = tmp_path / "out"
    result = prepare("ct", src, out, size=8, progress=False)
    assert result.items == 4 and len(result.skipped) == 3
    m = read_manifest(out)
    assert m["modality"] == "ct" and m["counts"] == {"items": 4, "skipped": 3}
    assert m["normalisation"]["kind"] == "hu" and m["normalisation"]["hu_range"] == [-1024.0, 3071.0]
    reasons = {s["source"].split("/")[-1]: s["reason"] for s in m["skipped"]}
    assert reasons["README.txt"] == "not a DICOM file" and "zz_truncated.dcm" in reasons
    assert reasons["01b.dcm"].startswith("no PixelData")
    files = sorted(p.name for p in out.glob("*.npy"))
    assert files == [it["file"] for it in m["items"]]
    arr = np.load(out / files[2])
    assert arr.shape == (8, 8) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[5, 5], hu_to_model(-400.0), atol=1e-5)
    assert m["items"][2]["source"].endswith("02.dcm") and m["items"][2]["sop_uid"]
    pd = PreparedDataset(out)
    assert len(pd) == 4 and pd[2].shape == (1, 8, 8)
    # a re-run replaces the items, a bad window is one clear error
    assert prepare("ct", src, out, size=8, window="lung", progress=False).items == 4
    assert read_manifest(out)["normalisation"]["window"]["center"] == -600
    with pytest.raises(InputError, match="unknown window"):
        prepare("ct", src, out, size=8, window="lungs", progress=False)
    with pytest.raises(InputError, match="outside the input folder"):
        prepare("ct", src, src / "x", size=8, progress=False)


def test_prepare_mg_and_nothing_usable(tmp_path):
    out = tmp_path / "out"
    result = prepare("mg", mg_folder(tmp_path / "mg"), out, size=16, progress=False)
    assert result.items == 2 and len(result.skipped) == 2
    assert "transform" in json.loads((out / "manifest.json").read_text())["items"][0]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    with pytest.raises(InputError, match=r"no usable CT images \(1 files skipped\)"):
        prepare("ct", empty, tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2" / "manifest.json").exists()


@pytest.mark.data
def test_real_ct_dataset(shared_data, tmp_path):
    ds = CTSliceDataset(shared_data / "lung-pet-ct-dx" / "A0001" / "dicom" / "2.000000-5mm-40805", size=32)
    assert len(ds) == 64 and len(ds.skipped) == 0
    x = torch.stack([ds[i] for i in range(0, 64, 8)])
    assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.05


def test_read_mammogram_scales_16_bit_files_by_the_depth_used(tmp_path):
    from mcfast.io.datasets import read_mammogram

    a = np.array([[0, 2048, 4095]], np.uint16)  # 12-bit values in a 16-bit PNG
    Image.fromarray(a).save(tmp_path / "a.png")
    np.testing.assert_allclose(read_mammogram(tmp_path / "a.png"), a / 4095.0, atol=1e-6)
    Image.fromarray(np.array([[0, 128, 255]], np.uint8)).save(tmp_path / "b.png")
    np.testing.assert_allclose(read_mammogram(tmp_path / "b.png"), [[0, 128 / 255, 1]], atol=1e-6)


def test_prepare_skips_coronal_and_sagittal_reformats_with_a_counted_reason(tmp_path, capsys):
    from mcfast.cli import main

    root = tmp_path / "study"
    for k, (name, iop) in enumerate([("axial", (1, 0, 0, 0, 1, 0)), ("coronal", (1, 0, 0, 0, 0, -1)),
                                     ("sagittal", (0, 1, 0, 0, 0, -1)), ("coronal2", (1, -0.016, 0, 0, 0, -1))]):
        path = root / name / "1.dcm"
        write_ct_dicom(path, np.full((16, 16), -500.0, np.float32), series_uid=f"1.2.826.0.1.3680043.8.498.9{k}")
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = list(iop)
        ds.PatientID = "P7"
        ds.save_as(path)
        assert dicom.slice_plane(ds) == name.rstrip("2")
    assert main(["prepare", "--modality", "ct", "--in", str(root), "--out", str(tmp_path / "out"), "--size", "16",
                 "--no-progress"]) == 0
    manifest = read_manifest(tmp_path / "out")
    assert [it["plane"] for it in manifest["items"]] == ["axial"] and manifest["items"][0]["patient_id"] == "P7"
    assert manifest["skipped_by_reason"] == {
        "coronal slice (not axial): a reformat, not training data": 2,
        "sagittal slice (not axial): a reformat, not training data": 1}
    out = capsys.readouterr().out
    assert "2 skipped: coronal slice" in out and "1 skipped: sagittal slice" in out


def test_real_covid_reformats_are_skipped(shared_data, tmp_path):
    result = prepare("ct", shared_data / "covid19-ny-sbu-ct" / "A002304", tmp_path / "out", size=32, progress=False)
    reasons = read_manifest(tmp_path / "out")["skipped_by_reason"]
    assert result.items == 2
    assert sum(v for k, v in reasons.items() if "reformat" in k) >= 4


def test_split_prepare_keeps_each_patient_on_one_side(shared_data, tmp_path):
    from mcfast.io.split_prepare import SplitDataConfig, prepare_split

    config = SplitDataConfig(root=shared_data, collections=["tcga-lung-ct"], size=32,
                             validation_patients=["TCGA-17-Z029", "TCGA-34-5231"])
    counts = prepare_split(config, tmp_path / "split", progress=False)
    train, val = (read_manifest(tmp_path / "split" / s) for s in ("train", "val"))
    assert counts == {"train": len(train["items"]), "val": len(val["items"])}
    assert set(val["patients"]) == {"TCGA-17-Z029", "TCGA-34-5231"}
    assert not set(train["patients"]) & set(val["patients"])
    staged = read_manifest(tmp_path / "split" / "all" / "tcga-lung-ct")
    assert counts["train"] + counts["val"] == 77 - 5 and train["dropped"]["pixel duplicate"] == 1
    assert staged["skipped_by_reason"][dicom.DUPLICATE_REASON] == 4  # same SOPInstanceUID: left out by the scan
    with pytest.raises(InputError, match="NOPE"):
        prepare_split(SplitDataConfig(root=shared_data, collections=["tcga-lung-ct"], size=32,
                                      validation_patients=["NOPE"]), tmp_path / "bad", progress=False)


def test_ct_real_data_config_holds_out_enough_patients():
    from pathlib import Path

    from mcfast.io.split_prepare import SplitDataConfig

    repo = Path(__file__).resolve().parents[1]
    config = SplitDataConfig.load(repo / "configs" / "ct_real_data.toml", base=repo)
    assert len(set(config.validation_patients)) >= 8
    assert config.collections == ["lung-pet-ct-dx", "tcga-lung-ct", "covid19-ny-sbu-ct"]

"""`mcfast info` and `mcfast prepare` through mcfast.cli.main."""
import numpy as np
import pytest

from mcfast import cli


@pytest.fixture
def main():
    return cli.main


@pytest.mark.data
def test_info_on_the_real_ct_folder(main, shared_data, capsys):
    assert main(["info", str(shared_data / "lung-pet-ct-dx" / "A0001" / "dicom")]) == 0
    out = capsys.readouterr().out
    assert "2 DICOM series, 128 files" in out
    assert "64 x 512 x 512" in out and "0.842 x 0.842 mm" in out
    assert "HU range          -1024 .. " in out and "C -600 W 1600" in out and "lung C -600 W 1500" in out
    assert "MONOCHROME2" in out and "Implicit VR Little Endian" in out
    assert "11 VOC box(es) on 11 slice(s)" in out and "9 VOC box(es) on 9 slice(s)" in out


@pytest.mark.data
def test_info_on_a_mias_png(main, shared_data, capsys):
    assert main(["info", str(shared_data / "mias" / "images" / "mdb001.png")]) == 0
    out = capsys.readouterr().out
    assert "1024 x 1024" in out and "8-bit grayscale" in out and "chest wall on the right" in out
    assert "circumscribed mass, benign: centre row 598, col 535 (Info.txt x 535, y 425), radius 197" in out


def test_info_errors_are_one_line(main, tmp_path, capsys):
    (tmp_path / "x.dcm").write_bytes(b"\0" * 200)
    assert main(["info", str(tmp_path / "x.dcm")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("mcfast info: error: ") and "x.dcm" in err
    assert main(["info", str(tmp_path / "nope")]) == 2


def test_prepare_then_info(main, tmp_path, capsys):
    from mcfast.io.writers import write_ct_dicom
    for k in range(3):
        write_ct_dicom(tmp_path / "in" / f"{k}.dcm", np.full((12, 12), 100.0 * k), series_uid="1.2.3.4",
                       instance_number=k + 1)
    (tmp_path / "in" / "junk.bin").write_bytes(b"junk")
    out = tmp_path / "out"
    assert main(["prepare", "--modality", "ct", "--in", str(tmp_path / "in"), "--out", str(out), "--size", "8",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "prepared 3 CT item(s) of 8x8" in text and "(1 file(s) skipped)" in text
    assert main(["info", str(out)]) == 0
    assert "items             3 of 8 x 8" in capsys.readouterr().out
    assert main(["prepare", "--modality", "mg", "--in", str(tmp_path / "in"), "--out", str(out),
                 "--window", "lung"]) == 2
    assert "--window applies to --modality ct only" in capsys.readouterr().err


def test_prepared_folder_feeds_the_trainer(tmp_path):
    """`mcfast train --data OUT` reads the prepared folder (mcfast.train.data.ImageFolderDataset)."""
    data = pytest.importorskip("mcfast.train.data")
    from mcfast.io.datasets import prepare
    from mcfast.io.writers import write_ct_dicom
    for k in range(2):
        write_ct_dicom(tmp_path / "in" / f"{k}.dcm", np.full((12, 12), 50.0 * k), series_uid="1.2.3.5",
                       instance_number=k + 1)
    prepare("ct", tmp_path / "in", tmp_path / "out", size=8, progress=False)
    ds = data.ImageFolderDataset(tmp_path / "out")
    assert len(ds) == 2 and tuple(ds[0].shape) == (1, 8, 8)


def test_info_on_generated_files(main, tmp_path, capsys):
    import h5py
    from mcfast.io.coco import CocoWriter
    from mcfast.io.writers import write_mg_dicom, write_npy

    x = np.zeros((20, 16))
    x[:, :8] = 0.8
    write_mg_dicom(tmp_path / "mg.dcm", x, photometric="MONOCHROME1", bits=10, laterality="R")
    assert main(["info", str(tmp_path / "mg.dcm")]) == 0
    out = capsys.readouterr().out
    assert "MONOCHROME1 (inverted: dense tissue bright)" in out and "bits stored       10" in out
    assert "R / MLO" in out
    write_npy(tmp_path / "a.npy", x * 2 - 1)
    assert main(["info", str(tmp_path / "a.npy")]) == 0
    assert "(model space)" in capsys.readouterr().out
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f["images"], f["labels"] = np.zeros((2, 1, 8, 8), np.float32), np.ones((2, 1, 8, 8))
    assert main(["info", str(tmp_path / "p.h5")]) == 0
    assert "2 of 8 x 8" in capsys.readouterr().out
    w = CocoWriter(["mass"])
    w.add_annotation(w.add_image("a.png", 20, 16), x > 0, "mass", {"severity": "benign"})
    w.save(tmp_path / "c.json")
    assert main(["info", str(tmp_path / "c.json")]) == 0
    assert "mass (1)" in capsys.readouterr().out
    (tmp_path / "f.xyz").write_text("?")
    assert main(["info", str(tmp_path / "f.xyz")]) == 2
    assert "unknown file type .xyz" in capsys.readouterr().err

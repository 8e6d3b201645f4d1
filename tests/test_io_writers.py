import numpy as np
import pydicom
import pytest
from PIL import Image

from mcfast.errors import InputError
from mcfast.io.dicom import read_ct, read_mg_dicom
from mcfast.io.images import read_image
from mcfast.io.writers import write_ct_dicom, write_dicom_seg, write_mg_dicom, write_npy, write_png, write_png16


def test_png_8bit_windowed_and_model_space(tmp_path):
    hu = np.array([[-1350.0, -600.0, 150.0]])
    write_png(tmp_path / "w.png", hu, window="lung")
    arr = np.asarray(Image.open(tmp_path / "w.png"))
    assert arr.dtype == np.uint8 and arr.tolist() == [[0, 128, 255]]
    write_png(tmp_path / "m.png", np.array([[-1.0, 0.0, 1.0]]), value_range=(-1, 1))
    assert np.asarray(Image.open(tmp_path / "m.png")).tolist() == [[0, 128, 255]]


def test_png16_round_trip(tmp_path):
    x = np.random.default_rng(0).random((6, 7))
    write_png16(tmp_path / "a.png", x)
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), x, atol=1 / 65535)


def test_npy_and_atomicity(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (5, 5)).astype(np.float32)
    write_npy(tmp_path / "a.npy", x)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), x)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match=r"a\.npy: array has 1 NaN/Inf"):
        write_npy(tmp_path / "a.npy", bad)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), x)  # old file intact
    with pytest.raises(InputError, match="outside"):
        write_npy(tmp_path / "b.npy", x * 3)
    write_npy(tmp_path / "b.npy", x * 1000, space="hu")
    with pytest.raises(InputError, match="NaN"):
        write_png(tmp_path / "c.png", bad, value_range=(-1, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npy"]  # nothing half-written


@pytest.fixture
def reference(tmp_path):
    """A 'real' CT file with identifying attributes that must not leak into synthetic output."""
    ref = tmp_path / "ref.dcm"
    write_ct_dicom(ref, np.zeros((4, 4)), spacing=(0.5, 0.6), patient_id="X")
    ds = pydicom.dcmread(ref)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "P-12345", "19600101"
    ds.InstitutionName, ds.KVP = "General Hospital", 120
    ds.save_as(ref)
    return ref


def test_ct_dicom_round_trip_and_deidentified(tmp_path, reference):
    hu = np.random.default_rng(1).uniform(-1024, 3071, (24, 20)).astype(np.float32)
    path = write_ct_dicom(tmp_path / "s.dcm", hu, window="soft_tissue", reference=reference)
    back = read_ct(path)
    assert np.abs(back.hu - hu).max() <= 0.5 + 1e-3  # rescale slope 1: within half a HU
    assert back.windows == [(40.0, 400.0)] and back.spacing == (0.5, 0.6)
    ds, ref = pydicom.dcmread(path), pydicom.dcmread(reference)
    assert ds.pixel_array.dtype == np.int16 and ds.RescaleSlope == 1
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.PatientIdentityRemoved == "YES" and ds.BurnedInAnnotation == "NO"
    assert str(ds.PatientName) == "SYNTHETIC^MCFAST" and ds.PatientID != "P-12345"
    assert "PatientBirthDate" not in ds or not ds.PatientBirthDate
    assert "InstitutionName" not in ds and ds.KVP == 120  # geometry/acquisition only
    assert "mcfast" in ds.DerivationDescription and "ynthetic" in ds.DerivationDescription
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert ds[key].value != ref[key].value
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_ct_series_shares_uids(tmp_path):
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for k in range(3):
        write_ct_dicom(tmp_path / f"{k}.dcm", np.full((4, 4), 10.0 * k), study_uid=study, series_uid=series,
                       instance_number=k + 1, slice_thickness=2.0)
    vol = read_ct(tmp_path)
    np.testing.assert_array_equal(vol.hu[:, 0, 0], [0, 10, 20])
    assert vol.spacing[0] == 2.0


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_mg_dicom_round_trip(tmp_path, photometric):
    x = np.random.default_rng(2).random((10, 12))
    path = write_mg_dicom(tmp_path / "m.dcm", x, photometric=photometric, bits=12, laterality="L")
    back = read_mg_dicom(path)
    np.testing.assert_allclose(back.image, x, atol=0.5 / 4095 + 1e-6)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == photometric and ds.BitsStored == 12 and ds.ImageLaterality == "L"
    stored = ds.pixel_array
    dense = np.unravel_index(np.argmax(x), x.shape)
    assert (stored[dense] == stored.max()) == (photometric == "MONOCHROME2")
    with pytest.raises(InputError, match="must lie in"):
        write_mg_dicom(tmp_path / "bad.dcm", x * 2 - 1)


def test_dicom_seg(tmp_path):
    src = write_ct_dicom(tmp_path / "s.dcm", np.zeros((16, 16)))
    mask = np.zeros((16, 16), np.uint8)
    mask[4:9, 2:6] = 1
    seg_path = write_dicom_seg(tmp_path / "seg.dcm", mask, src, label="tumour")
    seg = pydicom.dcmread(seg_path)
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "tumour"
    np.testing.assert_array_equal(seg.pixel_array, mask)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(src).SeriesInstanceUID
    with pytest.raises(InputError, match="does not match the source"):
        write_dicom_seg(tmp_path / "seg2.dcm", mask[:8], src)
    assert not (tmp_path / "seg2.dcm").exists()


def test_dicom_seg_over_a_mammogram(tmp_path):
    src = write_mg_dicom(tmp_path / "m.dcm", np.random.default_rng(0).random((20, 16)), laterality="R")
    mask = np.zeros((20, 16), np.uint8)
    mask[3:9, 4:10] = 1
    seg = pydicom.dcmread(write_dicom_seg(tmp_path / "s.dcm", mask, src, label="circumscribed mass"))
    np.testing.assert_array_equal(seg.pixel_array, mask)

"""DICOM reading: generated files for each syntax and bad input, and the real Lung-PET-CT-Dx series."""
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless,
                         RLELossless, generate_uid)

from mcfast.errors import InputError
from mcfast.io.dicom import (DUPLICATE_REASON, DicomWarning, load_series, read_ct, read_ct_slice, read_ct_tree,
                             read_mg_dicom, scan_dicom_tree)
from mcfast.io.windows import HU_MIN, Window

SERIES = generate_uid()


def make_ds(arr: np.ndarray, *, modality="CT", slope=1.0, intercept=-1024.0, position=(0.0, 0.0, 0.0),
            instance=1, photometric="MONOCHROME2", bits_stored=16, series_uid=SERIES, syntax=ExplicitVRLittleEndian):
    """A minimal single-frame grayscale image; ``arr`` holds stored values (uint16 or int16)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, series_uid, generate_uid()
    ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.8]
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if arr.dtype == np.int16 else 0
    if modality == "CT":
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = arr.tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax == ExplicitVRBigEndian:  # OW pixel data is stored in the file's byte order
        ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian,
               little_endian=syntax != ExplicitVRBigEndian)
    return path


def stored(shape=(8, 10), seed=0, high=4000):
    return np.random.default_rng(seed).integers(0, high, shape).astype(np.uint16)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_ct_hu_from_slope_intercept_in_each_vr(tmp_path, syntax):
    raw = stored()
    path = save(make_ds(raw, slope=0.5, intercept=-1000.0, syntax=syntax), tmp_path / "a.dcm")
    s = read_ct(path)
    assert s.hu.dtype == np.float32 and s.hu.shape == (8, 10)
    np.testing.assert_array_equal(s.hu, raw * 0.5 - 1000.0)
    assert s.spacing == (0.7, 0.8)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_compressed_pixel_data_decodes(tmp_path, syntax):
    raw = stored(shape=(16, 16), seed=1)
    ds = make_ds(raw, syntax=ExplicitVRLittleEndian)
    ds.BitsStored, ds.HighBit = 12, 11
    ds.compress(syntax)
    path = tmp_path / "c.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_ct(path).hu, raw.astype(np.float32) - 1024.0)


def test_multivalued_windows_and_padding(tmp_path):
    raw = stored(seed=2, high=3000)
    raw[0, :] = 63536  # padding value far outside the data (unsigned)
    ds = make_ds(raw)
    ds.WindowCenter, ds.WindowWidth = ["-600", "40"], ["1500", "400"]
    ds.PixelPaddingValue = 63536
    s = read_ct(save(ds, tmp_path / "w.dcm"))
    assert s.windows == [Window(-600, 1500), Window(40, 400)]
    assert (s.hu[0] == HU_MIN).all()
    np.testing.assert_array_equal(s.hu[1:], raw[1:].astype(np.float32) - 1024.0)


def _series(folder: Path, n=5, z0=100.0, dz=-2.5, shape=(6, 6), with_position=True, series_uid=SERIES):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    order = rng.permutation(n)  # file names and instance numbers must not decide the order
    truth = []
    for k in range(n):
        raw = np.full(shape, 100 * k, dtype=np.uint16)
        z = z0 + dz * k
        inst = int(order[k]) + 1 if with_position else k + 1
        ds = make_ds(raw, position=(0.0, 0.0, z) if with_position else None, instance=inst, series_uid=series_uid)
        save(ds, folder / f"img{order[k]:02d}.dcm")
        truth.append((z, 100 * k - 1024.0))
    return sorted(truth)


def test_series_is_ordered_by_position_along_the_normal(tmp_path):
    truth = _series(tmp_path / "s")
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    vol = read_ct(tmp_path / "s")
    assert vol.hu.shape == (5, 6, 6) and vol.ordered_by == "position"
    np.testing.assert_array_equal(vol.hu[:, 0, 0], [hu for _, hu in truth])
    assert vol.spacing == (2.5, 0.7, 0.8)
    assert len(set(vol.sop_uids)) == 5 and vol.index_of(vol.sop_uids[3]) == 3


def test_series_falls_back_to_instance_number(tmp_path):
    _series(tmp_path / "s", with_position=False)
    vol = read_ct(tmp_path / "s")
    assert vol.ordered_by == "instance"
    np.testing.assert_array_equal(vol.hu[:, 0, 0], np.arange(5) * 100 - 1024.0)


def test_tree_of_series(tmp_path):
    _series(tmp_path / "a")
    _series(tmp_path / "b", n=3, series_uid=generate_uid())
    vols = read_ct_tree(tmp_path)
    assert sorted(len(v) for v in vols) == [3, 5]
    with pytest.raises(InputError, match="holds 2 series"):
        read_ct(tmp_path)


def test_inconsistent_slice_sizes(tmp_path):
    save(make_ds(stored((6, 6)), position=(0, 0, 0)), tmp_path / "a.dcm")
    save(make_ds(stored((6, 7)), position=(0, 0, 1)), tmp_path / "b.dcm")
    with pytest.raises(InputError, match=r"b\.dcm.*inconsistent slice sizes"):
        read_ct(tmp_path)


def test_truncated_file(tmp_path):
    path = save(make_ds(stored((32, 32))), tmp_path / "t.dcm")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 700])
    with pytest.raises(InputError, match=r"t\.dcm"):
        read_ct(path)


def test_no_pixel_data(tmp_path):
    ds = make_ds(stored())
    del ds.PixelData
    with pytest.raises(InputError, match=r"n\.dcm: no PixelData"):
        read_ct(save(ds, tmp_path / "n.dcm"))


def test_not_dicom(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"hello" * 100)
    with pytest.raises(InputError, match=r"x\.dcm: not a DICOM file"):
        read_ct(tmp_path / "x.dcm")
    scan = scan_dicom_tree(tmp_path)
    assert not scan.series and tmp_path / "x.dcm" in scan.skipped


def test_rgb_and_palette_refused(tmp_path):
    rgb = make_ds(np.zeros((4, 4), np.uint16), photometric="RGB")
    rgb.SamplesPerPixel, rgb.BitsAllocated, rgb.BitsStored, rgb.HighBit, rgb.PlanarConfiguration = 3, 8, 8, 7, 0
    rgb.PixelData = np.zeros((4, 4, 3), np.uint8).tobytes()
    with pytest.raises(InputError, match=r"rgb\.dcm: RGB image"):
        read_ct(save(rgb, tmp_path / "rgb.dcm"))
    pal = make_ds(stored(), photometric="PALETTE COLOR")
    with pytest.raises(InputError, match="PALETTE COLOR"):
        read_ct(save(pal, tmp_path / "pal.dcm"))


def test_multiframe_where_single_expected(tmp_path):
    ds = make_ds(np.zeros((3, 4, 4), np.uint16).reshape(12, 4))
    ds.Rows, ds.NumberOfFrames = 4, 3
    with pytest.raises(InputError, match="multi-frame image .3 frames"):
        read_ct_slice(save(ds, tmp_path / "mf.dcm"))


def test_mg_monochrome1_is_inverted_so_dense_is_bright(tmp_path):
    raw = np.zeros((8, 8), np.uint16)
    raw[:, :4] = 1023  # MONOCHROME1: high stored value = dark on screen
    ds = make_ds(raw, modality="MG", photometric="MONOCHROME1", bits_stored=10)
    mg = read_mg_dicom(save(ds, tmp_path / "m1.dcm"))
    assert mg.voi == "range" and mg.bits_stored == 10
    np.testing.assert_allclose(mg.image[:, :4], 0.0)
    np.testing.assert_allclose(mg.image[:, 4:], 1.0)
    ds2 = make_ds(raw, modality="MG", photometric="MONOCHROME2", bits_stored=10)
    np.testing.assert_allclose(read_mg_dicom(save(ds2, tmp_path / "m2.dcm")).image, 1.0 - mg.image)


def test_mg_window_and_voi_lut(tmp_path):
    raw = np.array([[0, 1000, 2000, 4095]], np.uint16)
    ds = make_ds(raw, modality="MG", bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = 1000, 2000
    mg = read_mg_dicom(save(ds, tmp_path / "w.dcm"))
    np.testing.assert_allclose(mg.image, [[0.0, 0.5, 1.0, 1.0]], atol=1e-6)
    # VOI LUT: 4096 entries of 8-bit output, a step at 2048
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 8]
    lut.add_new("LUTData", "US", [0] * 2048 + [255] * 2048)
    ds.VOILUTSequence = [lut]
    mg = read_mg_dicom(save(ds, tmp_path / "lut.dcm"))
    assert mg.voi == "lut"
    np.testing.assert_allclose(mg.image, [[0, 0, 0, 1]])


# ----------------------------------------------------------------------------------- real data


@pytest.mark.data
def test_real_ct_series_has_plausible_hu(shared_data):
    root = shared_data / "lung-pet-ct-dx" / "A0001" / "dicom"
    vols = read_ct_tree(root)
    assert len(vols) == 2
    for vol in vols:
        assert vol.hu.shape == (64, 512, 512) and vol.hu.dtype == np.float32
        assert vol.ordered_by == "position" and vol.spacing[0] == pytest.approx(5.0)
        mid = vol.hu[32]
        assert -1030 < np.median(mid[20:40, 236:276]) < -950  # air in front of the chest
        hist, edges = np.histogram(mid, bins=40, range=(-200, 200))
        assert 0 <= edges[hist.argmax()] <= 100  # soft tissue peak
        assert vol.windows  # the file's own window (multi-valued tag)
    assert {vols[0].windows[0], vols[1].windows[0]} == {Window(-600, 1600), Window(60, 350)}


@pytest.mark.parametrize("name,syntax_word", [("JPGExtended.dcm", "JPEG Extended"),
                                              ("MR_small_jp2klossless.dcm", "JPEG 2000"),
                                              ("MR_small_RLE.dcm", "RLE")])
def test_pydicom_sample_files_decode_through_plugins(name, syntax_word):
    """Compressed samples shipped inside pydicom: decoded by pylibjpeg plugins (JPEG) or natively (RLE)."""
    from pydicom.data import get_testdata_file
    from mcfast.io.images import read_image

    path = get_testdata_file(name)
    assert syntax_word in pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name
    img = read_image(path)
    assert img.ndim == 2 and np.isfinite(img).all() and img.max() > img.min()


def test_pydicom_truncated_sample_is_one_line():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("MR_truncated.dcm")
    with pytest.raises(InputError, match=r"MR_truncated\.dcm: cannot decode pixel data, the file may be truncated"):
        read_ct_slice(path)


def test_undecodable_transfer_syntax_is_one_line(tmp_path):
    from pydicom.encaps import encapsulate

    ds = make_ds(stored())
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder anywhere
    ds.PixelData = encapsulate([b"\0" * 100])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "mpeg.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InputError, match=r"mpeg\.dcm: cannot decode MPEG2 .* pixel data \(pydicom has no decoder"):
        read_ct(path)


def test_mg_sigmoid_window_and_inverse_presentation_lut(tmp_path):
    raw = np.array([[0, 1000, 2000]], np.uint16)
    ds = make_ds(raw, modality="MG", bits_stored=12)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 1000, 2000, "SIGMOID"
    img = read_mg_dicom(save(ds, tmp_path / "s.dcm")).image
    np.testing.assert_allclose(img, 1 / (1 + np.exp(-4 * (raw.astype(float) - 1000) / 2000)), atol=1e-6)
    ds.PresentationLUTShape = "INVERSE"  # MONOCHROME2 shown inverted: low stored values are dense
    np.testing.assert_allclose(read_mg_dicom(save(ds, tmp_path / "i.dcm")).image, 1 - img, atol=1e-6)


# --------------------------------------------------------------------------- issue 17: no silent assumptions


def test_ct_slice_without_rescale_warns_naming_the_file(tmp_path):
    raw = stored()
    ds = make_ds(raw)
    del ds.RescaleSlope, ds.RescaleIntercept
    path = save(ds, tmp_path / "norescale.dcm")
    with pytest.warns(DicomWarning, match=r"norescale\.dcm: no RescaleSlope/RescaleIntercept; stored values read as"):
        s = read_ct_slice(path)
    np.testing.assert_array_equal(s.hu, raw.astype(np.float32))  # slope 1, intercept 0, as the warning says
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a slice with its rescale tags reads without a word
        read_ct_slice(save(make_ds(raw), tmp_path / "ok.dcm"))


def test_series_without_rescale_warns_once_naming_its_files(tmp_path):
    _series(tmp_path / "s", n=3)
    for f in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(f)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(f)
    with pytest.warns(DicomWarning) as record:
        read_ct(tmp_path / "s")
    assert len(record) == 1
    assert all(f.name in str(record[0].message) for f in (tmp_path / "s").iterdir())


def test_series_holding_every_slice_twice_drops_the_copies(tmp_path):
    truth = _series(tmp_path / "s")
    for f in sorted((tmp_path / "s").iterdir()):
        shutil.copy(f, f.with_name(f.stem + "_copy.dcm"))  # the same SOPInstanceUID twice
    with pytest.warns(DicomWarning, match=r"5 file\(s\) left out as duplicate slice .*: img00_copy\.dcm \(= img00"):
        vol = read_ct(tmp_path / "s")
    assert vol.hu.shape[0] == 5 and vol.spacing == (2.5, 0.7, 0.8)
    np.testing.assert_array_equal(vol.hu[:, 0, 0], [hu for _, hu in truth])
    assert not any("_copy" in p.name for p in vol.paths)
    with pytest.warns(DicomWarning):
        scan = scan_dicom_tree(tmp_path / "s")
    assert sorted(p.name for p, why in scan.skipped.items() if why == DUPLICATE_REASON) == \
        sorted(p.stem + "_copy.dcm" for p in vol.paths)


def test_slices_exported_again_under_new_uids_are_duplicates_by_position(tmp_path):
    _series(tmp_path / "s", n=3)
    for f in sorted((tmp_path / "s").iterdir()):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(f.with_name(f.stem + "_re.dcm"))
    with pytest.warns(DicomWarning, match=r"3 file\(s\) left out as duplicate slice"):
        vol = read_ct(tmp_path / "s")
    assert len(vol) == 3 and vol.spacing[0] == 2.5


def test_load_series_never_reports_a_zero_spacing(tmp_path):
    """Headers that were not scanned (so still hold a duplicate position) are refused, naming both files."""
    _series(tmp_path / "s", n=2)
    a, b = sorted((tmp_path / "s").iterdir())
    ds = pydicom.dcmread(b)
    ds.ImagePositionPatient = pydicom.dcmread(a, stop_before_pixels=True).ImagePositionPatient
    ds.save_as(b)
    headers = [(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in (a, b)]
    with pytest.raises(InputError, match=r"img0[01]\.dcm: same position as img0[01]\.dcm in series .*, a duplicate"):
        load_series(SERIES, headers)


def test_prepare_writes_no_duplicate_slices(tmp_path):
    from mcfast.io.datasets import prepare

    _series(tmp_path / "s", n=3)
    for f in sorted((tmp_path / "s").iterdir()):
        shutil.copy(f, f.with_name(f.stem + "_copy.dcm"))
    with pytest.warns(DicomWarning):
        result = prepare("ct", tmp_path / "s", tmp_path / "out", size=8, progress=False)
    assert result.items == 3


def test_file_cut_after_400_bytes_is_truncated_not_missing_pixels(tmp_path):
    path = save(make_ds(stored((16, 16))), tmp_path / "full.dcm")
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:400])
    with pytest.raises(InputError, match=r"cut\.dcm: truncated DICOM file \(400 bytes"):
        read_ct(tmp_path / "cut.dcm")
    # Wherever the file is cut (past the preamble), the line says truncated, never just "no PixelData".
    for n in range(133, len(data), 3):
        (tmp_path / "cut.dcm").write_bytes(data[:n])
        with pytest.raises(InputError) as err:
            read_ct_slice(tmp_path / "cut.dcm")
        assert "truncated" in str(err.value), (n, str(err.value))

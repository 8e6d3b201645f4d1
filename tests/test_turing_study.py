"""Turing study creation: selection, balance, determinism, rendering, fixed-size encoding, colour refused."""
import io
import sqlite3
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, PngImagePlugin
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mcfast.errors import InputError
from mcfast.evaluate.turing import render
from mcfast.evaluate.turing.study import create_study, find_images, open_or_create


def write_ct_dicom(path, hu: np.ndarray, slope=1.0, intercept=-1024.0):
    """A minimal CT DICOM file holding ``hu`` as stored values with slope/intercept."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Modality, ds.SOPClassUID, ds.SOPInstanceUID = "CT", meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = np.round((hu - intercept) / slope).astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_inputs(root, n_real=4, n_fake=4, seed=0):
    """Real: PNGs of varied sizes with a text chunk; synthetic: NPY in HU. Names say which is which."""
    rng = np.random.default_rng(seed)
    real, fake = root / "real_in", root / "fake_in"
    real.mkdir()
    fake.mkdir()
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "scanner-real-X")
    for i in range(n_real):
        pixels = (rng.random((24 + 8 * i, 40)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(real / f"REAL_{i}.png", pnginfo=info)
    for i in range(n_fake):
        Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(fake / f"FAKE_{i}.png")
    return real, fake


def make_ct_inputs(root, n=6, seed=0):
    rng = np.random.default_rng(seed)
    real, fake = root / "real_ct", root / "fake_ct"
    (real / "series").mkdir(parents=True)
    fake.mkdir()
    for i in range(n):
        write_ct_dicom(real / "series" / f"1-{i:02d}.dcm", rng.normal(-400, 500, (32, 32)))
        np.save(fake / f"s{i}.npy", rng.normal(-400, 500, (48, 48)).astype(np.float32))
    return real, fake


def test_find_images_recursive_sorted_and_checked(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ("z.png", "a/b/x.npy", "a/y.DCM", ".hidden/h.png", "notes.txt"):
        (tmp_path / rel).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == ["a/b/x.npy", "a/y.DCM", "z.png"]
    with pytest.raises(InputError, match="no PNG, NPY or DICOM"):
        (tmp_path / "empty").mkdir()
        find_images(tmp_path / "empty")
    with pytest.raises(InputError, match="not a folder"):
        find_images(tmp_path / "missing")


def test_study_is_balanced_shuffled_and_bare(tmp_path):
    real, fake = make_inputs(tmp_path)
    store = create_study(tmp_path / "study", real, fake, n=6, seed=3, size=32, progress=False)
    images = store.images()
    assert sorted(im.truth for im in images) == ["real"] * 3 + ["synthetic"] * 3
    assert [im.position for im in images] == list(range(6))
    files = sorted((tmp_path / "study" / "images").iterdir())
    assert sorted(f.name for f in files) == sorted(f"{im.image_id}.png" for im in images)
    for f in files:
        data = f.read_bytes()
        assert render.png_chunk_types(data) == ["IHDR", "IDAT", "IEND"]    # no tEXt / tIME / pHYs
        assert b"scanner" not in data and b"REAL" not in data
        with Image.open(f) as img:
            assert (img.size, img.mode) == ((32, 32), "L")
    for im in images:  # ids are opaque: nothing of the source name, fixed length hex
        assert len(im.image_id) == 24 and int(im.image_id, 16) >= 0


def test_study_is_deterministic(tmp_path):
    real, fake = make_inputs(tmp_path)
    a = create_study(tmp_path / "a", real, fake, n=6, seed=7, size=32, progress=False)
    b = create_study(tmp_path / "b", real, fake, n=6, seed=7, size=32, progress=False)
    c = create_study(tmp_path / "c", real, fake, n=6, seed=8, size=32, progress=False)
    assert a.images() == b.images()
    for im in a.images():
        assert (tmp_path / "a" / "images" / im.file).read_bytes() == (tmp_path / "b" / "images" / im.file).read_bytes()
    assert [im.image_id for im in c.images()] != [im.image_id for im in a.images()]


def test_ct_windows_are_drawn_balanced(tmp_path):
    real, fake = make_ct_inputs(tmp_path)
    store = create_study(tmp_path / "study", real, fake, n=12, seed=0, size=32, progress=False)
    by_class = {t: sorted(im.window for im in store.images() if im.truth == t) for t in ("real", "synthetic")}
    assert by_class["real"] == by_class["synthetic"] == sorted(["lung", "soft_tissue", "bone"] * 2)
    con = sqlite3.connect(tmp_path / "study" / "study.sqlite3")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_window_rendering_values(tmp_path):
    hu = np.array([[-1350.0, -600.0], [150.0, 3000.0]])
    np.testing.assert_allclose(render.apply_window(hu, *render.CT_WINDOWS["lung"]), [[0, 0.5], [1, 1]])
    np.save(tmp_path / "x.npy", np.array([[-160.0, 40.0, 240.0]]))
    np.testing.assert_allclose(render.load_display(tmp_path / "x.npy", "ct", "soft_tissue"), [[0, 0.5, 1]])
    write_ct_dicom(tmp_path / "x.dcm", np.full((4, 4), -600.0))
    np.testing.assert_allclose(render.load_display(tmp_path / "x.dcm", "ct", "lung"), 0.5)
    pixels = render.fit_square(render.load_display(tmp_path / "x.dcm", "ct", "lung"), 8)
    assert pixels.shape == (8, 8) and abs(int(pixels[4, 4]) - 128) <= 1
    # 16-bit PNG shown as is: 65535 → white.
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(tmp_path / "w.png")
    np.testing.assert_allclose(render.load_display(tmp_path / "w.png", "ct", None), 1.0)
    # Mammography NPY is stretched to its range.
    np.save(tmp_path / "m.npy", np.array([[10.0, 20.0], [30.0, 30.0]]))
    np.testing.assert_allclose(render.load_display(tmp_path / "m.npy", "mg", None), [[0, 0.5], [1, 1]])


def test_fit_square_letterboxes():
    pixels = render.fit_square(np.ones((10, 20)), 20)
    assert pixels.shape == (20, 20)
    assert pixels[:5].max() == 0 and pixels[15:].max() == 0 and pixels[5:15].min() == 255


def test_paper_windows():
    assert {k: tuple(v) for k, v in render.CT_WINDOWS.items()} == {
        "lung": (-600, 1500), "soft_tissue": (40, 400), "bone": (400, 1800)}


def test_bad_inputs_name_the_problem(tmp_path):
    real, fake = make_inputs(tmp_path, n_real=2, n_fake=4)
    with pytest.raises(InputError, match="even"):
        create_study(tmp_path / "s", real, fake, n=5, progress=False)
    with pytest.raises(InputError, match="--seed -1"):
        create_study(tmp_path / "s", real, fake, n=4, seed=-1, progress=False)
    with pytest.raises(InputError, match="2 real images found, the study needs 3"):
        create_study(tmp_path / "s", real, fake, n=6, progress=False)
    np.save(fake / "nan.npy", np.full((4, 4), np.nan))
    with pytest.raises(InputError, match="nan.npy: image contains NaN"):
        render.load_display(fake / "nan.npy", "ct", "lung")
    np.save(fake / "cube.npy", np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match=r"cube.npy: expected a 2-D grayscale image, got shape \(2, 3, 4\)"):
        render.load_display(fake / "cube.npy", "ct", "lung")
    (fake / "broken.dcm").write_bytes(b"not a dicom")
    with pytest.raises(InputError, match="broken.dcm"):
        render.load_display(fake / "broken.dcm", "ct", "lung")
    (fake / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png: not an image file"):
        render.load_display(fake / "broken.png", "ct", None)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_pngs_are_refused_and_nothing_is_left(tmp_path, mode):
    real, fake = make_inputs(tmp_path, n_real=3, n_fake=3)
    rng = np.random.default_rng(0)
    colour = (rng.random((20, 20, 3)) * 255).astype(np.uint8)
    if mode == "LA":  # gray, but with real transparency
        img = Image.fromarray(np.dstack([colour[..., 0], colour[..., 1]]), "LA")
    else:
        img = Image.fromarray(colour).convert(mode)
    img.save(fake / "FAKE_1.png")
    with pytest.raises(InputError, match=r"FAKE_1\.png: .*(colour|palette|transparency)") as info:
        create_study(tmp_path / "s", real, fake, n=6, seed=0, size=16, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "s" / "study.sqlite3").exists()
    assert list((tmp_path / "s").iterdir()) == []          # no images/, no staging folder
    # A grayscale picture that happens to be saved as RGB is still grayscale, as everywhere in mcfast.
    gray = colour[..., 0]
    Image.fromarray(np.dstack([gray] * 3)).save(fake / "FAKE_1.png")
    store = create_study(tmp_path / "s", real, fake, n=6, seed=0, size=16, progress=False)
    assert store.total() == 6


def test_images_dir_is_never_clobbered_and_stale_staging_is_cleaned(tmp_path):
    real, fake = make_inputs(tmp_path)
    (tmp_path / "s" / "images").mkdir(parents=True)
    (tmp_path / "s" / "images" / "mine.png").write_bytes(b"user data")
    with pytest.raises(InputError, match="images: already exists but no study is here"):
        create_study(tmp_path / "s", real, fake, n=4, progress=False)
    assert (tmp_path / "s" / "images" / "mine.png").read_bytes() == b"user data"
    (tmp_path / "t" / ".images.abcd_123").mkdir(parents=True)   # left by a create killed midway
    (tmp_path / "t" / ".images.abcd_123" / "x.png").write_bytes(b"half")
    (tmp_path / "t" / ".images.keep").mkdir()                  # not a name mkdtemp makes: not ours
    create_study(tmp_path / "t", real, fake, n=4, progress=False)
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [".images.keep", "images", "study.sqlite3"]


def test_stored_png_has_one_length_whatever_the_pixels():
    rng = np.random.default_rng(0)
    # 255 x 257 raw bytes fill exactly one stored deflate block; 256 x 257 need two.
    for shape in [(1, 1), (16, 16), (255, 256), (256, 256), (300, 700)]:
        lengths = set()
        for pixels in (np.zeros(shape, np.uint8), np.full(shape, 255, np.uint8),
                       (rng.random(shape) * 255).astype(np.uint8)):
            data = render.encode_png(pixels)
            lengths.add(len(data))
            assert render.png_chunk_types(data) == ["IHDR", "IDAT", "IEND"]
            with Image.open(io.BytesIO(data)) as img:                 # a standard PNG decoder reads it back
                assert img.mode == "L" and img.size == shape[::-1]
                np.testing.assert_array_equal(np.asarray(img), pixels)
        assert lengths == {render.stored_png_length(*shape)}


def test_mixed_display_formats_are_refused(tmp_path):
    real, _ = make_inputs(tmp_path)
    _, fake_ct = make_ct_inputs(tmp_path)
    with pytest.raises(InputError, match="same format"):
        create_study(tmp_path / "s", real, fake_ct, n=4, progress=False)


def test_open_or_create_checks_options(tmp_path):
    real, fake = make_inputs(tmp_path)
    store, created = open_or_create(tmp_path / "s", real, fake, n=4, seed=1, size=16)
    assert created and store.total() == 4
    store, created = open_or_create(tmp_path / "s", real, fake, n=4)
    assert not created
    with pytest.raises(InputError, match="created with seed = 1, not 2"):
        open_or_create(tmp_path / "s", seed=2)
    with pytest.raises(InputError, match="give --real and --synthetic"):
        open_or_create(tmp_path / "other")
    with pytest.raises(InputError, match="already exists"):
        create_study(tmp_path / "s", real, fake, n=4, progress=False)


def test_mammogram_dicom_monochrome1_is_inverted(tmp_path):
    write_ct_dicom(tmp_path / "mg.dcm", np.array([[0.0, 100.0], [200.0, 200.0]]), intercept=0.0)
    ds = pydicom.dcmread(tmp_path / "mg.dcm")
    ds.Modality, ds.PhotometricInterpretation = "MG", "MONOCHROME1"
    ds.save_as(tmp_path / "mg.dcm")
    np.testing.assert_allclose(render.load_display(tmp_path / "mg.dcm", "mg", None), [[1, 0.5], [0, 0]])


DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.data
@pytest.mark.skipif(not (DATA / "mias" / "images").is_dir(), reason=f"real data not found at {DATA / 'mias'}")
def test_mias_mammograms_as_real(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    sources = sorted((DATA / "mias" / "images").glob("mdb*.png"))[:2]
    for src in sources:  # links, not copies: the data stays where it is
        (real / src.name).symlink_to(src)
    fake = tmp_path / "fake"
    fake.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        np.save(fake / f"{i}.npy", rng.random((128, 128)))
    store = create_study(tmp_path / "s", real, fake, n=4, seed=0, size=256, modality="mg", progress=False)
    for im in store.images():
        with Image.open(tmp_path / "s" / "images" / im.file) as img:
            assert (img.size, img.mode) == ((256, 256), "L")
            pixels = np.asarray(img)
        if im.truth == "real":  # shown as is: the 1024² MIAS image downscaled 4x keeps its mean grey level
            with Image.open(im.source) as original:
                assert abs(pixels.mean() - np.asarray(original).mean()) < 2.0

import numpy as np
import pytest
from PIL import Image

from mcfast.errors import InputError
from mcfast.io.images import read_image, read_npy, read_raster


def test_png_8_and_16_bit(tmp_path):
    a8 = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(a8).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, a8 / 255.0, atol=1e-7)
    a16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(a16).save(tmp_path / "b.png")
    np.testing.assert_allclose(read_image(tmp_path / "b.png"), a16 / 65535.0, atol=1e-7)
    raw, bits = read_raster(tmp_path / "b.png", normalize=False)
    assert bits == 16 and raw.max() == 63000


def test_pgm_8_and_16_bit(tmp_path):
    a8 = np.random.default_rng(0).integers(0, 256, (5, 7)).astype(np.uint8)
    (tmp_path / "a.pgm").write_bytes(b"P5\n7 5\n255\n" + a8.tobytes())
    np.testing.assert_allclose(read_image(tmp_path / "a.pgm") * 255.0, a8, atol=1e-4)
    a16 = np.random.default_rng(1).integers(0, 65536, (5, 7)).astype(">u2")
    (tmp_path / "b.pgm").write_bytes(b"P5\n7 5\n65535\n" + a16.tobytes())
    raw, bits = read_raster(tmp_path / "b.pgm", normalize=False)
    np.testing.assert_array_equal(raw, a16.astype(np.float32))


def test_rgb_refused_but_gray_stored_as_rgb_accepted(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(InputError, match=r"c\.png: RGB colour image"):
        read_image(tmp_path / "c.png")
    gray = np.repeat(np.arange(16, dtype=np.uint8).reshape(4, 4, 1), 3, axis=2)
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_allclose(read_image(tmp_path / "g.png") * 255, gray[..., 0], atol=1e-4)


def test_palette_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).convert("P").save(tmp_path / "p.png")
    with pytest.raises(InputError, match=r"p\.png: palette"):
        read_image(tmp_path / "p.png")


def test_truncated_and_non_image(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t\.png: unreadable or truncated"):
        read_image(tmp_path / "t.png")
    (tmp_path / "n.png").write_text("hello")
    with pytest.raises(InputError, match=r"n\.png: not an image"):
        read_image(tmp_path / "n.png")


def test_npy_checks(tmp_path):
    np.save(tmp_path / "ok.npy", np.ones((1, 4, 5), np.float64))
    assert read_npy(tmp_path / "ok.npy").shape == (4, 5)
    bad = np.zeros((4, 4), np.float32)
    bad[1, 1], bad[2, 2] = np.nan, np.inf
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match=r"nan\.npy: array contains 2 NaN/Inf"):
        read_image(tmp_path / "nan.npy")
    np.save(tmp_path / "rgb.npy", np.zeros((4, 4, 3)))
    with pytest.raises(InputError, match=r"rgb\.npy: array has shape \(4, 4, 3\)"):
        read_image(tmp_path / "rgb.npy")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match=r"junk\.npy: not a readable"):
        read_image(tmp_path / "junk.npy")


@pytest.mark.data
def test_real_mias_png(shared_data):
    img = read_image(shared_data / "mias" / "images" / "mdb001.png")
    assert img.shape == (1024, 1024) and 0.0 <= img.min() and img.max() <= 1.0

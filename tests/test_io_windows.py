import numpy as np
import pytest
import torch

from mcfast.errors import InputError
from mcfast.io.windows import (HU_MAX, HU_MIN, WINDOWS, apply_window, get_window, hu_to_model, model_to_hu,
                               model_to_window, parse_window, window_to_model)


def test_presets_match_the_documented_values():
    assert WINDOWS["lung"] == (-600, 1500)
    assert WINDOWS["soft_tissue"] == WINDOWS["mediastinum"] == (40, 400)
    assert WINDOWS["bone"] == (400, 1800)
    assert get_window("Soft-Tissue") == WINDOWS["soft_tissue"]


def test_apply_window_maps_edges_and_clips():
    hu = np.array([-1350, -600, 150, 2000], dtype=np.float32)
    out = apply_window(hu, *WINDOWS["lung"])
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 1.0], atol=1e-6)
    assert out.dtype == np.float32


def test_hu_model_maps_are_exact_inverses_numpy_and_torch():
    hu = np.linspace(HU_MIN, HU_MAX, 4096, dtype=np.float32)
    x = hu_to_model(hu)
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_allclose(model_to_hu(x), hu, atol=1e-3)
    t = torch.from_numpy(hu)
    np.testing.assert_allclose(model_to_hu(hu_to_model(t)).numpy(), hu, atol=1e-3)
    # outside the range: clipped, not extrapolated
    np.testing.assert_allclose(hu_to_model(np.array([-3000.0, 5000.0])), [-1.0, 1.0])
    x = np.linspace(-1, 1, 101)
    np.testing.assert_allclose(hu_to_model(model_to_hu(x)), x, atol=1e-6)


def test_window_to_model_round_trip_inside_window():
    hu = np.linspace(-1300, 100, 50)
    np.testing.assert_allclose(model_to_window(window_to_model(hu, "lung"), "lung"), hu, atol=1e-6)


@pytest.mark.parametrize("bad", ["lungs", (40, 0), (np.nan, 400), "abc,def", "1,2,3"])
def test_bad_windows_are_one_line_errors(bad):
    with pytest.raises(InputError):
        parse_window(bad) if isinstance(bad, str) and "," in bad else get_window(bad)


def test_parse_window_numbers():
    assert parse_window("-600,1500") == (-600.0, 1500.0)
    assert parse_window("bone") == WINDOWS["bone"]

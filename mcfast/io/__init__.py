"""Medical image I/O: DICOM CT/MG, PNG/PGM/NPY, windows, mammogram geometry, annotations,
datasets for training, and writers (PNG, NPY, synthetic DICOM, DICOM SEG, COCO JSON).

Public API (``import mcfast.io`` imports no submodule, so it stays cheap; a submodule is imported on
first use as an attribute, ``mcfast.io.dicom``, through the module ``__getattr__`` below, or by its own
import):

- ``windows``: ``WINDOWS``, ``apply_window``, ``hu_to_model``, ``model_to_hu``, ``window_to_model``
- ``dicom``: ``read_ct`` (file → CTSlice, series folder → CTVolume), ``read_ct_tree``, ``read_mg_dicom``
  (re-exported from ``dicom_file``, ``dicom_ct``, ``dicom_series`` and ``dicom_mg``)
- ``images``: ``read_image`` (PNG/PGM/TIFF/NPY/DICOM → grayscale float32)
- ``mammo``: ``breast_mask``, ``normalise_laterality``, ``resize_keep_aspect``, ``prepare_mammogram``
- ``annotations``: ``read_mias_info``, ``read_voc``, ``read_voc_folder``, ``match_voc_to_slices``,
  ``read_msd_patches``
- ``coco``: ``CocoWriter``, ``read_coco``, RLE/polygon helpers
- ``datasets``: ``CTSliceDataset``, ``MammogramDataset``, ``PreparedDataset``, ``prepare``
  (re-exported from ``training_items`` and ``prepare``)
- ``writers``: ``write_png``, ``write_png16``, ``write_npy``, ``write_ct_dicom``, ``write_mg_dicom``,
  ``write_dicom_seg``
"""
from __future__ import annotations

import importlib as _importlib
import importlib.util as _importlib_util


def __getattr__(name: str):
    # A submodule (mcfast.io.dicom, ...) is an attribute without its own import, as in mcfast/__init__.py.
    if not name.startswith("_") and _importlib_util.find_spec(f"{__name__}.{name}") is not None:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

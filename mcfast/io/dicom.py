"""Read DICOM: CT slices, series and trees of series (→ HU), and mammograms (DICOM MG → [0, 1]).

Every problem a user can cause (not DICOM, truncated, no pixels, colour, multi-frame, a series
whose slices differ in size, a compressed syntax no installed handler decodes) becomes one
:class:`~mcfast.errors.InputError` line naming the file; library tracebacks never leak out.

The readers live in four modules, one job each; this module is their one import path
(``from mcfast.io.dicom import read_ct``):

- :mod:`mcfast.io.dicom_file`: one file: the header (truncation caught), the stored pixels of one
  grayscale frame, the file's windows and pixel spacing, :class:`DicomWarning`
- :mod:`mcfast.io.dicom_ct`: a CT slice in HU (:class:`CTSlice`, :func:`read_ct_slice`,
  :func:`hu_from_dataset`), :class:`CTVolume`, the slice geometry (:func:`slice_plane`)
- :mod:`mcfast.io.dicom_series`: folders: :func:`scan_dicom_tree` (duplicates left out),
  :func:`slice_order`, :func:`load_series`, :func:`read_ct`, :func:`read_ct_tree`
- :mod:`mcfast.io.dicom_mg`: mammograms (:class:`MGImage`, :func:`mg_from_dataset`, :func:`read_mg_dicom`)
"""
from __future__ import annotations

from mcfast.io.dicom_ct import (CTSlice, CTVolume, hu_from_dataset, missing_rescale, read_ct_slice, slice_plane,
                                warn_missing_rescale)
from mcfast.io.dicom_file import FILES_NAMED, DicomWarning, file_windows, is_dicom_file, read_dataset
from mcfast.io.dicom_mg import MGImage, mg_from_dataset, read_mg_dicom
from mcfast.io.dicom_series import (DUPLICATE_REASON, SAME_POSITION_MM, DicomScan, drop_duplicate_slices,
                                    load_series, read_ct, read_ct_tree, scan_dicom_tree, slice_order)

__all__ = [
    "FILES_NAMED", "DicomWarning", "file_windows", "is_dicom_file", "read_dataset",
    "CTSlice", "CTVolume", "hu_from_dataset", "missing_rescale", "read_ct_slice", "slice_plane", "warn_missing_rescale",
    "DUPLICATE_REASON", "SAME_POSITION_MM", "DicomScan", "drop_duplicate_slices", "load_series", "read_ct",
    "read_ct_tree", "scan_dicom_tree", "slice_order",
    "MGImage", "mg_from_dataset", "read_mg_dicom",
]

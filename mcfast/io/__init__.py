"""Medical image I/O: DICOM CT/MG, PNG/PGM/NPY, windows, mammogram geometry, annotations,
datasets for training, and writers (PNG, NPY, synthetic DICOM, DICOM SEG, COCO JSON).

Public API (submodules are imported on demand so that ``import mcfast.io`` stays cheap):

- ``windows``: ``WINDOWS``, ``apply_window``, ``hu_to_model``, ``model_to_hu``, ``window_to_model``
- ``dicom``: ``read_ct`` (file → CTSlice, series folder → CTVolume), ``read_ct_tree``, ``read_mg_dicom``
- ``images``: ``read_image`` (PNG/PGM/TIFF/NPY/DICOM → grayscale float32)
- ``mammo``: ``breast_mask``, ``normalise_laterality``, ``resize_keep_aspect``, ``prepare_mammogram``
- ``annotations``: ``read_mias_info``, ``read_voc``, ``read_voc_folder``, ``match_voc_to_slices``,
  ``read_msd_patches``
- ``coco``: ``CocoWriter``, ``read_coco``, RLE/polygon helpers
- ``datasets``: ``CTSliceDataset``, ``MammogramDataset``, ``PreparedDataset``, ``prepare``
- ``writers``: ``write_png``, ``write_png16``, ``write_npy``, ``write_ct_dicom``, ``write_mg_dicom``,
  ``write_dicom_seg``
"""

"""Pathology: lesion patches (extraction, procedural), intensity matching, augmentation, placement."""
from mcfast.pathology.patches import (Patch, extract_mias_patch, extract_msd_patch, extract_voc_patch, mask_box,
                                      mias_row)
from mcfast.pathology.placement import Placement, place_patch, place_patch_at
from mcfast.pathology.synthetic import ct_nodule_patch, mg_mass_patch
from mcfast.pathology.transform import augment, ct_transform, gaussian_falloff, mammo_transform, prepare_patch

__all__ = ["Patch", "Placement", "augment", "ct_nodule_patch", "ct_transform", "extract_mias_patch",
           "extract_msd_patch", "extract_voc_patch", "gaussian_falloff", "mammo_transform", "mask_box",
           "mg_mass_patch", "mias_row", "place_patch", "place_patch_at", "prepare_patch"]

"""Anatomy: tissue masks (lungs, breast) and procedural phantoms (B-spline lung CT, MLO breast)."""
from mcfast.anatomy.breast_phantom import breast_phantom, breast_phantom_labels, breast_phantom_with_mask
from mcfast.anatomy.masks import breast_mask, lung_mask
from mcfast.anatomy.phantom import closed_bspline, lung_phantom, lung_phantom_labels, lung_phantom_with_masks

__all__ = ["breast_mask", "breast_phantom", "breast_phantom_labels", "breast_phantom_with_mask", "closed_bspline", "lung_mask",
           "lung_phantom", "lung_phantom_labels", "lung_phantom_with_masks"]

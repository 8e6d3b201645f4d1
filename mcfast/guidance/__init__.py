"""Multi-condition weighted ILVR guidance: filters, conditions, the PyTorch oracle and the sampler hook."""
from mcfast.guidance.conditions import (Condition, PatchWeight, conditions_per_image, gaussian_patch_weight,
                                        paste_patch)
from mcfast.guidance.filters import FILTERS, downsample, lowpass, upsample
from mcfast.guidance.ilvr import ILVRGuidance
from mcfast.guidance.oracle import guided_correction

__all__ = ["Condition", "PatchWeight", "conditions_per_image", "gaussian_patch_weight", "paste_patch",
           "FILTERS", "downsample", "lowpass", "upsample", "ILVRGuidance", "guided_correction"]

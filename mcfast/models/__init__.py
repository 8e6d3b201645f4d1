"""Denoising networks."""
from mcfast.models.unet import PRESETS, UNetModel, attention_factors, preset_config

__all__ = ["UNetModel", "PRESETS", "preset_config", "attention_factors"]

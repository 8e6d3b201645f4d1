"""The default models shipped inside the package, and the built-in demo recipes.

Each modality has two: ``real`` (the crop-trained model on real scans, sampled at 256-512²; the default:
mcfast/assets/ct_real on TCIA chest CT, mcfast/assets/mg_mias on MIAS films, research use only) and
``phantom64`` (mcfast/assets/default_ct / default_mg, the 64² models trained on mcfast's own phantoms).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from mcfast.constants import MODALITIES
from mcfast.errors import CheckpointError, InputError

# (modality, model name) -> (asset folder, demo recipe)
MODELS = {
    ("ct", "real"): ("ct_real", "demo_ct_real.toml"),
    ("ct", "phantom64"): ("default_ct", "demo_ct.toml"),
    ("mg", "real"): ("mg_mias", "demo_mg_real.toml"),
    ("mg", "phantom64"): ("default_mg", "demo_mg.toml"),
}
DEFAULT_MODEL = {"ct": "real", "mg": "real"}


def _entry(modality: str, model: str | None) -> tuple[str, str]:
    model = model or DEFAULT_MODEL.get(modality, "")
    if (modality, model) not in MODELS:
        names = ", ".join(m for (mod, m) in MODELS if mod == modality)
        raise InputError(f"no shipped {modality} model named {model!r} (shipped: {names})")
    return MODELS[(modality, model)]


def default_checkpoint(modality: str, model: str | None = None) -> Path:
    """Folder of the shipped ``model`` for ``modality`` ("ct" or "mg"); default :data:`DEFAULT_MODEL`."""
    folder, _ = _entry(modality, model)
    path = Path(str(resources.files("mcfast") / "assets" / folder))
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path}: the shipped {modality} model is missing (reinstall mcfast, or pass "
                              "--ckpt-ct/--ckpt-mg with your own run)")
    return path


def demo_recipe(modality: str, model: str | None = None) -> Path:
    """The built-in demo recipe that goes with the shipped ``model``."""
    _, recipe = _entry(modality, model)
    return Path(str(resources.files("mcfast") / "configs" / recipe))

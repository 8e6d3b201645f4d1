"""The small default models shipped inside the package, and the built-in demo recipes."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from mcfast.errors import CheckpointError

MODALITIES = ("ct", "mg")


def default_checkpoint(modality: str) -> Path:
    """Folder of the shipped default run for ``modality`` ("ct" or "mg")."""
    path = Path(str(resources.files("mcfast") / "assets" / f"default_{modality}"))
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path}: the shipped default {modality} model is missing (reinstall mcfast, or pass "
                              "--ckpt-ct/--ckpt-mg with your own run)")
    return path


def demo_recipe(modality: str) -> Path:
    return Path(str(resources.files("mcfast") / "configs" / f"demo_{modality}.toml"))

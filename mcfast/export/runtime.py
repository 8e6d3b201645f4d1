"""Loading an exported sampler: the ops library first, then the TorchScript module.

A saved sampler that calls ``torch.ops.mcfast.*`` needs those ops registered before
``torch.jit.load``; with torch alone a service does::

    torch.ops.load_library(path_of_the_ops_library)   # mcfast.ops.library_path() prints it
    sampler = torch.jit.load("sampler.pt")
    images = sampler(refs, factors, stop_steps, weights, seed=0)

:func:`load_sampler` does the same with a clear error when the library is missing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mcfast.errors import InputError, McfastError
from mcfast.export import jit_compat


def load_ops_library(path: str | os.PathLike | None = None) -> bool:
    """Register ``torch.ops.mcfast.*``: from ``path`` when given, else mcfast's own build. True when loaded."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: ops library not found")
        try:
            torch.ops.load_library(str(path))
        except OSError as exc:
            raise InputError(f"{path}: cannot load the ops library ({exc})") from None
        return True
    from mcfast import ops
    try:
        ops.load()
    except McfastError:
        return False
    return True


def load_sampler(path: str | os.PathLike, ops_library: str | os.PathLike | None = None,
                 map_location: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load ``sampler.pt`` (made by ``mcfast export``) after registering the mcfast ops."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: sampler file not found")
    loaded = load_ops_library(ops_library)
    try:
        module = jit_compat.load(path, map_location=map_location)
    except RuntimeError as exc:
        text = str(exc)
        if "mcfast::" in text or "mcfast." in text:
            hint = "" if loaded else " (mcfast's compiled op library is not built or not found)"
            raise InputError(f"{path}: the sampler calls torch.ops.mcfast ops that are not registered{hint}; "
                             f"load the ops library first (torch.ops.load_library(mcfast.ops.library_path()))") from None
        raise InputError(f"{path}: not a TorchScript sampler ({text.splitlines()[0] if text else exc})") from None
    if not hasattr(module, "metadata"):
        raise InputError(f"{path}: a TorchScript module but not an mcfast sampler (no metadata())")
    return module.eval()


def sampler_metadata(module: Any) -> dict:
    """The export settings stored in a (scripted or eager) sampler."""
    return json.loads(module.metadata())

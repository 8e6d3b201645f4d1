"""TorchScript calls with torch 2.14's deprecation warning silenced — and nothing else.

torch 2.14 marks ``torch.jit.script`` / ``save`` / ``load`` deprecated with a FutureWarning
("`torch.jit.X` is deprecated. Please switch to ..."). TorchScript is still the format the
services load today and still works, so mcfast filters exactly that warning (category and
message) around its own calls; every other warning, including other FutureWarnings raised
while scripting, stays visible. See docs/export.md for the status and the torch.export path.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Iterator

import torch

# Anchored on the exact wording of torch/jit/_script.py and _serialization.py.
_DEPRECATION = r"`torch\.jit\.(script|save|load)` is deprecated\. Please switch to"


@contextlib.contextmanager
def quiet_jit_deprecation() -> Iterator[None]:
    """Ignore only torch.jit's own FutureWarning about its deprecation inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=FutureWarning)
        yield


def script(obj: Any) -> torch.jit.ScriptModule:
    """``torch.jit.script(obj)`` without the deprecation FutureWarning."""
    with quiet_jit_deprecation():
        return torch.jit.script(obj)


def save(module: torch.jit.ScriptModule, path: str | os.PathLike) -> None:
    """``torch.jit.save(module, path)`` without the deprecation FutureWarning."""
    with quiet_jit_deprecation():
        torch.jit.save(module, str(path))


def load(path: str | os.PathLike, map_location: str | torch.device | None = None) -> torch.jit.ScriptModule:
    """``torch.jit.load(path)`` without the deprecation FutureWarning."""
    with quiet_jit_deprecation():
        return torch.jit.load(str(path), map_location=map_location)

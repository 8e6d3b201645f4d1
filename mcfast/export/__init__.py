"""Deployable samplers: TorchScript (the whole guided loop) and AOTInductor (one guided step).

- :mod:`.torchscript` — :class:`GuidedSampler`: U-Net + respaced schedule + the whole guided loop as
  one ``torch.jit.script`` module; :mod:`.opsampler` — its variant calling ``torch.ops.mcfast.guided_step``
  (through ``mcfast.ops.step.guided_step``).
- :mod:`.inputs` — conditions → the sampler's tensor inputs, and the safetensors file the C++ runner reads.
- :mod:`.runtime` — loading a saved sampler (ops library first).
- :mod:`.aoti` — ``torch.export`` + AOTInductor packages (``.pt2``) of the U-Net and of one guided step.
- :mod:`.jit_compat` — TorchScript calls with only torch 2.14's deprecation FutureWarning filtered.
- :mod:`.build` — ``build_sampler`` (which of the two classes), ``script_sampler``, and ``export_torchscript`` /
  ``export_pt2`` from a run folder (used by ``mcfast export``).
"""
from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use, so that `mcfast export --help` (which only needs the option names) does not import torch.
_WHERE = {
    "export_pt2": "build", "export_torchscript": "build", "build_sampler": "build", "script_sampler": "build",
    "load_inputs": "inputs", "pack_conditions": "inputs", "save_inputs": "inputs",
    "load_ops_library": "runtime", "load_sampler": "runtime", "sampler_metadata": "runtime",
    "GuidedSampler": "torchscript",
}
OPS_CHOICES = ("auto", "require", "off")  # `mcfast export --ops`; defined here so the CLI needs no torch

__all__ = ["GuidedSampler", "build_sampler", "script_sampler", "export_torchscript", "export_pt2",
           "pack_conditions", "save_inputs", "load_inputs", "load_ops_library", "load_sampler", "sampler_metadata"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"mcfast.export.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'mcfast.export' has no attribute {name!r}")

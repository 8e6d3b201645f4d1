"""Deployable samplers (issue 6).

- :mod:`.torchscript` — :class:`GuidedSampler`: U-Net + respaced schedule + the whole guided loop as
  one ``torch.jit.script`` module; :mod:`.opsampler` — its variant calling ``torch.ops.mcfast.guided_step``.
- :mod:`.inputs` — conditions → the sampler's tensor inputs, and the safetensors file the C++ runner reads.
- :mod:`.runtime` — loading a saved sampler (ops library first).
- :mod:`.aoti` — ``torch.export`` + AOTInductor packages (``.pt2``) of the U-Net and of one guided step.
- :mod:`.jit_compat` — TorchScript calls with only torch 2.14's deprecation FutureWarning filtered.
- :mod:`.build` — ``export_torchscript`` / ``export_pt2`` from a run folder (used by ``mcfast export``).
"""
from mcfast.export.build import export_pt2, export_torchscript
from mcfast.export.inputs import load_inputs, pack_conditions, save_inputs
from mcfast.export.runtime import load_ops_library, load_sampler, sampler_metadata
from mcfast.export.torchscript import GuidedSampler, build_sampler, script_sampler

__all__ = ["GuidedSampler", "build_sampler", "script_sampler", "export_torchscript", "export_pt2",
           "pack_conditions", "save_inputs", "load_inputs", "load_ops_library", "load_sampler", "sampler_metadata"]

"""mcfast: annotated synthetic lung CT and mammograms from multi-condition ILVR-guided DDPMs.

``import mcfast`` registers the compiled ops ``torch.ops.mcfast.*`` and their fake kernels (now when
torch is imported already, else as soon as it is; see :mod:`mcfast.ops`), and imports no torch
itself, so that ``mcfast --help`` stays torch-free. Sub-packages load on first use
(``mcfast.ops``, ``mcfast.io``, ...; module ``__getattr__``), and so do the names of the Python API
(``mcfast.Synthesizer``, ``mcfast.sample``, ``mcfast.Condition``, ...; docs/api.md). ``mcfast.ops.has_ops()`` tells whether
the compiled library is there.
"""
from __future__ import annotations

import importlib as _importlib
import importlib.util as _importlib_util

__version__ = "0.1.0"

# Names re-exported lazily from a module: {"Name": "mcfast.module"}: the high-level API and the stable
# low-level pieces (docs/api.md), so that user code need not know the module layout.
_LAZY: dict[str, str] = {
    "Synthesizer": "mcfast.api", "SyntheticImage": "mcfast.api", "build_recipe": "mcfast.api",
    "save": "mcfast.api", "to_coco": "mcfast.api",
    "Recipe": "mcfast.synthesis.recipe", "load_recipe": "mcfast.synthesis.recipe",
    "create_diffusion": "mcfast.diffusion.gaussian", "sample": "mcfast.diffusion.samplers",
    "sdedit_start": "mcfast.diffusion.samplers",
    "Condition": "mcfast.guidance.conditions", "ILVRGuidance": "mcfast.guidance.ilvr",
    "load_model": "mcfast.train.checkpoint", "make_model_fn": "mcfast.models.inference",
    "lung_phantom": "mcfast.anatomy.phantom", "lung_phantom_with_masks": "mcfast.anatomy.phantom",
    "breast_phantom": "mcfast.anatomy.breast_phantom", "breast_phantom_with_mask": "mcfast.anatomy.breast_phantom",
    "hu_to_model": "mcfast.io.windows", "model_to_hu": "mcfast.io.windows",
}


def __getattr__(name: str):
    # Sub-packages and modules (mcfast.ops, mcfast.io, ...) are attributes without their own import.
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and _importlib_util.find_spec(f"{__name__}.{name}") is not None:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    import pkgutil

    return sorted(set(globals()) | set(_LAZY) | {m.name for m in pkgutil.iter_modules(__path__)})


from mcfast.ops import load_with_torch as _load_with_torch  # noqa: E402  (imports no torch)

_load_with_torch()

"""mcfast: annotated synthetic lung CT and mammograms from multi-condition ILVR-guided DDPMs.

``import mcfast`` registers the compiled ops ``torch.ops.mcfast.*`` and their fake kernels (now when
torch is imported already, else as soon as it is; see :mod:`mcfast.ops`), and imports no torch
itself, so that ``mcfast --help`` stays torch-free. Sub-packages load on first use
(``mcfast.ops``, ``mcfast.io``, ...; module ``__getattr__``). ``mcfast.ops.has_ops()`` tells whether
the compiled library is there.
"""
from __future__ import annotations

import importlib as _importlib
import importlib.util as _importlib_util

__version__ = "0.1.0"

# Names re-exported lazily from a module: {"Name": "mcfast.module"}.
_LAZY: dict[str, str] = {}


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

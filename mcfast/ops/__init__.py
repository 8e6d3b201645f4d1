"""Python face of the compiled custom ops ``torch.ops.mcfast.*``.

``load()`` imports the compiled library ``mcfast._C`` (which registers the ops with the
dispatcher) and the fake kernels used by ``torch.compile`` and ``torch.library.opcheck``.
``library_path()`` gives the shared library's path for ``torch.ops.load_library`` (e.g. when
exporting). ``available()`` says whether the ops can be used, without raising.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from mcfast.errors import McfastError

_BUILD_HINT = ("mcfast's compiled op library is not built: run `pip install -e .` (or "
               "`CUDA_HOME=/usr/local/cuda python setup.py build_ext --inplace`) in the mcfast source tree")

_loaded = False


def load() -> None:
    """Load ``mcfast._C`` and the fake kernels; raise McfastError with build instructions when missing."""
    global _loaded
    if _loaded:
        return
    import torch  # noqa: F401  (loads libc10/libtorch, which mcfast._C links against)

    try:
        import mcfast._C  # noqa: F401  (registers torch.ops.mcfast.*)
    except ImportError as exc:
        raise McfastError(f"{_BUILD_HINT} ({exc})") from exc
    from mcfast.ops import fake  # noqa: F401  (registers the fake kernels)
    _loaded = True


def available() -> bool:
    """True when the compiled op library loads."""
    try:
        load()
    except McfastError:
        return False
    return True


def library_path() -> Path:
    """Path of the compiled op library (``mcfast/_C*.so``), for ``torch.ops.load_library``."""
    spec = importlib.util.find_spec("mcfast._C")
    if spec is None or spec.origin is None:
        raise McfastError(_BUILD_HINT)
    return Path(spec.origin)


__all__ = ["load", "available", "library_path"]

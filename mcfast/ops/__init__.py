"""Python face of the compiled custom ops ``torch.ops.mcfast.*``.

The ops are there whenever mcfast and torch are both imported, as torchvision's are after
``import torchvision``::

    import mcfast, torch
    torch.ops.mcfast.guided_step          # registered, with its fake (meta) kernel

``import mcfast`` loads the compiled library ``mcfast._C`` (which registers the ops with the
dispatcher) and the fake kernels used by ``torch.compile`` and ``torch.library.opcheck`` at once
when torch is already imported, else right after torch's own import finishes (:func:`load_with_torch`).
So ``import mcfast`` alone imports no torch and ``mcfast --help`` stays fast. A missing library does
not fail the import: :func:`has_ops` says False and :func:`load` raises McfastError naming the build
step. ``library_path()`` gives the shared library's path for ``torch.ops.load_library`` (e.g. when
exporting).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

from mcfast.errors import McfastError

_BUILD_HINT = ("mcfast's compiled op library mcfast._C is not built: install mcfast with `pip install .` "
               "(in the source tree `pip install -e .` or `make install`; or build it in place with "
               "`python setup.py build_ext --inplace`)")

_loaded = False


def load() -> None:
    """Load ``mcfast._C`` and the fake kernels; raise McfastError with build instructions when missing."""
    global _loaded
    if _loaded:
        return
    import torch  # noqa: F401  (loads libc10/libtorch, which mcfast._C links against)

    if _loaded:  # importing torch just now loaded the ops (load_with_torch)
        return
    try:
        import mcfast._C  # noqa: F401  (registers torch.ops.mcfast.*)
    except ImportError as exc:
        raise McfastError(f"{_BUILD_HINT} ({exc})") from exc
    from mcfast.ops import fake  # noqa: F401  (registers the fake kernels)
    _loaded = True


def has_ops() -> bool:
    """True when the compiled op library loads (``torch.ops.mcfast.*`` are registered); never raises."""
    try:
        load()
    except McfastError:
        return False
    return True


available = has_ops  # the earlier name


def library_path() -> Path:
    """Path of the compiled op library (``mcfast/_C*.so``), for ``torch.ops.load_library``."""
    spec = importlib.util.find_spec("mcfast._C")
    if spec is None or spec.origin is None:
        raise McfastError(_BUILD_HINT)
    return Path(spec.origin)


def _load_quietly() -> None:
    # At import: a missing or broken library must not fail `import mcfast` (or torch's import);
    # load() / has_ops() report it later.
    try:
        load()
    except Exception:  # noqa: BLE001
        pass


class _LoaderThenOps(importlib.abc.Loader):
    """torch's own loader, then :func:`_load_quietly` once torch's module has run."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            self._loader.exec_module(module)
        finally:  # torch keeps its own loader: the wrapper leaves no trace
            module.__loader__ = self._loader
            if module.__spec__ is not None:
                module.__spec__.loader = self._loader
        _load_quietly()

    def __getattr__(self, name):  # get_resource_reader, get_filename, is_package, ...
        return getattr(self._loader, name)


class _AfterTorchImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``torch`` is about to be imported, wraps its loader (once)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torch":
            return None
        _remove_hook()
        spec = importlib.util.find_spec("torch")
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderThenOps(spec.loader)
        return spec


_hook = _AfterTorchImport()


def _remove_hook() -> None:
    while _hook in sys.meta_path:
        sys.meta_path.remove(_hook)


def load_with_torch() -> None:
    """Load the ops now if torch is imported, else as soon as it is (``import mcfast`` calls this)."""
    if "torch" in sys.modules:
        _load_quietly()
    elif _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)


__all__ = ["load", "has_ops", "available", "library_path", "load_with_torch"]

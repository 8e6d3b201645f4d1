"""Optional dependencies, and the one-line error naming the extra that installs them.

The core install (``pip install mcfast``) is what sampling needs. Everything else is an extra
(pyproject.toml): ``seg`` (highdicom: DICOM SEG output), ``turing`` (fastapi, uvicorn, matplotlib:
the Visual Turing Test app and its report), ``eval`` (timm, matplotlib: ``mcfast evaluate``),
``triton`` (the Triton kernels), ``data`` (h5py: MSD patch files), ``all``, and ``test``.
Each optional import goes through :func:`require`::

    fastapi = require("fastapi", extra="turing")
"""
from __future__ import annotations

import importlib
from types import ModuleType

from mcfast.errors import McfastError

# extra -> the distributions it installs (kept equal to [project.optional-dependencies]; a test checks)
EXTRAS: dict[str, tuple[str, ...]] = {
    "seg": ("highdicom",),
    "turing": ("fastapi", "uvicorn", "matplotlib"),
    "eval": ("timm", "matplotlib", "monai"),
    "triton": ("triton",),
    "data": ("h5py",),
}


class MissingExtraError(McfastError, ImportError):
    """An optional dependency is not installed (or does not import); the message names the extra."""


def require(module: str, extra: str, feature: str | None = None) -> ModuleType:
    """Import ``module`` and return it, or raise :class:`MissingExtraError` naming ``extra``.

    ``feature`` says what needs it (default "mcfast"), e.g. "DICOM SEG output needs highdicom from
    the 'seg' extra: pip install 'mcfast[seg]' (No module named 'highdicom')".
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; expected one of {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{feature or 'mcfast'} needs {module} from the '{extra}' extra: "
                                f"pip install 'mcfast[{extra}]' ({exc})") from exc

__all__ = ["EXTRAS", "MissingExtraError", "require"]

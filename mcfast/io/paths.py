"""Input and output paths checked before any work starts, and OS errors as one line.

An output folder or file is checked for what truly stops a write (also for root, whom permission bits do
not stop): a file where a folder belongs (or one further up the path), a read-only or pseudo file system
(/proc, /sys), a symlink loop. The check writes nothing: the writability probe is a temporary folder made
and removed at once, so a command that fails later leaves no empty output folder behind.
"""
from __future__ import annotations

import errno
import os
import stat as stat_mod
import tempfile
from pathlib import Path

from mcfast.errors import InputError

_WHY = {
    errno.ELOOP: "symlink loop (a link that leads back to itself)",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENAMETOOLONG: "file name too long",
    errno.EEXIST: "already exists",
}


def os_reason(exc: OSError) -> str:
    """What an OSError means, in a few words (a symlink loop is not "no such file")."""
    return _WHY.get(exc.errno, exc.strerror or " ".join(str(exc).split()))


def os_error_line(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """``PATH: reason`` for an OSError (the path given, else the one the error names)."""
    name = path if path is not None else (exc.filename if exc.filename is not None else "")
    return f"{name}: {os_reason(exc)}" if name != "" else os_reason(exc)


def check_input_path(path: str | os.PathLike, what: str = "file or folder") -> Path:
    """``path`` exists (following links); a missing path and a symlink loop are told apart."""
    path = Path(path)
    try:
        os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise InputError(os_error_line(exc, path)) from None
    return path


def _stat(path: Path) -> os.stat_result | None:
    """``os.stat`` or None when the path (or a folder above it) does not exist; a loop is an error."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _nearest_existing(path: Path) -> tuple[Path, os.stat_result]:
    for p in (path, *path.parents):
        st = _stat(p)
        if st is not None:
            return p, st
    return Path("."), os.stat(".")  # pragma: no cover - a relative path always reaches "."


def _probe_writable(folder: Path, path: Path, option: str) -> None:
    try:
        probe = tempfile.mkdtemp(prefix=".mcfast-write-test-", dir=folder)
    except OSError as exc:  # ENOENT from an existing folder: a pseudo file system (/proc) that takes no new files
        why = "it takes no new files" if exc.errno == errno.ENOENT else os_reason(exc)
        raise InputError(f"{path}: cannot write in {folder} ({why}); choose another {option}") from None
    os.rmdir(probe)


def check_out_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check that ``path`` is (or can be made as) a writable folder; creates nothing."""
    path = Path(path)
    try:
        existing, st = _nearest_existing(path)
    except OSError as exc:
        raise InputError(f"{os_error_line(exc, path)}; choose another {option}") from None
    if not stat_mod.S_ISDIR(st.st_mode):
        if existing == path:
            raise InputError(f"{path}: is a file, not a folder; choose another {option}")
        raise InputError(f"{path}: {existing} is a file, not a folder; choose another {option}")
    _probe_writable(existing, path, option)
    return path


def make_out_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check ``path`` (:func:`check_out_dir`) and create it with its parents."""
    path = check_out_dir(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{os_error_line(exc, path)}; choose another {option}") from None
    return path


def check_out_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check that ``path`` can be written as a file (not a folder; its folder writable); creates nothing."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise InputError(f"{path}: names a folder, expected a file name; choose another {option}")
    try:
        st = _stat(path)
    except OSError as exc:
        raise InputError(f"{os_error_line(exc, path)}; choose another {option}") from None
    if st is not None and stat_mod.S_ISDIR(st.st_mode):
            raise InputError(f"{path}: is a folder, expected a file; choose another {option}")
    parent = path.parent
    try:
        existing, pst = _nearest_existing(parent)
    except OSError as exc:
        raise InputError(f"{path}: {os_error_line(exc, parent)}; choose another {option}") from None
    if not stat_mod.S_ISDIR(pst.st_mode):
        raise InputError(f"{path}: {existing} is a file, not a folder; choose another {option}")
    _probe_writable(existing, path, option)
    return path

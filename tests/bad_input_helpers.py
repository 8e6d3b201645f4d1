"""Shared checks of the table-driven bad-input tests (tests/test_bad_input_<command>.py).

Every bad input must end the command with exit code 2 and exactly one stderr line naming the file or
value, no traceback, no numpy / PIL warning before it, and leave the folder it ran in exactly as it was
(no output half-written, no temporary file left, nothing replaced).
"""
from __future__ import annotations

import hashlib
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from mcfast.cli import main


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (hidden ones too) with a digest of what it is: links, folders, file bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_bad(capsys, argv, expected: str, root: Path, cwd: Path | None = None) -> str:
    """Run ``mcfast argv`` in-process and check the bad-input contract; returns the error line."""
    argv = [str(a) for a in argv]
    before = tree(root)
    old_cwd = os.getcwd()
    capsys.readouterr()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code
    finally:
        os.chdir(old_cwd)
    captured = capsys.readouterr()
    err = captured.err
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code} for {argv}:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"{len(lines)} stderr lines for {argv}:\n{err}"
    assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"
    noisy = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not noisy, f"warnings before the error line: {[str(w.message) for w in noisy]}"
    after = tree(root)
    assert after == before, (f"files changed: added {sorted(set(after) - set(before))}, removed "
                             f"{sorted(set(before) - set(after))}, changed "
                             f"{sorted(k for k in before if k in after and before[k] != after[k])}")
    return lines[0]


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A 60-byte PNG whose header claims ``width`` x ``height`` 8-bit gray pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + chunk(b"IEND", b""))
    return path


def npy_claiming(path: Path, shape: tuple[int, ...], dtype: str = "<f4") -> Path:
    """An NPY file whose header claims ``shape`` and that holds no data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": dtype, "fortran_order": False, "shape": shape})
    return path


def symlink_loop(folder: Path, name: str = "loop") -> Path:
    """``folder/name`` -> ``name.b`` -> ``name``: a symlink loop."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b = folder / name, folder / f"{name}.b"
    a.symlink_to(b.name)
    b.symlink_to(a.name)
    return a

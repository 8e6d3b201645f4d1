"""Training data: torch Datasets for CT slices and mammograms with an NPY/memmap cache, and ``prepare``.

Items are (1, H, W) float32 tensors in model space [-1, 1]. Decoding (DICOM, PNG) happens once:
datasets keep the decoded, resized stack in a memory-mapped ``.npy`` cache (or in RAM without a cache
folder), and :func:`prepare` writes a folder of per-item ``.npy`` files plus ``manifest.json`` that
``mcfast train --data`` reads directly (or :class:`PreparedDataset` loads).

This module holds the datasets; finding and converting the source files is :mod:`mcfast.io.training_items`,
the prepared folder :mod:`mcfast.io.prepare` (their names are re-exported here).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from mcfast import __version__
from mcfast.atomic import atomic_path, write_text
from mcfast.constants import MODALITIES
from mcfast.errors import InputError
from mcfast.io.prepare import MANIFEST, PrepareResult, prepare, read_manifest
from mcfast.io.training_items import (MAX_SIZE, Source, check_size, converter, ct_to_model, find_ct_sources,
                                      find_mg_sources, find_sources, iter_converted, mg_to_model, no_usable_message,
                                      read_mammogram, skip_counts)
from mcfast.io.windows import WindowLike, get_window

__all__ = ["MANIFEST", "MODALITIES", "MAX_SIZE", "ct_to_model", "read_mammogram", "mg_to_model", "Source",
           "find_ct_sources", "find_mg_sources", "CTSliceDataset", "MammogramDataset", "PreparedDataset",
           "PrepareResult", "check_size", "no_usable_message", "skip_counts", "read_manifest", "prepare"]


class _CachedStack:
    """Decode once into an (N, 1, S, S) float32 stack: a memmapped .npy under ``cache_dir`` or RAM."""

    def __init__(self, modality: str, root, size: int, window, side: str, cache_dir, progress):
        check_size(size, "size", minimum=1)
        self.modality, self.size, self.window, self.side = modality, int(size), window, side
        sources, self.skipped = find_sources(modality, root)
        key = self._cache_key(sources)
        self.items: list[dict] = []
        self.rows: list[int] = []  # row of each usable item in ``data`` (skipped files leave a row unused)
        convert = converter(modality, self.size, window, side)
        if cache_dir is None:
            arrays = []
            for src, arr, extra in iter_converted(sources, convert, self.skipped, progress, f"decode {modality}"):
                arrays.append(arr)
                self.items.append({"source": str(src.path), **src.meta, **extra})
            self._check_any(root)
            self.data = np.stack(arrays)[:, None]
            self.rows = list(range(len(arrays)))
            return
        cache_dir = Path(cache_dir)
        data_path, meta_path = cache_dir / f"{modality}_{key}.npy", cache_dir / f"{modality}_{key}.json"
        if data_path.exists() and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            self.items, self.rows = meta["items"], meta["rows"]
            self.skipped = {Path(k): v for k, v in meta["skipped"].items()}
            self.data = np.load(data_path, mmap_mode="r")
            return
        # Stream decoded items straight into the memmap so memory stays at one image.
        with atomic_path(data_path) as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                           shape=(max(len(sources), 1), 1, self.size, self.size))
            row_of = {id(src): i for i, src in enumerate(sources)}
            for src, arr, extra in iter_converted(sources, convert, self.skipped, progress, f"decode {modality}"):
                mm[row_of[id(src)], 0] = arr
                self.rows.append(row_of[id(src)])
                self.items.append({"source": str(src.path), **src.meta, **extra})
            self._check_any(root)
            mm.flush()
            del mm
        write_text(meta_path, json.dumps({"items": self.items, "rows": self.rows,
                                          "skipped": {str(k): v for k, v in self.skipped.items()}}))
        self.data = np.load(data_path, mmap_mode="r")

    def _check_any(self, root) -> None:
        if not self.items:
            raise InputError(no_usable_message(root, self.modality, self.skipped))

    def _cache_key(self, sources: list[Source]) -> str:
        h = hashlib.sha1()
        h.update(json.dumps([self.modality, self.size, list(get_window(self.window)) if self.window is not None else None,
                             self.side, __version__]).encode())
        for s in sources:
            st = s.path.stat()
            h.update(f"{s.path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]


class _StackDataset:
    def __len__(self) -> int:
        return len(self._stack.rows)

    def __getitem__(self, index: int):
        import torch
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return torch.from_numpy(np.array(self._stack.data[self._stack.rows[index]], dtype=np.float32, copy=True))

    @property
    def items(self) -> list[dict]:
        """Per item: source path and metadata (CT: series/SOP UID; MG: the recorded transform)."""
        return self._stack.items

    @property
    def skipped(self) -> dict[Path, str]:
        """Files that could not be used, with the reason."""
        return self._stack.skipped


class CTSliceDataset(_StackDataset):
    """CT slices under ``root`` (file, series folder or tree) as (1, size, size) model-space tensors.

    ``window=None`` maps the full HU range [-1024, 3071] to [-1, 1]; a window name or (center, width)
    trains on that window instead. With ``cache_dir`` the decoded stack is stored as a memmapped .npy
    keyed by the inputs (paths, sizes, mtimes) and parameters, so later runs skip decoding.
    """

    def __init__(self, root, size: int = 256, window: WindowLike | None = None, cache_dir=None, progress=False):
        self._stack = _CachedStack("ct", root, size, window, "left", cache_dir, progress)


class MammogramDataset(_StackDataset):
    """Mammograms under ``root`` (DICOM MG, PNG, PGM) as (1, size, size) model-space tensors: breast
    cropped, chest wall on ``side``, aspect kept; ``items[i]["transform"]`` maps annotations."""

    def __init__(self, root, size: int = 256, side: str = "left", cache_dir=None, progress=False):
        self._stack = _CachedStack("mg", root, size, None, side, cache_dir, progress)


class PreparedDataset:
    """A folder written by :func:`prepare` (or any folder of 2-D ``.npy`` files in [-1, 1]) as
    (1, H, W) float32 tensors, memory-mapped."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if manifest.exists():
            self.manifest = read_manifest(self.folder)
            self.files = [self.folder / it["file"] for it in self.manifest["items"]]
        else:
            self.manifest = None
            self.files = sorted(self.folder.glob("*.npy"))
        if not self.files:
            raise InputError(f"{self.folder}: no .npy items")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        import torch
        from mcfast.io.images import read_npy
        arr = read_npy(self.files[index])
        return torch.from_numpy(np.clip(arr, -1.0, 1.0)[None].copy())

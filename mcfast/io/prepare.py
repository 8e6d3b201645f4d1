"""``prepare``: a training folder of per-item ``.npy`` files in model space plus ``manifest.json`` (source →
item, modality, normalisation, skipped files with reasons), which ``mcfast train --data`` reads directly
(or :class:`mcfast.io.datasets.PreparedDataset` loads); :func:`read_manifest` reads one back.
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcfast import __version__
from mcfast.atomic import atomic_path, write_text
from mcfast.constants import MODALITIES
from mcfast.errors import InputError
from mcfast.io.training_items import (Source, check_size, converter, find_sources, iter_converted, no_usable_message,
                                      skip_counts)
from mcfast.io.windows import HU_MAX, HU_MIN, WindowLike, get_window

MANIFEST = "manifest.json"


@dataclass
class PrepareResult:
    out_dir: Path
    items: int
    skipped: dict[Path, str]

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST


def read_manifest(folder: str | os.PathLike) -> dict:
    """Read and check ``manifest.json`` of a prepared folder."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (not a folder made by mcfast prepare)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != "mcfast-prepared" or not isinstance(data.get("items"), list):
        raise InputError(f"{path}: not an mcfast prepare manifest")
    return data


def _normalisation(modality: str, window: WindowLike | None, side: str) -> dict:
    if modality == "ct":
        if window is None:
            return {"kind": "hu", "hu_range": [HU_MIN, HU_MAX], "to_model": "2*(clip(hu)-hu_min)/(hu_max-hu_min)-1"}
        w = get_window(window)
        return {"kind": "window", "window": {"name": window if isinstance(window, str) else "custom",
                                             "center": w.center, "width": w.width},
                "to_model": "2*clip((hu-(center-width/2))/width, 0, 1)-1"}
    return {"kind": "mg", "to_model": "2*x-1, x in [0,1] dense tissue bright (MONOCHROME1 inverted)",
            "chest_wall_side": side}


def prepare(modality: str, in_dir: str | os.PathLike, out_dir: str | os.PathLike, size: int = 256,
            window: WindowLike | None = None, side: str = "left", progress=True) -> PrepareResult:
    """Build a training folder: one (size, size) float32 ``.npy`` per usable image, in model space,
    plus ``manifest.json`` (source → item, modality, normalisation, skipped files with reasons).

    Files that cannot be used are skipped and counted; every file is written atomically, and the
    manifest last, so an interrupted run never leaves a manifest naming missing items.
    """
    from mcfast.io.paths import check_input_path, check_out_dir, make_out_dir, os_reason

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    size = check_size(size)
    check_input_path(in_dir)
    check_out_dir(out_dir)
    if out_dir.resolve() == in_dir.resolve() or in_dir.resolve() in out_dir.resolve().parents:
        raise InputError(f"{out_dir}: the output folder must be outside the input folder")
    if window is not None:
        get_window(window)
    sources, skipped = find_sources(modality, in_dir)
    try:
        return _prepare_into(modality, in_dir, out_dir, size, window, side, progress, sources, skipped,
                             make_out_dir)
    except OSError as exc:  # e.g. the disk filling up: every item is written atomically, the manifest last
        raise InputError(f"{out_dir}: {os_reason(exc)} while writing the prepared items") from None


def _prepare_into(modality, in_dir: Path, out_dir: Path, size: int, window, side, progress,
                  sources: list[Source], skipped: dict[Path, str], make_out_dir) -> PrepareResult:
    convert = converter(modality, int(size), window, side)
    converted = iter_converted(sources, convert, skipped, progress, f"prepare {modality}")
    # Nothing is created or replaced until one item has converted: a run that finds no usable image
    # leaves --out (and an earlier run's items there) as it was.
    first = next(converted, None)
    if first is None:
        raise InputError(no_usable_message(in_dir, modality, skipped))
    make_out_dir(out_dir)
    if (out_dir / MANIFEST).exists():  # replace an earlier run's items, nothing else
        try:
            old = read_manifest(out_dir)
        except InputError:
            old = {"items": []}
        (out_dir / MANIFEST).unlink()  # first, so an interrupted re-run never lists deleted items
        for it in old["items"]:
            (out_dir / Path(it["file"]).name).unlink(missing_ok=True)
    items = []
    for src, arr, extra in itertools.chain([first], converted):
        name = f"{modality}_{len(items):06d}.npy"
        with atomic_path(out_dir / name) as tmp:
            np.save(tmp, arr.astype(np.float32))
        items.append({"file": name, "source": os.path.abspath(src.path), **src.meta, **extra})
    if not items:
        raise InputError(no_usable_message(in_dir, modality, skipped))
    manifest = {
        "format": "mcfast-prepared", "version": 1, "created_by": f"mcfast {__version__}",
        "modality": modality, "image_size": int(size), "shape": [int(size), int(size)], "dtype": "float32",
        "space": "model", "value_range": [-1.0, 1.0], "normalisation": _normalisation(modality, window, side),
        "source_root": str(in_dir.resolve()), "counts": {"items": len(items), "skipped": len(skipped)},
        "skipped_by_reason": skip_counts(skipped),
        "items": items, "skipped": [{"source": str(p), "reason": r} for p, r in sorted(skipped.items())],
    }
    write_text(out_dir / MANIFEST, json.dumps(manifest, indent=1))
    return PrepareResult(out_dir, len(items), skipped)

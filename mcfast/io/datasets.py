"""Training data: torch Datasets for CT slices and mammograms with an NPY/memmap cache, and ``prepare``.

Items are (1, H, W) float32 tensors in model space [-1, 1]. Decoding (DICOM, PNG) happens once:
datasets keep the decoded, resized stack in a memory-mapped ``.npy`` cache (or in RAM without a cache
folder), and :func:`prepare` writes a folder of per-item ``.npy`` files plus ``manifest.json`` that
``mcfast train --data`` reads directly (or :class:`PreparedDataset` loads).
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mcfast import __version__
from mcfast.atomic import atomic_path, write_text
from mcfast.errors import InputError
from mcfast.io import dicom
from mcfast.io.images import MAX_OUTPUT_SIZE, RASTER_SUFFIXES, read_raster
from mcfast.io.mammo import prepare_mammogram, resize_keep_aspect
from mcfast.io.windows import HU_MAX, HU_MIN, WindowLike, get_window, hu_to_model, window_to_model

MANIFEST = "manifest.json"
MODALITIES = ("ct", "mg")
# The largest --size prepare (and the datasets) make (mcfast.io.images.MAX_OUTPUT_SIZE, light to import for
# --help): one 4096² float32 item is 64 MiB. Checked before anything is read or allocated.
MAX_SIZE = MAX_OUTPUT_SIZE


# --------------------------------------------------------------------------- per-item conversion


def ct_to_model(hu: np.ndarray, size: int, window: WindowLike | None = None) -> np.ndarray:
    """HU slice → (size, size) float32 model space: full HU range [-1024, 3071], or a display window."""
    x = hu_to_model(hu) if window is None else window_to_model(hu, window)
    x = np.asarray(x, dtype=np.float32)
    if x.shape != (size, size):
        x, _ = resize_keep_aspect(x, size, pad_value=-1.0)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def read_mammogram(path: str | os.PathLike) -> np.ndarray:
    """A mammogram file (DICOM MG, PNG, PGM, TIFF) as [0, 1] float32 with dense tissue bright.

    8-bit rasters divide by 255; 16-bit ones by the smallest of 10/12/14/16 bits that holds their maximum.
    """
    path = Path(path)
    if dicom.is_dicom_file(path) or path.suffix.lower() in (".dcm", ".dicom"):
        return dicom.read_mg_dicom(path).image
    img, bits = read_raster(path, normalize=False)
    if bits == 32:  # float TIFF: scale by its own range
        lo, hi = float(img.min()), float(img.max())
        return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    if bits == 16:
        # 16-bit files often hold 10-14-bit detector values: scale by the depth actually used.
        used = int(img.max()).bit_length()
        bits = next(b for b in (10, 12, 14, 16) if used <= b)
    return img / float(2 ** bits - 1)


def mg_to_model(img01: np.ndarray, size: int, side: str = "left") -> tuple[np.ndarray, dict]:
    """[0, 1] mammogram → (size, size) model space with the chest wall on ``side``; returns the recorded
    transform as a dict (:meth:`mcfast.io.mammo.MammoTransform.from_dict`)."""
    out, transform, _ = prepare_mammogram(img01, size, side=side)
    return (out * 2.0 - 1.0).astype(np.float32), transform.to_dict()


# --------------------------------------------------------------------------- source discovery


@dataclass
class Source:
    """One input item: file path and what is known about it before decoding."""

    path: Path
    meta: dict = field(default_factory=dict)


def find_ct_sources(root: str | os.PathLike, planes: tuple[str, ...] = ("axial",)
                    ) -> tuple[list[Source], dict[Path, str]]:
    """DICOM CT slices under ``root`` ordered by series and position; non-DICOM files are skipped, and so
    are slices whose ImageOrientationPatient is not one of ``planes`` (coronal / sagittal reformats).
    Slices without an orientation are kept (single-slice secondary captures often lack it)."""
    scan = dicom.scan_dicom_tree(root)
    sources: list[Source] = []
    skipped = dict(scan.skipped)
    for uid in sorted(scan.series, key=lambda u: str(scan.series[u][0][0])):
        headers = scan.series[uid]
        order, _, _ = dicom.slice_order(headers)
        for rank, i in enumerate(order):
            path, ds = headers[i]
            modality = str(ds.get("Modality", "")).upper()
            if modality and modality != "CT":
                skipped[path] = f"modality {modality}, not CT"
                continue
            plane = dicom.slice_plane(ds)
            if plane is not None and plane not in planes:
                skipped[path] = f"{plane} slice (not {'/'.join(planes)}): a reformat, not training data"
                continue
            sources.append(Source(path, {"series_uid": uid, "slice_index": rank,
                                         "sop_uid": str(ds.get("SOPInstanceUID", "")),
                                         "patient_id": str(ds.get("PatientID", "")),
                                         "plane": plane}))
    return sources, skipped


def find_mg_sources(root: str | os.PathLike) -> tuple[list[Source], dict[Path, str]]:
    """Mammogram files under ``root``: PNG/PGM/TIFF by suffix, DICOM by preamble; others skipped."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    sources, skipped = [], {}
    if root.is_file():
        files = [root]
    else:
        files = []
        for p in sorted(root.rglob("*")):
            if any(part.startswith(".") for part in p.relative_to(root).parts):
                continue
            if p.is_file():
                files.append(p)
            elif p.is_symlink() and not p.exists():  # a dangling link or a symlink loop: say which
                from mcfast.io.paths import os_reason
                try:
                    os.stat(p)
                except OSError as exc:
                    skipped[p] = "symlink loop" if exc.errno == errno.ELOOP else f"broken link ({os_reason(exc)})"
    for f in files:
        if f.suffix.lower() in RASTER_SUFFIXES or dicom.is_dicom_file(f):
            sources.append(Source(f))
        else:
            skipped[f] = "not an image or DICOM file"
    return sources, skipped


def _converter(modality: str, size: int, window: WindowLike | None, side: str
               ) -> Callable[[Source], tuple[np.ndarray, dict]]:
    if modality == "ct":
        def convert(src: Source) -> tuple[np.ndarray, dict]:
            s = dicom.read_ct_slice(src.path)
            return ct_to_model(s.hu, size, window), {}
    elif modality == "mg":
        def convert(src: Source) -> tuple[np.ndarray, dict]:
            try:
                out, transform = mg_to_model(read_mammogram(src.path), size, side)
            except InputError as exc:
                msg = str(exc)
                raise InputError(msg if str(src.path) in msg else f"{src.path}: {msg}") from None
            return out, {"transform": transform}
    else:
        raise InputError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    return convert


def _sources(modality: str, root) -> tuple[list[Source], dict[Path, str]]:
    if modality == "ct":
        return find_ct_sources(root)
    if modality == "mg":
        return find_mg_sources(root)
    raise InputError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="img", disable=not sys.stderr.isatty() and enabled != "always")


def _iter_converted(sources: list[Source], convert, skipped: dict[Path, str], progress, desc: str
                    ) -> Iterator[tuple[Source, np.ndarray, dict]]:
    for src in _progress(sources, len(sources), desc, progress):
        try:
            arr, extra = convert(src)
        except InputError as exc:
            skipped[src.path] = str(exc).replace(f"{src.path}: ", "", 1)
            continue
        yield src, arr, extra


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


# --------------------------------------------------------------------------- datasets


class _CachedStack:
    """Decode once into an (N, 1, S, S) float32 stack: a memmapped .npy under ``cache_dir`` or RAM."""

    def __init__(self, modality: str, root, size: int, window, side: str, cache_dir, progress):
        check_size(size, "size", minimum=1)
        self.modality, self.size, self.window, self.side = modality, int(size), window, side
        sources, self.skipped = _sources(modality, root)
        key = self._cache_key(sources)
        self.items: list[dict] = []
        self.rows: list[int] = []  # row of each usable item in ``data`` (skipped files leave a row unused)
        convert = _converter(modality, self.size, window, side)
        if cache_dir is None:
            arrays = []
            for src, arr, extra in _iter_converted(sources, convert, self.skipped, progress, f"decode {modality}"):
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
            for src, arr, extra in _iter_converted(sources, convert, self.skipped, progress, f"decode {modality}"):
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


# --------------------------------------------------------------------------- prepare


@dataclass
class PrepareResult:
    out_dir: Path
    items: int
    skipped: dict[Path, str]

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST


def check_size(size, option: str = "--size", minimum: int = 8) -> int:
    """An output image size in [minimum, MAX_SIZE], refused before anything is allocated."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise InputError(f"{option} must be an integer, got {size!r}")
    if not minimum <= int(size) <= MAX_SIZE:
        raise InputError(f"{option} = {size} is outside {minimum}..{MAX_SIZE} pixels")
    return int(size)


def no_usable_message(root, modality: str, skipped: dict[Path, str]) -> str:
    """Why a folder gave no item: how many files were seen and, per reason, how many were skipped."""
    name = modality.upper()
    if not skipped:
        return f"{root}: no usable {name} images: no files found"
    if len(skipped) == 1 and Path(root).is_file():  # one input file: its own reason
        (path, reason), = skipped.items()
        return f"{path}: {reason} (no usable {name} image)"
    counts = skip_counts(skipped)
    reasons = "; ".join(f"{n} {reason}" for reason, n in list(counts.items())[:3])
    more = f"; {len(counts) - 3} other reason(s)" if len(counts) > 3 else ""
    hint = ""
    if modality == "ct" and any(Path(p).suffix.lower() in RASTER_SUFFIXES for p in skipped):
        hint = " (--modality ct reads DICOM only; PNG/TIFF mammograms take --modality mg)"
    elif modality == "mg" and counts.get("not an image or DICOM file") == len(skipped):
        hint = f" (mg reads {', '.join(sorted(RASTER_SUFFIXES))} and DICOM)"
    return f"{root}: no usable {name} images ({len(skipped)} files skipped) of {len(skipped)} seen: {reasons}{more}{hint}"


def skip_counts(skipped: dict[Path, str]) -> dict[str, int]:
    """How many files were skipped for each reason (most frequent first)."""
    counts: dict[str, int] = {}
    for reason in skipped.values():
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


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
    sources, skipped = _sources(modality, in_dir)
    try:
        return _prepare_into(modality, in_dir, out_dir, size, window, side, progress, sources, skipped,
                             make_out_dir)
    except OSError as exc:  # e.g. the disk filling up: every item is written atomically, the manifest last
        raise InputError(f"{out_dir}: {os_reason(exc)} while writing the prepared items") from None


def _prepare_into(modality, in_dir: Path, out_dir: Path, size: int, window, side, progress,
                  sources: list[Source], skipped: dict[Path, str], make_out_dir) -> PrepareResult:
    convert = _converter(modality, int(size), window, side)
    converted = _iter_converted(sources, convert, skipped, progress, f"prepare {modality}")
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

"""Training items from source files: find the inputs under a folder (DICOM CT slices in series order,
reformats and other modalities left out; mammogram files), convert each to a (size, size) float32 image
in model space [-1, 1], and say why a file was skipped. Shared by the cached datasets
(:mod:`mcfast.io.datasets`) and :func:`mcfast.io.prepare.prepare`.
"""
from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mcfast.constants import MODALITIES
from mcfast.errors import InputError
from mcfast.io import dicom
from mcfast.io.images import MAX_OUTPUT_SIZE, RASTER_SUFFIXES, read_raster
from mcfast.io.mammo import prepare_mammogram, resize_keep_aspect
from mcfast.io.windows import WindowLike, hu_to_model, window_to_model

# The largest --size prepare (and the datasets) make (mcfast.io.images.MAX_OUTPUT_SIZE, light to import for
# --help): one 4096² float32 item is 64 MiB. Checked before anything is read or allocated.
MAX_SIZE = MAX_OUTPUT_SIZE


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


def converter(modality: str, size: int, window: WindowLike | None, side: str
              ) -> Callable[[Source], tuple[np.ndarray, dict]]:
    """``convert(source) -> (image, extra item metadata)`` for ``modality``; InputError for a file it cannot use."""
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


def find_sources(modality: str, root) -> tuple[list[Source], dict[Path, str]]:
    """:func:`find_ct_sources` or :func:`find_mg_sources`: (sources, {skipped file: reason})."""
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


def iter_converted(sources: list[Source], convert, skipped: dict[Path, str], progress, desc: str
                   ) -> Iterator[tuple[Source, np.ndarray, dict]]:
    """(source, image, extra) for every source that converts; the others go into ``skipped`` with the reason."""
    for src in _progress(sources, len(sources), desc, progress):
        try:
            arr, extra = convert(src)
        except InputError as exc:
            skipped[src.path] = str(exc).replace(f"{src.path}: ", "", 1)
            continue
        yield src, arr, extra


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

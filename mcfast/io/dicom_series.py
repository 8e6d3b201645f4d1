"""CT series from DICOM folders: scan a tree's headers by series (duplicates left out with a reason),
order a series' slices, and decode it into a :class:`~mcfast.io.dicom_ct.CTVolume`
(:func:`read_ct`, :func:`read_ct_tree`). A series whose slices differ in size is one InputError line.
"""
from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from pydicom.dataset import Dataset

from mcfast.errors import InputError
from mcfast.io.dicom_ct import (CTSlice, CTVolume, missing_rescale, read_ct_slice, slice_geometry,
                                warn_missing_rescale)
from mcfast.io.dicom_file import DicomWarning, float_or_none, is_dicom_file, name_files, read_dataset

# Two slices of a series whose ImagePositionPatient lie closer than this are the same slice: a CT's
# slices are tenths of a millimetre apart at the least, and DS values carry about 16 digits.
SAME_POSITION_MM = 0.01
DUPLICATE_REASON = "duplicate slice (the SOPInstanceUID of another file, or its position in the same series)"


@dataclass
class DicomScan:
    """Result of scanning a folder tree: readable headers grouped by series, and what was skipped."""

    series: dict[str, list[tuple[Path, Dataset]]]
    skipped: dict[Path, str]


def _iter_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def scan_dicom_tree(root: str | os.PathLike) -> DicomScan:
    """Read the headers of every DICOM file under ``root`` (a file or folder), grouped by SeriesInstanceUID.

    Files that are not DICOM (no ``DICM`` preamble) or whose header cannot be read are recorded in
    ``skipped`` with the reason, not raised. So are duplicate slices (see :func:`drop_duplicate_slices`),
    with one :class:`DicomWarning` naming them.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    files = [root] if root.is_file() else list(_iter_files(root))
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    skipped: dict[Path, str] = {}
    for f in files:
        if not is_dicom_file(f):
            skipped[f] = "not a DICOM file"
            continue
        try:
            ds = read_dataset(f, pixels=False)
        except InputError as exc:
            skipped[f] = str(exc).split(": ", 1)[-1]
            continue
        series[str(ds.get("SeriesInstanceUID", "")) or f"no-series:{f.parent}"].append((f, ds))
    duplicates: dict[Path, Path] = {}
    seen_sops: dict[str, Path] = {}  # a SOPInstanceUID names one instance, whichever series holds the copy
    for uid, headers in series.items():
        series[uid], dropped = drop_duplicate_slices(headers, seen_sops)
        duplicates.update(dropped)
    if duplicates:
        skipped.update({p: DUPLICATE_REASON for p in duplicates})
        pairs = [Path(f"{p.relative_to(root) if p != root else p.name} (= {first.relative_to(root)})")
                 for p, first in duplicates.items()]
        warnings.warn(f"{root}: {len(duplicates)} file(s) left out as {DUPLICATE_REASON}: {name_files(pairs)}",
                      DicomWarning, stacklevel=2)
    return DicomScan(dict(series), skipped)


def _position_key(ds: Dataset) -> tuple | None:
    """ImagePositionPatient and the slice normal on a :data:`SAME_POSITION_MM` grid; None without them."""
    position, normal = slice_geometry(ds)
    if position is None or normal is None:
        return None
    return (tuple(np.round(position / SAME_POSITION_MM).astype(np.int64)),
            tuple(np.round(normal / SAME_POSITION_MM).astype(np.int64)))


def drop_duplicate_slices(headers: list[tuple[Path, Dataset]], by_uid: dict[str, Path] | None = None
                          ) -> tuple[list[tuple[Path, Dataset]], dict[Path, Path]]:
    """A series' (path, header) pairs without duplicates: a second file with the SOPInstanceUID of an
    earlier one (a copy), or with its ImagePositionPatient and orientation (the same slice exported
    again under a new UID; stacked, it would give a 0 mm slice spacing). The first file in path order
    is kept. ``by_uid`` (SOPInstanceUID → file, updated) carries the UIDs already seen in other series.
    Returns (kept pairs, {dropped path: the kept file it duplicates})."""
    kept: list[tuple[Path, Dataset]] = []
    dropped: dict[Path, Path] = {}
    by_uid = {} if by_uid is None else by_uid
    by_position: dict[tuple, Path] = {}
    for path, ds in sorted(headers, key=lambda h: str(h[0])):
        uid, key = str(ds.get("SOPInstanceUID", "")), _position_key(ds)
        first = (by_uid.get(uid) if uid else None) or (by_position.get(key) if key is not None else None)
        if first is not None:
            dropped[path] = first
            continue
        kept.append((path, ds))
        if uid:
            by_uid[uid] = path
        if key is not None:
            by_position[key] = path
    return kept, dropped


def slice_order(headers: list[tuple[Path, Dataset]]) -> tuple[list[int], np.ndarray | None, str]:
    """Order of a series' (path, header) pairs: by ImagePositionPatient along the slice normal, else by
    InstanceNumber, else by file name. Returns (order, sorted positions or None, which rule was used)."""
    geo = [slice_geometry(ds) for _, ds in headers]
    normals = [n for _, n in geo if n is not None]
    if len(normals) == len(headers) and all(p is not None for p, _ in geo):
        normal = normals[0]
        dist = np.array([float(np.dot(p, normal)) for p, _ in geo])
        order = sorted(range(len(headers)), key=lambda i: (dist[i], str(headers[i][0])))
        return order, np.stack([geo[i][0] for i in order]), "position"
    inst = [headers[i][1].get("InstanceNumber") for i in range(len(headers))]
    if all(v not in (None, "") for v in inst):
        order = sorted(range(len(headers)), key=lambda i: (int(inst[i]), str(headers[i][0])))
        return order, None, "instance"
    return sorted(range(len(headers)), key=lambda i: str(headers[i][0])), None, "filename"


def load_series(uid: str, headers: list[tuple[Path, Dataset]]) -> CTVolume:
    """Decode one series from its scanned headers (see :func:`scan_dicom_tree`) into a CTVolume."""
    first_shape = None
    for path, ds in headers:
        shape = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
        if first_shape is None:
            first_shape, first_path = shape, path
        elif shape != first_shape:
            raise InputError(f"{path}: slice is {shape[0]}x{shape[1]} but {first_path.name} in the same series "
                             f"is {first_shape[0]}x{first_shape[1]}; the series has inconsistent slice sizes")
    order, positions, ordered_by = slice_order(headers)
    slices = [read_ct_slice(headers[i][0], warn=False) for i in order]
    warn_missing_rescale([headers[i][0] for i in order if missing_rescale(headers[i][1])])
    hu = np.stack([s.hu for s in slices]).astype(np.float32, copy=False)
    if positions is not None and len(positions) > 1:
        normal = slices[0].normal
        steps = np.abs(np.diff(positions @ normal))
        if steps.min() < SAME_POSITION_MM:
            k = int(np.argmin(steps))
            raise InputError(f"{slices[k + 1].path}: same position as {slices[k].path.name} in series {uid}, a "
                             "duplicate slice (scan_dicom_tree leaves such files out)")
        dz = float(np.median(steps))
    else:
        dz = float_or_none(headers[0][1].get("SpacingBetweenSlices")) or slices[0].slice_thickness or 1.0
    return CTVolume(hu=hu, spacing=(dz, *slices[0].spacing), sop_uids=[s.sop_uid for s in slices],
                    paths=[s.path for s in slices], series_uid=uid, windows=slices[0].windows,
                    positions=positions, description=slices[0].description, photometric=slices[0].photometric,
                    ordered_by=ordered_by)


def read_ct_tree(path: str | os.PathLike) -> list[CTVolume]:
    """Every series under ``path`` as a :class:`CTVolume` (sorted by series description, then UID).

    Non-DICOM files are ignored; an unreadable slice or inconsistent slice sizes raise InputError.
    """
    scan = scan_dicom_tree(path)
    if not scan.series:
        raise InputError(f"{path}: no readable DICOM files found ({len(scan.skipped)} other files)")
    uids = sorted(scan.series, key=lambda u: (str(scan.series[u][0][1].get("SeriesDescription", "")),
                                              str(scan.series[u][0][0].parent), u))
    return [load_series(u, scan.series[u]) for u in uids]


def read_ct(path: str | os.PathLike) -> CTSlice | CTVolume:
    """Read CT as HU (float32): a file gives a :class:`CTSlice`, a series folder a :class:`CTVolume`.

    A folder may hold other (non-DICOM) files; slices are ordered by ImagePositionPatient along the slice
    normal, falling back to InstanceNumber. A folder holding several series raises InputError listing
    them: pass one series folder, or use :func:`read_ct_tree` for all of them.
    """
    path = Path(path)
    if path.is_file():
        return read_ct_slice(path)
    scan = scan_dicom_tree(path)
    if not scan.series:
        raise InputError(f"{path}: no readable DICOM files found ({len(scan.skipped)} other files)")
    if len(scan.series) > 1:
        folders = sorted({str(h[0][0].parent.relative_to(path)) or "." for h in scan.series.values()})
        raise InputError(f"{path}: holds {len(scan.series)} series (in {', '.join(folders)}); pass one series folder "
                         "or use read_ct_tree")
    uid, headers = next(iter(scan.series.items()))
    return load_series(uid, headers)

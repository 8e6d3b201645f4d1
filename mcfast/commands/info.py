"""`mcfast info PATH`: print what mcfast sees in a file or folder.

DICOM (CT series or MG), PNG/PGM images (with MIAS annotations when an Info.txt is nearby), NPY
arrays, MSD HDF5 patches, COCO JSON, Pascal VOC XML, and folders made by ``mcfast prepare``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mcfast.errors import InputError

# Where Lung-PET-CT-Dx-like layouts keep VOC XML relative to a DICOM folder, and MIAS its Info.txt.
_NEARBY = (".", "annotations", "../annotations", "../../annotations", "..", "../..")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="show what mcfast sees in an image, series, annotation file or prepared folder",
        description="Print modality, size, spacing, HU range, windows, photometric interpretation and the "
                    "annotations found for PATH: a DICOM file, a CT series folder or tree, a PNG/PGM/NPY "
                    "image, an MSD .h5 patch file, a COCO .json, a VOC .xml, or a folder made by "
                    "'mcfast prepare'.")
    p.add_argument("path", metavar="PATH", type=Path, help="file or folder to inspect")
    p.set_defaults(func=run)


def _line(key: str, value) -> None:
    print(f"  {key:<18}{value}")


def _fmt_windows(windows) -> str:
    return ", ".join(f"C {w.center:g} W {w.width:g}" for w in windows) or "none"


def _presets() -> str:
    from mcfast.io.windows import WINDOWS
    return ", ".join(f"{n} C {w.center:g} W {w.width:g}" for n, w in WINDOWS.items() if n != "mediastinum")


def _find_nearby(base: Path, name: str, is_dir: bool) -> Path | None:
    for rel in _NEARBY:
        cand = (base / rel / name) if name else (base / rel)
        cand = cand.resolve()
        if (cand.is_dir() if is_dir else cand.is_file()):
            return cand
    return None


def _voc_annotations(base: Path) -> dict:
    from mcfast.io.annotations import read_voc_folder
    for rel in _NEARBY:
        folder = (base / rel).resolve()
        if folder.is_dir() and any(folder.glob("*.xml")):
            try:
                return read_voc_folder(folder)
            except InputError as exc:
                print(f"  {'annotations':<18}unreadable: {exc}")
                return {}
    return {}


def _ct_series_info(vol, voc: dict, syntax: str) -> None:
    from mcfast.io.annotations import match_voc_to_slices
    hu = vol.hu
    _line("modality", "CT")
    _line("size", f"{hu.shape[0]} x {hu.shape[1]} x {hu.shape[2]} (slices x rows x columns)")
    _line("spacing", f"{vol.spacing[0]:.3f} x {vol.spacing[1]:.3f} x {vol.spacing[2]:.3f} mm")
    _line("HU range", f"{hu.min():.0f} .. {hu.max():.0f} (median {np.median(hu):.0f})")
    _line("windows (file)", _fmt_windows(vol.windows))
    _line("windows (presets)", _presets())
    _line("photometric", vol.photometric)
    _line("transfer syntax", syntax)
    _line("slice order", {"position": "ImagePositionPatient along the normal", "instance": "InstanceNumber",
                          "filename": "file name"}[vol.ordered_by])
    matched = match_voc_to_slices(voc, vol.sop_uids)
    if matched:
        idx = sorted(matched)
        n_boxes = sum(len(v) for v in matched.values())
        _line("annotations", f"{n_boxes} VOC box(es) on {len(idx)} slice(s), indices {idx[0]}..{idx[-1]}")
    else:
        _line("annotations", "none found")


def _info_dicom_folder(path: Path) -> bool:
    from mcfast.io import dicom
    scan = dicom.scan_dicom_tree(path)
    if not scan.series:
        return False
    n_files = sum(len(v) for v in scan.series.values())
    print(f"{path}: {len(scan.series)} DICOM series, {n_files} files" +
          (f", {len(scan.skipped)} other files ignored" if scan.skipped else ""))
    voc = _voc_annotations(path)
    for i, vol_or_uid in enumerate(sorted(scan.series, key=lambda u: str(scan.series[u][0][0])), 1):
        headers = scan.series[vol_or_uid]
        first_path, ds = headers[0]
        rel = first_path.parent.relative_to(path) if path in first_path.parents else first_path.parent
        print(f"series {i}/{len(scan.series)}: {rel}  \"{ds.get('SeriesDescription', '')}\"")
        modality = str(ds.get("Modality", "")).upper()
        syntax = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "unknown")
        try:
            if modality == "CT" or "RescaleIntercept" in ds:
                vol = dicom.load_series(vol_or_uid, headers)
                _ct_series_info(vol, voc, syntax)
            else:
                for p, _ in headers[:5]:
                    _info_mg_dicom(p)
                if len(headers) > 5:
                    print(f"  ... {len(headers) - 5} more")
        except InputError as exc:
            _line("error", str(exc))
    return True


def _info_mg_dicom(path: Path) -> None:
    from mcfast.io.dicom import read_dataset, read_mg_dicom
    ds = read_dataset(path, pixels=False)
    mg = read_mg_dicom(path)
    print(f"{path}: DICOM {ds.get('Modality', '?')}")
    _line("size", f"{mg.image.shape[0]} x {mg.image.shape[1]} (rows x columns)")
    _line("spacing", f"{mg.spacing[0]:.3f} x {mg.spacing[1]:.3f} mm")
    _line("photometric", f"{mg.photometric}" + (" (inverted: dense tissue bright)" if mg.photometric == "MONOCHROME1" else ""))
    _line("bits stored", mg.bits_stored)
    _line("VOI", {"lut": "VOI LUT", "window": "window " + _fmt_windows(mg.windows[:1]), "range": "full stored range"}[mg.voi])
    _line("laterality/view", f"{mg.laterality or '?'} / {mg.view or '?'}")
    _line("value range", f"{mg.image.min():.3f} .. {mg.image.max():.3f} (display [0, 1])")


def _info_dicom_file(path: Path) -> None:
    from mcfast.io import dicom
    ds = dicom.read_dataset(path, pixels=False)
    if str(ds.get("Modality", "")).upper() != "CT":
        _info_mg_dicom(path)
        return
    s = dicom.read_ct_slice(path)
    print(f"{path}: DICOM CT slice")
    _line("modality", "CT")
    _line("size", f"{s.hu.shape[0]} x {s.hu.shape[1]} (rows x columns)")
    _line("spacing", f"{s.spacing[0]:.3f} x {s.spacing[1]:.3f} mm" +
          (f", slice thickness {s.slice_thickness:g} mm" if s.slice_thickness else ""))
    _line("HU range", f"{s.hu.min():.0f} .. {s.hu.max():.0f} (median {np.median(s.hu):.0f})")
    _line("windows (file)", _fmt_windows(s.windows))
    _line("windows (presets)", _presets())
    _line("photometric", s.photometric)
    _line("transfer syntax", getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "unknown"))
    voc = _voc_annotations(path.parent)
    ann = voc.get(s.sop_uid)
    _line("annotations", f"{len(ann.objects)} VOC box(es): " + ", ".join(
        f"{o.name} [{o.xmin:g}, {o.ymin:g}, {o.xmax:g}, {o.ymax:g}]" for o in ann.objects) if ann else "none found")


def _info_raster(path: Path) -> None:
    from mcfast.io.images import read_raster
    from mcfast.io.mammo import breast_mask, chest_wall_side
    img, bits = read_raster(path, normalize=False)
    print(f"{path}: {path.suffix.lstrip('.').upper()} image")
    _line("size", f"{img.shape[0]} x {img.shape[1]} (rows x columns)")
    _line("bit depth", f"{bits}-bit grayscale")
    _line("value range", f"{img.min():g} .. {img.max():g}")
    mask = breast_mask(img)
    if mask.any():
        _line("breast mask", f"{100 * mask.mean():.1f}% of the image, chest wall on the {chest_wall_side(mask)}")
    info = _find_nearby(path.parent, "Info.txt", is_dir=False)
    if info is None:
        _line("annotations", "none found")
        return
    from mcfast.io.annotations import MIAS_CLASSES, MIAS_SEVERITY, MIAS_TISSUE, read_mias_info
    records = read_mias_info(info, image_height=img.shape[0], image_width=img.shape[1])
    rec = records.get(path.stem)
    if rec is None:
        _line("annotations", f"none for {path.stem} in {info}")
        return
    _line("MIAS tissue", MIAS_TISSUE[rec.tissue])
    if rec.is_normal:
        _line("annotations", f"normal (no abnormality) in {info}")
    for a in rec.abnormalities:
        where = (f"centre row {a.row}, col {a.col} (Info.txt x {a.x}, y {a.y}), radius {a.radius}"
                 if a.has_center else "no centre (distributed)")
        _line("annotation", f"{MIAS_CLASSES[a.cls]}, {MIAS_SEVERITY[a.severity]}: {where}")


def _info_npy(path: Path) -> None:
    from mcfast.io.images import read_npy
    arr = read_npy(path)
    print(f"{path}: NPY array")
    _line("size", f"{arr.shape[0]} x {arr.shape[1]}")
    _line("value range", f"{arr.min():.4g} .. {arr.max():.4g}" +
          (" (model space)" if arr.min() >= -1 and arr.max() <= 1 else ""))


def _info_h5(path: Path) -> None:
    from mcfast.io.annotations import read_msd_patches
    p = read_msd_patches(path)
    areas = p.masks.reshape(len(p.masks), -1).sum(1)
    print(f"{path}: MSD patches")
    _line("patches", f"{p.images.shape[0]} of {p.images.shape[1]} x {p.images.shape[2]}")
    _line("value range", f"{p.images.min():.3f} .. {p.images.max():.3f}")
    _line("annotations", f"{int((areas > 0).sum())} non-empty masks, median area {np.median(areas):.0f} px")


def _info_coco(path: Path) -> None:
    from mcfast.io.coco import read_coco
    d = read_coco(path)
    print(f"{path}: COCO JSON")
    _line("images", len(d["images"]))
    _line("annotations", len(d["annotations"]))
    counts = {c["id"]: 0 for c in d["categories"]}
    for a in d["annotations"]:
        counts[a["category_id"]] += 1
    _line("categories", ", ".join(f"{c['name']} ({counts[c['id']]})" for c in d["categories"]) or "none")


def _info_prepared(path: Path) -> None:
    from mcfast.io.datasets import read_manifest
    m = read_manifest(path)
    print(f"{path}: prepared training folder (mcfast prepare)")
    _line("modality", m["modality"].upper())
    _line("items", f"{m['counts']['items']} of {m['image_size']} x {m['image_size']} float32, model space [-1, 1]")
    _line("normalisation", json.dumps(m["normalisation"]))
    _line("skipped", m["counts"]["skipped"])


def info(path: Path) -> None:
    """Print the summary for ``path`` (raises InputError for unknown or unreadable input)."""
    from mcfast.io import dicom
    from mcfast.io.images import RASTER_SUFFIXES
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        if (path / "manifest.json").exists():
            _info_prepared(path)
        elif not _info_dicom_folder(path):
            images = [p for p in sorted(path.rglob("*")) if p.suffix.lower() in RASTER_SUFFIXES | {".npy"}]
            if not images:
                raise InputError(f"{path}: no DICOM, PNG, PGM or NPY files found")
            print(f"{path}: {len(images)} image files (showing the first)")
            info(images[0])
        return
    suffix = path.suffix.lower()
    if dicom.is_dicom_file(path) or suffix in (".dcm", ".dicom"):
        _info_dicom_file(path)
    elif suffix in RASTER_SUFFIXES:
        _info_raster(path)
    elif suffix == ".npy":
        _info_npy(path)
    elif suffix in (".h5", ".hdf5"):
        _info_h5(path)
    elif suffix == ".json":
        _info_coco(path)
    elif suffix == ".xml":
        from mcfast.io.annotations import read_voc
        a = read_voc(path)
        print(f"{path}: Pascal VOC ({a.width} x {a.height}), key {a.key}")
        for o in a.objects:
            _line("box", f"{o.name} [x {o.xmin:g}..{o.xmax:g}, y {o.ymin:g}..{o.ymax:g}]")
    else:
        raise InputError(f"{path}: unknown file type {suffix or '(no suffix)'}; expected DICOM, PNG, PGM, NPY, "
                         ".h5, .json or .xml")


def run(args: argparse.Namespace) -> int:
    info(args.path)
    return 0

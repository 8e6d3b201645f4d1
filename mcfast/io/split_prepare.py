"""Prepare several collections into a patient-split training / validation pair (a data config in TOML).

``configs/ct_real_data.toml`` names the collections, the held-out patients and the per-collection
thinning; :func:`prepare_split` runs :func:`mcfast.io.datasets.prepare` on each collection and then
hard-links every item into ``OUT/train`` or ``OUT/val`` by its patient, with a manifest each. A patient
is on exactly one side; the validation side is only what the config lists.
"""
from __future__ import annotations

import csv
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mcfast.atomic import write_text
from mcfast.errors import InputError
from mcfast.io.datasets import MANIFEST, prepare, read_manifest

SPLITS = ("train", "val")


@dataclass
class SplitDataConfig:
    root: Path
    collections: list[str]
    validation_patients: list[str]
    modality: str = "ct"
    size: int = 512
    drop_pixel_duplicates: bool = True
    series_stride: dict[str, int] = field(default_factory=dict)
    patient_rule: str = "header"   # "header": PatientID (else the first folder); "mias_woman": mdb2k-1, mdb2k

    @classmethod
    def load(cls, path: str | os.PathLike, base: str | os.PathLike | None = None) -> "SplitDataConfig":
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path}: no such data config") from None
        except OSError as exc:  # a folder, a symlink loop, ...
            from mcfast.io.paths import os_error_line
            raise InputError(os_error_line(exc, path)) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid TOML ({exc})") from None
        data, split = raw.get("data", {}), raw.get("split", {})
        for name, table in (("data", data), ("split", split)):
            if not isinstance(table, dict):
                raise InputError(f"{path}: [{name}] must be a table of settings, got {table!r}")
        if not isinstance(data.get("collections", []), list):
            raise InputError(f"{path}: data.collections must be a list of folder names, got {data['collections']!r}")
        if not isinstance(split.get("validation_patients", []), list):
            raise InputError(f"{path}: split.validation_patients must be a list, got {split['validation_patients']!r}")
        from mcfast.io.datasets import check_size
        for key in ("size",):
            if key in data:
                check_size(data[key], f"{path}: data.{key}")
        stride = data.get("series_stride", {})
        if not isinstance(stride, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                   for v in stride.values()):
            raise InputError(f"{path}: data.series_stride must map collections to integers >= 1, got {stride!r}")
        for key in ("root", "collections"):
            if key not in data:
                raise InputError(f"{path}: [data] needs '{key}'")
        if not split.get("validation_patients"):
            raise InputError(f"{path}: [split] needs a non-empty 'validation_patients' list")
        root = Path(data["root"])
        if not root.is_absolute():
            root = Path(base) / root if base is not None else path.parent.parent / root
        return cls(root=root, collections=list(data["collections"]),
                   validation_patients=[str(p) for p in split["validation_patients"]],
                   modality=str(data.get("modality", "ct")), size=int(data.get("size", 512)),
                   drop_pixel_duplicates=bool(data.get("drop_pixel_duplicates", True)),
                   series_stride={k: int(v) for k, v in data.get("series_stride", {}).items()},
                   patient_rule=str(split.get("patient_rule", "header")))


def _duplicate_files(collection_dir: Path) -> set[str]:
    """Absolute paths of files a collection's manifest.csv marks as pixel duplicates of another file."""
    manifest = collection_dir / "manifest.csv"
    if not manifest.is_file():
        return set()
    with open(manifest, newline="") as f:
        return {os.path.abspath(collection_dir / row["file"]) for row in csv.DictReader(f)
                if row.get("duplicate_pixels_of")}


PATIENT_RULES = ("header", "mias_woman")


def _patient_of(item: dict, collection_dir: Path, rule: str = "header") -> str:
    """The person an item belongs to. "header": PatientID, else the first folder under the collection
    (the TCIA layout); "mias_woman": MIAS images mdb2k-1 and mdb2k are the two breasts of woman k."""
    if rule == "mias_woman":
        from mcfast.evaluate.splits import mias_woman
        return f"woman{mias_woman(Path(item['source']).stem):03d}"
    if rule != "header":
        raise InputError(f"unknown patient_rule {rule!r}; expected one of {', '.join(PATIENT_RULES)}")
    if item.get("patient_id"):
        return str(item["patient_id"])
    return Path(os.path.relpath(item["source"], collection_dir)).parts[0]


def prepare_split(config: SplitDataConfig, out_dir: str | os.PathLike, progress=True) -> dict[str, int]:
    """Prepare every collection into ``out_dir/all/<collection>`` and link items into train / val.

    Returns the number of items per split. Re-running replaces the split folders' items.
    """
    out_dir = Path(out_dir)
    split_items: dict[str, list[dict]] = {s: [] for s in SPLITS}
    dropped: dict[str, int] = {"pixel duplicate": 0, "series stride": 0}
    val_patients = set(config.validation_patients)
    seen_patients: set[str] = set()
    for name in config.collections:
        src = config.root / name
        if not src.is_dir():
            raise InputError(f"{src}: collection folder not found (data root {config.root})")
        staged = out_dir / "all" / name
        prepare(config.modality, src, staged, size=config.size, progress=progress)
        duplicates = _duplicate_files(src) if config.drop_pixel_duplicates else set()
        stride = config.series_stride.get(name, 1)
        for item in read_manifest(staged)["items"]:
            if item["source"] in duplicates:
                dropped["pixel duplicate"] += 1
                continue
            if stride > 1 and int(item.get("slice_index", 0)) % stride != 0:
                dropped["series stride"] += 1
                continue
            patient = _patient_of(item, src, config.patient_rule)
            seen_patients.add(patient)
            side = "val" if patient in val_patients else "train"
            split_items[side].append({**item, "patient": patient, "collection": name,
                                      "staged": str(staged / item["file"])})
    missing = val_patients - seen_patients
    if missing:
        raise InputError(f"validation patients not found in the collections: {', '.join(sorted(missing))}")
    counts = {}
    for side, items in split_items.items():
        folder = out_dir / side
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).unlink(missing_ok=True)
        for old in folder.glob("*.npy"):
            old.unlink()
        listed = []
        for k, item in enumerate(items):
            name = f"{config.modality}_{k:06d}.npy"
            os.link(item.pop("staged"), folder / name)
            listed.append({**item, "file": name})
        manifest = json.loads((out_dir / "all" / config.collections[0] / MANIFEST).read_text())
        manifest.update(items=listed, counts={"items": len(listed)}, skipped=[], split=side,
                        patients=sorted({it["patient"] for it in listed}), dropped=dropped)
        write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
        counts[side] = len(listed)
    return counts

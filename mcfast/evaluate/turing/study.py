"""Create a Turing study folder: pick a balanced set, draw CT windows, shuffle, render, record in SQLite.

Layout of a study folder ``STUDY/``: ``study.sqlite3`` (images, readers, answers) and ``images/<id>.png``, every
image an uncompressed (stored) PNG of one size, so all have the same byte length.
Everything is drawn from one ``numpy.random.Generator(seed)``, so the same inputs and seed give the same study
(same images, windows, order, ids and PNG bytes).
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mcfast.atomic import write_bytes
from mcfast.errors import InputError
from mcfast.evaluate.turing.render import (CT_WINDOWS, IMAGE_SUFFIXES, MODALITIES, decode_png, encode_png,
                                           needs_window, png_header, render, stored_png_length)
from mcfast.evaluate.turing.store import Store, StudyImage

DB_NAME = "study.sqlite3"
IMAGES_DIR = "images"
_STAGING = re.compile(rf"\.{IMAGES_DIR}\.[a-z0-9_]{{8}}")  # tempfile.mkdtemp(prefix=".images.") names
DEFAULTS = {"n": 30, "seed": 0, "size": 512, "modality": "ct"}


def db_path(study_dir: str | Path) -> Path:
    return Path(study_dir) / DB_NAME


def find_images(folder: str | Path) -> list[Path]:
    """PNG / NPY / DICOM files under ``folder`` (recursive, hidden files skipped), in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    if not found:
        raise InputError(f"{folder}: no PNG, NPY or DICOM images found")
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _balanced_windows(count: int, start: int, rng: np.random.Generator) -> list[str]:
    """``count`` window names cycling from ``start``, shuffled: each class gets the same mix of windows."""
    names = list(CT_WINDOWS)
    windows = [names[(start + j) % len(names)] for j in range(count)]
    return [windows[k] for k in rng.permutation(count)]


def create_study(study_dir: str | Path, real_dir: str | Path, synthetic_dir: str | Path, *, n: int = 30,
                 seed: int = 0, size: int = 512, modality: str = "ct", progress: bool = True) -> Store:
    """Build ``study_dir`` with ``n`` images (n/2 real, n/2 synthetic) rendered at ``size`` x ``size``.

    CT inputs in HU (NPY, DICOM) get a window drawn from lung / soft tissue / bone, balanced between the classes;
    PNG inputs are shown as is (colour PNGs are refused, as everywhere in mcfast). Every image is written as a stored
    PNG of one length (:func:`render.encode_png`). Raises InputError when the study exists, ``STUDY/images`` is
    taken, an input is unusable or the folders hold too few images; nothing is left behind then.
    """
    study_dir = Path(study_dir)
    if db_path(study_dir).exists():
        raise InputError(f"{study_dir}: a study already exists here")
    if not isinstance(n, int) or n < 2 or n % 2:
        raise InputError(f"--n {n}: the number of images must be an even number >= 2 (half real, half synthetic)")
    if not isinstance(size, int) or not 16 <= size <= 4096:
        raise InputError(f"--size {size}: expected an image size from 16 to 4096 pixels")
    if modality not in MODALITIES:
        raise InputError(f"--modality {modality!r}: expected one of {', '.join(MODALITIES)}")
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"--seed {seed}: expected an integer >= 0")
    rng = np.random.default_rng(seed)
    half = n // 2
    chosen: list[tuple[Path, str]] = []
    for truth, folder in (("real", real_dir), ("synthetic", synthetic_dir)):
        files = find_images(folder)
        if len(files) < half:
            raise InputError(f"{folder}: {len(files)} {truth} images found, the study needs {half} (--n {n})")
        chosen += [(files[k], truth) for k in sorted(rng.choice(len(files), size=half, replace=False))]

    windowed = {t: sum(needs_window(p, modality) for p, c in chosen if c == t) for t in ("real", "synthetic")}
    if windowed["real"] != windowed["synthetic"]:
        # A windowed image looks different from a PNG shown as is: unequal mixes would let the display tell the class.
        raise InputError(f"{windowed['real']} real but {windowed['synthetic']} synthetic images are CT in HU "
                         "(NPY/DICOM, shown in a drawn window), the rest PNG shown as is; give both classes "
                         "in the same format")
    start = int(rng.integers(len(CT_WINDOWS)))
    windows: list[str | None] = []
    for truth in ("real", "synthetic"):
        members = [path for path, t in chosen if t == truth]
        drawn = iter(_balanced_windows(windowed[truth], start, rng))
        windows += [next(drawn) if needs_window(p, modality) else None for p in members]

    order = rng.permutation(n)
    ids: list[str] = []
    while len(ids) < n:  # 96-bit random ids; the loop only guards against an (absurdly unlikely) repeat
        candidate = rng.bytes(12).hex()
        if candidate not in ids:
            ids.append(candidate)

    images_dir = study_dir / IMAGES_DIR
    if images_dir.exists() and (not images_dir.is_dir() or any(images_dir.iterdir())):
        raise InputError(f"{images_dir}: already exists but no study is here; remove it or use another --study")
    study_dir.mkdir(parents=True, exist_ok=True)
    for stale in study_dir.iterdir():  # staging folders of a create that was killed (no study was made from them)
        if _STAGING.fullmatch(stale.name) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    # Render into a temporary folder published by one rename once every image is done, so a refused input (a
    # colour PNG, a broken file) or a crash leaves no half-made images/ behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{IMAGES_DIR}.", dir=study_dir))
    published = False
    try:
        records = []
        for position, k in enumerate(tqdm(order, desc="render", disable=not progress or None, leave=False)):
            path, truth = chosen[k]
            image_id = ids[position]
            (staging / f"{image_id}.png").write_bytes(render(path, modality, windows[k], size))
            records.append(StudyImage(position, image_id, truth, f"{image_id}.png", windows[k],
                                      str(path.resolve())))
        meta = {"n": str(n), "seed": str(seed), "size": str(size), "modality": modality,
                "real_dir": str(Path(real_dir).resolve()), "synthetic_dir": str(Path(synthetic_dir).resolve()),
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if images_dir.exists():
            images_dir.rmdir()  # empty (checked above); os.replace onto a folder needs it gone
        os.replace(staging, images_dir)
        published = True
        return Store.create(db_path(study_dir), meta, records)
    except BaseException:
        # The database is written last and atomically: without it, the images are ours to remove.
        shutil.rmtree(images_dir if published else staging, ignore_errors=True)
        raise


def canonicalize_images(study_dir: str | Path, store: Store) -> int:
    """Rewrite any image not in the fixed-size stored-PNG form (studies made by an older mcfast); returns how many.

    Each file is replaced atomically by the same pixels encoded with :func:`render.encode_png`, so every image of
    the study is served with the same length. Files already in that form are left untouched.
    """
    study_dir = Path(study_dir)
    size = int(store.meta()["size"])
    expected, header = stored_png_length(size, size), png_header(size, size)
    rewritten = 0
    for image in store.images():
        path = study_dir / IMAGES_DIR / image.file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"{path}: cannot read study image ({exc.strerror or exc})") from None
        if len(data) == expected and data.startswith(header):
            continue  # the length, the one thing that told the classes apart, is already the common one
        pixels = decode_png(data, path)
        if pixels.shape != (size, size):
            raise InputError(f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels, the study's size is {size}")
        try:
            write_bytes(path, encode_png(pixels))
        except OSError as exc:
            raise InputError(f"{path}: cannot rewrite as a fixed-size PNG ({exc.strerror or exc})") from None
        rewritten += 1
    return rewritten


def open_study(study_dir: str | Path) -> Store:
    """Open an existing study folder."""
    return Store(db_path(study_dir))


def open_or_create(study_dir: str | Path, real_dir: str | Path | None = None,
                   synthetic_dir: str | Path | None = None, *, n: int | None = None, seed: int | None = None,
                   size: int | None = None, modality: str | None = None) -> tuple[Store, bool]:
    """Open ``study_dir``, or create it from the folders when it has no study yet; returns (store, created).

    Options given for an existing study must match what it was created with, so a changed ``--seed`` or folder
    is never silently ignored.
    """
    given = {"n": n, "seed": seed, "size": size, "modality": modality,
             "real_dir": real_dir and str(Path(real_dir).resolve()),
             "synthetic_dir": synthetic_dir and str(Path(synthetic_dir).resolve())}
    if db_path(study_dir).exists():
        store = open_study(study_dir)
        meta = store.meta()
        for key, value in given.items():
            if value is not None and str(value) != meta.get(key):
                raise InputError(f"{study_dir}: the study was created with {key} = {meta.get(key)}, not {value}; "
                                 "use another --study folder or drop the option")
        return store, False
    if real_dir is None or synthetic_dir is None:
        raise InputError(f"{study_dir}: no study here yet; give --real and --synthetic to create one")
    options = {k: v if v is not None else DEFAULTS[k] for k, v in
               {"n": n, "seed": seed, "size": size, "modality": modality}.items()}
    return create_study(study_dir, real_dir, synthetic_dir, **options), True

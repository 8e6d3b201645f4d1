"""Annotation readers: MIAS ``Info.txt``, Pascal VOC boxes (Lung-PET-CT-Dx), MSD patch masks (HDF5).

COCO JSON lives in :mod:`mcfast.io.coco`. Boxes are COCO ``[x, y, w, h]`` in pixels; coordinates
outside the image raise one InputError line naming the file (and line) and the value.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mcfast.errors import InputError

MIAS_SIZE = 1024
MIAS_CLASSES = {"CALC": "calcification", "CIRC": "circumscribed mass", "SPIC": "spiculated mass",
                "MISC": "ill-defined mass", "ARCH": "architectural distortion", "ASYM": "asymmetry",
                "NORM": "normal"}
MIAS_TISSUE = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
MIAS_SEVERITY = {"B": "benign", "M": "malignant"}
# The classes that are masses: a lesion with its own extent, denser than the tissue around it. ASYM
# (asymmetric density) and ARCH (architectural distortion) have a centre but no distinct mass, and CALC
# marks calcifications: equalised, such a patch spans the whole grey range without a bright core, and
# pasted as a "mass" it looked like a dark hole (issue 13). Pathology patches are drawn from these only.
MIAS_MASS_CLASSES = ("CIRC", "SPIC", "MISC")


# --------------------------------------------------------------------------- MIAS


@dataclass
class MiasAbnormality:
    """One abnormality line. ``x``/``y`` as in Info.txt (origin bottom-left); ``row``/``col`` are image
    indices (``row = height - 1 - y``). Centre and radius are None for distributed calcifications."""

    cls: str
    severity: str
    x: int | None
    y: int | None
    radius: int | None
    image_height: int = MIAS_SIZE

    @property
    def has_center(self) -> bool:
        return self.x is not None and self.y is not None

    @property
    def row(self) -> int | None:
        return None if self.y is None else self.image_height - 1 - self.y

    @property
    def col(self) -> int | None:
        return self.x

    def box(self, shape: tuple[int, int] | None = None) -> list[float] | None:
        """COCO box [x, y, w, h] of the enclosing circle, clipped to ``shape`` (H, W) when given."""
        if not self.has_center or self.radius is None:
            return None
        x0, y0 = self.col - self.radius, self.row - self.radius
        x1, y1 = self.col + self.radius + 1, self.row + self.radius + 1
        if shape is not None:
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1)
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """uint8 (H, W) disc of the enclosing circle (all zero without a centre)."""
        out = np.zeros(shape, dtype=np.uint8)
        if self.has_center and self.radius is not None:
            rr, cc = np.ogrid[:shape[0], :shape[1]]
            out[(rr - self.row) ** 2 + (cc - self.col) ** 2 <= self.radius ** 2] = 1
        return out


@dataclass
class MiasRecord:
    """One image of Info.txt: reference (``mdb001``), background tissue, and its abnormalities."""

    ref: str
    tissue: str
    abnormalities: list[MiasAbnormality] = field(default_factory=list)

    @property
    def is_normal(self) -> bool:
        return not self.abnormalities

    @property
    def side(self) -> str:
        """Breast side from the number: odd = right, even = left."""
        digits = "".join(ch for ch in self.ref if ch.isdigit())
        return "right" if digits and int(digits) % 2 == 1 else "left"


def read_mias_info(path: str | os.PathLike, image_height: int = MIAS_SIZE, image_width: int = MIAS_SIZE
                   ) -> dict[str, MiasRecord]:
    """Parse MIAS ``Info.txt`` into ``{ref: MiasRecord}``.

    Lines are ``REF TISSUE CLASS [SEVERITY X Y RADIUS]``; NORM images get no abnormality, several lines
    for one image give several abnormalities, and calcification lines without a centre (``*NOTE 3*``)
    keep ``x = y = radius = None``. A malformed line or a centre outside the image raises InputError.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="latin-1").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    records: dict[str, MiasRecord] = {}
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or not parts[0].lower().startswith("mdb"):
            continue
        where = f"{path} line {lineno}"
        if len(parts) < 3:
            raise InputError(f"{where}: expected REF TISSUE CLASS ..., got {line.strip()!r}")
        ref, tissue, cls = parts[0], parts[1].upper(), parts[2].upper()
        if tissue not in MIAS_TISSUE or cls not in MIAS_CLASSES:
            raise InputError(f"{where}: unknown tissue {tissue!r} or class {cls!r}")
        rec = records.setdefault(ref, MiasRecord(ref, tissue))
        if cls == "NORM":
            continue
        severity = parts[3].upper() if len(parts) > 3 else ""
        if severity not in MIAS_SEVERITY:
            raise InputError(f"{where}: severity must be B or M, got {severity!r}")
        numbers = parts[4:7]
        if len(numbers) == 3 and all(n.lstrip("-").isdigit() for n in numbers):
            x, y, r = (int(n) for n in numbers)
            if not (0 <= x < image_width and 0 <= y < image_height) or r <= 0:
                raise InputError(f"{where}: centre ({x}, {y}) radius {r} is outside the "
                                 f"{image_width}x{image_height} image")
        elif not numbers or "NOTE" in " ".join(parts[4:]).upper():
            x = y = r = None  # distributed calcifications: no single centre
        else:
            raise InputError(f"{where}: expected X Y RADIUS integers, got {' '.join(parts[4:])!r}")
        rec.abnormalities.append(MiasAbnormality(cls, severity, x, y, r, image_height))
    if not records:
        raise InputError(f"{path}: no MIAS lines (mdbNNN ...) found")
    return records


def mias_masses(record: MiasRecord) -> list[MiasAbnormality]:
    """The abnormalities of ``record`` that are masses (:data:`MIAS_MASS_CLASSES`) with a centre and radius."""
    return [ab for ab in record.abnormalities
            if ab.cls in MIAS_MASS_CLASSES and ab.has_center and ab.radius is not None]


@dataclass
class PreparedMiasFilm:
    """One item of a prepared MIAS folder: its ``index`` in the manifest, the manifest ``item`` (file,
    source, transform, patient), the ``film`` it was made from and that film's Info.txt ``record``."""

    index: int
    item: dict
    film: Path
    record: MiasRecord


def _film_path(folder: Path, item: dict, k: int) -> Path:
    source = item.get("source")
    if not isinstance(source, str) or not source:
        raise InputError(f"{folder}/manifest.json: item {k} has no source film")
    film = Path(source)
    return film if film.is_absolute() else folder / film


def read_prepared_mias(folder: str | os.PathLike) -> list[PreparedMiasFilm]:
    """The films of a prepared MIAS folder (``manifest.json`` from ``mcfast prepare`` / prepare_real.py)
    with their Info.txt records.

    A film ``.../mias/images/mdbNNN.png`` is annotated in ``.../mias/Info.txt``: the parent of the folder
    holding the films. Only the films listed are returned, so a training split yields only the training
    women's lesions.
    """
    from mcfast.io.datasets import read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder)
    infos: dict[Path, dict[str, MiasRecord]] = {}
    films = []
    for k, item in enumerate(manifest["items"]):
        film = _film_path(folder, item, k)
        info = film.parent.parent / "Info.txt"
        if info not in infos:
            if not info.is_file():
                raise InputError(f"{folder}/manifest.json: item {k} ({film}): no MIAS Info.txt at {info}")
            infos[info] = read_mias_info(info)
        record = infos[info].get(film.stem)
        if record is None:
            raise InputError(f"{info}: no line for {film.stem} (item {k} of {folder}/manifest.json)")
        films.append(PreparedMiasFilm(k, item, film, record))
    return films


# --------------------------------------------------------------------------- VOC


@dataclass
class VocObject:
    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def box(self) -> list[float]:
        """COCO [x, y, w, h]."""
        return [self.xmin, self.ymin, self.xmax - self.xmin, self.ymax - self.ymin]


@dataclass
class VocAnnotation:
    """A Pascal VOC file; ``key`` is the file stem (the annotated slice's SOPInstanceUID in Lung-PET-CT-Dx)."""

    path: Path
    key: str
    width: int | None
    height: int | None
    objects: list[VocObject]


def _xml_number(node: ET.Element, tag: str, where: str) -> float:
    child = node.find(tag)
    if child is None or child.text is None:
        raise InputError(f"{where}: missing <{tag}>")
    try:
        return float(child.text.strip())
    except ValueError:
        raise InputError(f"{where}: <{tag}> is not a number ({child.text.strip()!r})") from None


def read_voc(path: str | os.PathLike) -> VocAnnotation:
    """Read one Pascal VOC XML file; boxes must lie inside ``<size>`` (InputError otherwise)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except ET.ParseError as exc:
        raise InputError(f"{path}: not valid XML ({exc})") from None
    size = root.find("size")
    width = height = None
    if size is not None and size.find("width") is not None:
        width = int(_xml_number(size, "width", str(path)))
        height = int(_xml_number(size, "height", str(path)))
    objects = []
    for i, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        where = f"{path} object {i + 1}"
        if bb is None:
            raise InputError(f"{where}: no <bndbox>")
        xmin, ymin, xmax, ymax = (_xml_number(bb, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        if xmax <= xmin or ymax <= ymin:
            raise InputError(f"{where}: empty box ({xmin}, {ymin}, {xmax}, {ymax})")
        if xmin < 0 or ymin < 0 or (width and xmax > width) or (height and ymax > height):
            raise InputError(f"{where}: box ({xmin}, {ymin}, {xmax}, {ymax}) is outside the {width}x{height} image")
        name = (obj.findtext("name") or "").strip()
        objects.append(VocObject(name, xmin, ymin, xmax, ymax))
    return VocAnnotation(path, path.stem, width, height, objects)


def read_voc_folder(folder: str | os.PathLike) -> dict[str, VocAnnotation]:
    """All ``*.xml`` files of a folder as ``{stem (SOPInstanceUID): VocAnnotation}``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of VOC XML files")
    return {p.stem: read_voc(p) for p in sorted(folder.glob("*.xml"))}


def match_voc_to_slices(annotations: dict[str, VocAnnotation], sop_uids: list[str]
                        ) -> dict[int, list[VocObject]]:
    """Map VOC annotations to slice indices by SOPInstanceUID: ``{slice index: [objects]}``.

    Annotations whose UID is not in ``sop_uids`` (another series) are left out.
    """
    where = {uid: i for i, uid in enumerate(sop_uids)}
    return {where[k]: a.objects for k, a in annotations.items() if k in where}


# --------------------------------------------------------------------------- MSD


class MsdPatches(NamedTuple):
    """MSD lung tumour patches: ``images`` (N, H, W) float32 in [0, 1], ``masks`` (N, H, W) uint8."""

    images: np.ndarray
    masks: np.ndarray


def read_msd_patches(path: str | os.PathLike, images_key: str = "images", labels_key: str = "labels"
                     ) -> MsdPatches:
    """Read an HDF5 file of patches and masks ((N, 1, H, W) or (N, H, W)); masks are binarised (> 0.5)."""
    from mcfast.extras import require

    h5py = require("h5py", extra="data", feature="reading MSD patch files (HDF5)")

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in (images_key, labels_key) if k not in f]
            if missing:
                raise InputError(f"{path}: no dataset {missing[0]!r} (has {', '.join(sorted(f.keys())) or 'none'})")
            images, labels = np.asarray(f[images_key]), np.asarray(f[labels_key])
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({' '.join(str(exc).split())})") from None
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if labels.ndim == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if images.ndim != 3 or images.shape != labels.shape:
        raise InputError(f"{path}: images {images.shape} and labels {labels.shape} must both be (N, [1,] H, W)")
    images = images.astype(np.float32)
    if not np.isfinite(images).all():
        raise InputError(f"{path}: images contain NaN or Inf")
    return MsdPatches(images, (labels > 0.5).astype(np.uint8))

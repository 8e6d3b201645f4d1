"""COCO JSON: RLE (uncompressed and compressed strings, pycocotools-compatible), polygons, and a builder.

``CocoWriter(categories)`` collects images and mask annotations (bbox from the mask, RLE or polygon
segmentation, free-form attributes such as severity), merges other COCO files and saves atomically.
``read_coco`` reads and checks a file (ids, categories, boxes inside their image).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from mcfast.atomic import write_text
from mcfast.errors import InputError

# --------------------------------------------------------------------------- RLE


def rle_encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of a 2-D mask: column-major runs starting with a run of zeros."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"RLE needs a 2-D mask, got shape {m.shape}")
    flat = (m != 0).ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(c) for c in counts]}


def rle_compress_counts(counts: list[int]) -> str:
    """COCO's compressed RLE string (pycocotools ``rleToString``): delta + 5-bit LEB128-like chars."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def rle_decompress_counts(text: str) -> list[int]:
    """Inverse of :func:`rle_compress_counts` (pycocotools ``rleFrString``)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            ch = ord(text[p]) - 48
            x |= (ch & 0x1F) << (5 * k)
            more = bool(ch & 0x20)
            p += 1
            k += 1
            if not more and (ch & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (counts as a list or a compressed string) to a uint8 (H, W) mask."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"RLE needs 'size' [h, w] and 'counts', got keys {sorted(rle) if isinstance(rle, dict) else rle!r}") from None
    if isinstance(counts, (str, bytes)):
        counts = rle_decompress_counts(counts.decode() if isinstance(counts, bytes) else counts)
    counts = np.asarray(counts, dtype=np.int64)
    if (counts < 0).any() or counts.sum() != h * w:
        raise InputError(f"RLE counts sum to {int(counts.sum())}, expected {h}x{w} = {h * w}")
    values = np.zeros(len(counts), dtype=np.uint8)
    values[1::2] = 1
    return np.repeat(values, counts).reshape((h, w), order="F")


# --------------------------------------------------------------------------- polygons


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.5) -> list[list[float]]:
    """Outer contours of a mask as COCO polygons ``[x0, y0, x1, y1, ...]``.

    COCO coordinates are continuous with pixel ``i`` covering ``[i, i + 1)``, so the contour traced
    through pixel centres is shifted by half a pixel (pycocotools rasterises it back to the mask).
    """
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad((np.asarray(mask) != 0).astype(np.float32), 1)
    polys = []
    for contour in find_contours(padded, 0.5):
        contour = contour - 0.5  # padding offset (-1) plus the half-pixel shift to COCO coordinates (+0.5)
        contour = approximate_polygon(contour, tolerance) if tolerance > 0 else contour
        if len(contour) >= 3:
            polys.append([round(float(v), 2) for v in contour[:, ::-1].ravel()])
    return polys


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons to a uint8 mask (even-odd fill per polygon, union of polygons)."""
    from skimage.draw import polygon as fill_polygon

    out = np.zeros((height, width), dtype=np.uint8)
    for poly in polygons:
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2) - 0.5  # COCO coordinates → pixel-centre indices
        rr, cc = fill_polygon(pts[:, 1], pts[:, 0], shape=(height, width))
        out[rr, cc] = 1
    return out


def mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO [x, y, w, h] of the nonzero pixels (pixel edges: a single pixel at (3, 4) is [3, 4, 1, 1])."""
    rows, cols = np.nonzero(np.asarray(mask))
    if rows.size == 0:
        raise InputError("cannot annotate an empty mask")
    return [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1), float(rows.max() - rows.min() + 1)]


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """The uint8 mask of a COCO annotation (RLE, polygons, or the bbox when it has no segmentation)."""
    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        mask = rle_decode(seg)
        if mask.shape != (height, width):
            raise InputError(f"annotation {ann.get('id')}: RLE size {mask.shape} differs from the image {height}x{width}")
        return mask
    if isinstance(seg, list) and seg:
        return polygons_to_mask(seg, height, width)
    x, y, w, h = (int(round(v)) for v in ann["bbox"])
    out = np.zeros((height, width), dtype=np.uint8)
    out[max(0, y):y + h, max(0, x):x + w] = 1
    return out


# --------------------------------------------------------------------------- reading


def _check_coco(data: Any, where: str) -> dict:
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise InputError(f"{where}: not a COCO file (needs lists 'images', 'annotations', 'categories')")
    images = {}
    for img in data["images"]:
        try:
            images[img["id"]] = (int(img["height"]), int(img["width"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: image entry {img!r} needs id, width and height") from None
    cats = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    for ann in data["annotations"]:
        aid = ann.get("id") if isinstance(ann, dict) else None
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            raise InputError(f"{where}: annotation {aid} refers to an unknown image_id")
        if ann.get("category_id") not in cats:
            raise InputError(f"{where}: annotation {aid} has unknown category_id {ann.get('category_id')}")
        h, w = images[ann["image_id"]]
        try:
            x, y, bw, bh = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}: annotation {aid} needs a bbox [x, y, w, h]") from None
        if bw < 0 or bh < 0 or x < 0 or y < 0 or x + bw > w + 1e-6 or y + bh > h + 1e-6:
            raise InputError(f"{where}: annotation {aid} bbox {ann['bbox']} is outside its {w}x{h} image")
    return data


def read_coco(path: str | os.PathLike) -> dict:
    """Read and check a COCO JSON file (ids resolve, boxes inside their images); returns the dict."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    return _check_coco(data, str(path))


# --------------------------------------------------------------------------- writing


class CocoWriter:
    """Build a COCO dataset: images, mask annotations with attributes, merge, atomic save.

    ``categories``: names (``"mass"``) or dicts with ``name`` and optional ``supercategory``/``id``.
    Pathology type is the category; severity and the like go into each annotation's ``attributes``.
    """

    def __init__(self, categories: Iterable[str | dict] = (), info: dict | None = None):
        self.info = dict(info or {"description": "mcfast synthetic images", "version": "1.0"})
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.categories: list[dict] = []
        self._image_ids: dict[int, tuple[int, int]] = {}
        for c in categories:
            self.add_category(c)

    # categories ---------------------------------------------------------------------------
    def add_category(self, category: str | dict) -> int:
        """Add a category (no-op if the name exists); returns its id."""
        c = {"name": category} if isinstance(category, str) else dict(category)
        if not c.get("name"):
            raise InputError(f"category {category!r} needs a name")
        for existing in self.categories:
            if existing["name"] == c["name"]:
                return existing["id"]
        c.setdefault("id", max((e["id"] for e in self.categories), default=0) + 1)
        c.setdefault("supercategory", "pathology")
        if any(e["id"] == c["id"] for e in self.categories):
            raise InputError(f"category id {c['id']} used twice")
        self.categories.append(c)
        return c["id"]

    def category_id(self, category: str | int) -> int:
        for c in self.categories:
            if category in (c["name"], c["id"]):
                return c["id"]
        raise InputError(f"unknown category {category!r}; known: {', '.join(c['name'] for c in self.categories)}")

    # images and annotations ----------------------------------------------------------------
    def add_image(self, file_name: str, height: int, width: int, id: int | None = None, **extra) -> int:
        """Register an image; returns its id (next free id when not given)."""
        image_id = int(id) if id is not None else max(self._image_ids, default=0) + 1
        if image_id in self._image_ids:
            raise InputError(f"image id {image_id} used twice ({file_name})")
        if int(height) <= 0 or int(width) <= 0:
            raise InputError(f"image {file_name}: size {height}x{width} must be positive")
        self.images.append({"id": image_id, "file_name": str(file_name), "height": int(height),
                            "width": int(width), **extra})
        self._image_ids[image_id] = (int(height), int(width))
        return image_id

    def add_annotation(self, image_id: int, mask: np.ndarray | None, category: str | int,
                       attributes: dict | None = None, segmentation: str = "rle",
                       bbox: list[float] | None = None, **extra) -> dict:
        """Add one annotation; ``bbox``/``area`` come from ``mask`` (or a ``bbox`` for box-only labels).

        ``segmentation``: "rle" (compressed string, pycocotools-compatible), "rle_list" (uncompressed
        counts) or "polygon". Returns the annotation dict.
        """
        if image_id not in self._image_ids:
            raise InputError(f"annotation for unknown image id {image_id}")
        h, w = self._image_ids[image_id]
        ann: dict[str, Any] = {"id": len(self.annotations) + 1, "image_id": image_id,
                               "category_id": self.category_id(category), "iscrowd": 0}
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (h, w):
                raise InputError(f"mask shape {mask.shape} differs from image {image_id} size {h}x{w}")
            ann["bbox"] = mask_bbox(mask)
            ann["area"] = float(np.count_nonzero(mask))
            if segmentation == "polygon":
                ann["segmentation"] = mask_to_polygons(mask)
            elif segmentation in ("rle", "rle_list"):
                rle = rle_encode(mask)
                if segmentation == "rle":
                    rle["counts"] = rle_compress_counts(rle["counts"])
                ann["segmentation"] = rle
            else:
                raise InputError(f"segmentation must be rle, rle_list or polygon, got {segmentation!r}")
        elif bbox is not None:
            x, y, bw, bh = (float(v) for v in bbox)
            if bw <= 0 or bh <= 0 or x < 0 or y < 0 or x + bw > w or y + bh > h:
                raise InputError(f"bbox {bbox} is outside image {image_id} ({w}x{h}) or empty")
            ann["bbox"], ann["area"], ann["segmentation"] = [x, y, bw, bh], bw * bh, []
        else:
            raise InputError("add_annotation needs a mask or a bbox")
        if attributes:
            ann["attributes"] = dict(attributes)
        ann.update(extra)
        self.annotations.append(ann)
        return ann

    # merging and saving ----------------------------------------------------------------------
    def merge(self, *others: "str | os.PathLike | dict | CocoWriter") -> "CocoWriter":
        """Append other COCO files/dicts/writers, renumbering image and annotation ids and mapping
        categories by name. Returns self."""
        for other in others:
            data = other.to_dict() if isinstance(other, CocoWriter) else (
                _check_coco(other, "<dict>") if isinstance(other, dict) else read_coco(other))
            cat_map = {c["id"]: self.add_category({k: v for k, v in c.items() if k != "id"})
                       for c in data["categories"]}
            img_map = {}
            for img in data["images"]:
                extra = {k: v for k, v in img.items() if k not in ("id", "file_name", "height", "width")}
                img_map[img["id"]] = self.add_image(img.get("file_name", ""), img["height"], img["width"], **extra)
            for ann in data["annotations"]:
                new = dict(ann)
                new["id"] = len(self.annotations) + 1
                new["image_id"] = img_map[ann["image_id"]]
                new["category_id"] = cat_map[ann["category_id"]]
                self.annotations.append(new)
        return self

    def to_dict(self) -> dict:
        return {"info": self.info, "images": list(self.images), "annotations": list(self.annotations),
                "categories": list(self.categories)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically; returns the path."""
        write_text(path, json.dumps(self.to_dict(), indent=1))
        return Path(path)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "CocoWriter":
        data = read_coco(path)
        writer = cls(info=data.get("info"))
        return writer.merge(data)

import json

import numpy as np
import pytest

from mcfast.errors import InputError
from mcfast.io.coco import (CocoWriter, annotation_mask, mask_to_polygons, polygons_to_mask, read_coco,
                            rle_compress_counts, rle_decode, rle_decompress_counts, rle_encode)


def test_rle_matches_pycocotools_conventions():
    m = np.zeros((4, 4), np.uint8)
    m[1:3, 1:3] = 1
    rle = rle_encode(m)
    assert rle == {"size": [4, 4], "counts": [5, 2, 2, 2, 5]}  # column-major, starts with zeros
    assert rle_compress_counts(rle["counts"]) == "52203"  # pycocotools' string for this mask
    full = rle_encode(np.ones((2, 3)))
    assert full["counts"] == [0, 6]


def test_rle_round_trips_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) > rng.random()
        rle = rle_encode(m)
        text = rle_compress_counts(rle["counts"])
        assert rle_decompress_counts(text) == rle["counts"]
        np.testing.assert_array_equal(rle_decode({"size": rle["size"], "counts": text}), m)
    with pytest.raises(InputError, match="counts sum"):
        rle_decode({"size": [2, 2], "counts": [1, 1]})


def test_polygon_round_trip_of_a_disc():
    rr, cc = np.mgrid[:40, :40]
    disc = ((rr - 20) ** 2 + (cc - 18) ** 2 <= 100).astype(np.uint8)
    polys = mask_to_polygons(disc)
    assert len(polys) == 1
    back = polygons_to_mask(polys, 40, 40)
    iou = (back & disc).sum() / (back | disc).sum()
    assert iou > 0.9


def test_writer_builds_merges_and_saves(tmp_path):
    w = CocoWriter(["mass", {"name": "calcification", "supercategory": "pathology"}])
    img = w.add_image("a.png", 16, 20)
    mask = np.zeros((16, 20), np.uint8)
    mask[3:7, 5:12] = 1
    ann = w.add_annotation(img, mask, "mass", {"severity": "malignant"})
    assert ann["bbox"] == [5.0, 3.0, 7.0, 4.0] and ann["area"] == 28.0
    assert ann["attributes"] == {"severity": "malignant"} and isinstance(ann["segmentation"]["counts"], str)
    np.testing.assert_array_equal(annotation_mask(ann, 16, 20), mask)
    poly = w.add_annotation(img, mask, "calcification", segmentation="polygon")
    assert (annotation_mask(poly, 16, 20) == mask).mean() > 0.95
    box = w.add_annotation(img, None, "mass", bbox=[1, 1, 4, 4])
    assert box["area"] == 16.0
    path = w.save(tmp_path / "a.json")
    assert not list(tmp_path.glob(".a.json*"))  # no temp file left behind

    other = CocoWriter(["calcification", "normal"])
    j = other.add_image("b.png", 16, 20)
    other.add_annotation(j, mask, "calcification")
    merged = CocoWriter().merge(path, other)
    d = merged.to_dict()
    assert [i["file_name"] for i in d["images"]] == ["a.png", "b.png"]
    assert [c["name"] for c in d["categories"]] == ["mass", "calcification", "normal"]
    assert [a["id"] for a in d["annotations"]] == [1, 2, 3, 4]
    last = d["annotations"][-1]
    assert last["image_id"] == 2 and last["category_id"] == merged.category_id("calcification")
    merged.save(tmp_path / "m.json")
    assert len(read_coco(tmp_path / "m.json")["annotations"]) == 4


def test_writer_rejects_bad_input():
    w = CocoWriter(["mass"])
    img = w.add_image("a.png", 8, 8)
    with pytest.raises(InputError, match="mask shape"):
        w.add_annotation(img, np.ones((4, 4)), "mass")
    with pytest.raises(InputError, match="empty mask"):
        w.add_annotation(img, np.zeros((8, 8)), "mass")
    with pytest.raises(InputError, match="unknown category"):
        w.add_annotation(img, np.ones((8, 8)), "tumour")
    with pytest.raises(InputError, match="outside image"):
        w.add_annotation(img, None, "mass", bbox=[6, 6, 4, 4])
    with pytest.raises(InputError, match="used twice"):
        w.add_image("b.png", 8, 8, id=img)


def test_read_coco_checks(tmp_path):
    good = {"images": [{"id": 1, "file_name": "a", "height": 10, "width": 10}],
            "categories": [{"id": 1, "name": "mass"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 5, 5]}]}
    (tmp_path / "c.json").write_text(json.dumps(good))
    with pytest.raises(InputError, match=r"c\.json: annotation 1 bbox .* outside its 10x10 image"):
        read_coco(tmp_path / "c.json")
    (tmp_path / "d.json").write_text("{")
    with pytest.raises(InputError, match=r"d\.json: not valid JSON"):
        read_coco(tmp_path / "d.json")
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(InputError, match="not a COCO file"):
        read_coco(tmp_path / "e.json")

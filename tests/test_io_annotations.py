import h5py
import numpy as np
import pytest

from mcfast.errors import InputError
from mcfast.io.annotations import match_voc_to_slices, read_mias_info, read_msd_patches, read_voc, read_voc_folder

INFO = """header text that is not data
mdb001 G CIRC B 535 425 197
mdb002 G NORM 
mdb003 D CALC M 10 20 5
mdb003 D CALC B 30 40 6
mdb004 F CALC M *NOTE 3*
"""


def test_mias_parsing_and_y_flip(tmp_path):
    (tmp_path / "Info.txt").write_text(INFO)
    rec = read_mias_info(tmp_path / "Info.txt")
    assert set(rec) == {"mdb001", "mdb002", "mdb003", "mdb004"}
    a = rec["mdb001"].abnormalities[0]
    assert (a.col, a.row, a.radius) == (535, 1023 - 425, 197)
    assert a.box() == [338.0, 401.0, 395.0, 395.0]
    assert rec["mdb002"].is_normal and rec["mdb001"].side == "right" and rec["mdb002"].side == "left"
    assert [x.severity for x in rec["mdb003"].abnormalities] == ["M", "B"]
    calc = rec["mdb004"].abnormalities[0]
    assert not calc.has_center and calc.box() is None and not calc.mask((8, 8)).any()
    m = rec["mdb003"].abnormalities[0].mask((1024, 1024))
    assert m[1023 - 20, 10] == 1 and m[20, 10] == 0 and m.sum() == 81  # disc of radius 5


@pytest.mark.parametrize("line,message", [
    ("mdb009 G CIRC B 1500 425 20", "outside the 1024x1024 image"),
    ("mdb009 G CIRC X 1 2 3", "severity must be B or M"),
    ("mdb009 Q CIRC B 1 2 3", "unknown tissue"),
    ("mdb009 G CIRC B 1 two 3", "expected X Y RADIUS"),
])
def test_mias_bad_lines_name_file_and_line(tmp_path, line, message):
    (tmp_path / "Info.txt").write_text(INFO + line + "\n")
    with pytest.raises(InputError, match=rf"Info\.txt line 7: .*{message}"):
        read_mias_info(tmp_path / "Info.txt")


VOC = """<annotation><size><width>64</width><height>48</height><depth>1</depth></size>
<object><name>A</name><bndbox><xmin>{}</xmin><ymin>5</ymin><xmax>30</xmax><ymax>20</ymax></bndbox></object>
</annotation>"""


def test_voc_boxes_and_matching(tmp_path):
    (tmp_path / "1.2.3.xml").write_text(VOC.format(10))
    (tmp_path / "9.9.9.xml").write_text(VOC.format(12))
    ann = read_voc_folder(tmp_path)
    assert ann["1.2.3"].objects[0].box == [10.0, 5.0, 20.0, 15.0]
    assert match_voc_to_slices(ann, ["0.0", "1.2.3", "4.5"]) == {1: ann["1.2.3"].objects}


def test_voc_outside_image_and_bad_xml(tmp_path):
    (tmp_path / "a.xml").write_text(VOC.format(10).replace("<xmax>30", "<xmax>80"))
    with pytest.raises(InputError, match=r"a\.xml object 1: box .* outside the 64x48 image"):
        read_voc(tmp_path / "a.xml")
    (tmp_path / "b.xml").write_text("<annotation><object>")
    with pytest.raises(InputError, match=r"b\.xml: not valid XML"):
        read_voc(tmp_path / "b.xml")


def test_msd_synthetic_and_errors(tmp_path):
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f["images"] = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
        f["labels"] = (np.random.default_rng(1).random((3, 1, 8, 8)) > 0.5).astype(np.float64)
    p = read_msd_patches(tmp_path / "p.h5")
    assert p.images.shape == p.masks.shape == (3, 8, 8) and p.masks.dtype == np.uint8
    with h5py.File(tmp_path / "q.h5", "w") as f:
        f["images"] = np.zeros((3, 8, 8), np.float32)
    with pytest.raises(InputError, match=r"q\.h5: no dataset 'labels'"):
        read_msd_patches(tmp_path / "q.h5")
    (tmp_path / "r.h5").write_text("nope")
    with pytest.raises(InputError, match=r"r\.h5: not a readable HDF5"):
        read_msd_patches(tmp_path / "r.h5")


@pytest.mark.data
def test_real_mias_info(shared_data):
    rec = read_mias_info(shared_data / "mias" / "Info.txt")
    assert len(rec) == len(list((shared_data / "mias" / "images").glob("mdb*.png")))
    assert sum(not r.is_normal for r in rec.values()) > 80
    assert any(len(r.abnormalities) > 1 for r in rec.values())
    assert any(a.cls == "CALC" and not a.has_center for r in rec.values() for a in r.abnormalities)


@pytest.mark.data
def test_real_voc_boxes_land_on_tumour_slices(shared_data):
    from mcfast.io.dicom import read_ct_tree

    root = shared_data / "lung-pet-ct-dx" / "A0001"
    ann = read_voc_folder(root / "annotations")
    vols = read_ct_tree(root / "dicom")
    matched = 0
    for vol in vols:
        hits = match_voc_to_slices(ann, vol.sop_uids)
        matched += len(hits)
        idx = sorted(hits)
        assert idx == list(range(idx[0], idx[-1] + 1))  # one contiguous run of slices
        medians = []
        for i, objects in hits.items():
            x, y, w, h = (int(v) for v in objects[0].box)
            medians.append(np.median(vol.hu[i, y:y + h, x:x + w]))
            assert medians[-1] > -400, vol.paths[i]  # tumour tissue, not lung air
            # the same box six slices above the tumour is aerated lung
            assert np.median(vol.hu[idx[0] - 6, y:y + h, x:x + w]) < -600
        assert -150 < np.median(medians) < 150  # soft tissue on the whole
    assert matched == len(ann) == 20  # every box belongs to one slice of one series


@pytest.mark.data
def test_real_msd_patches(shared_data):
    p = read_msd_patches(shared_data / "msd-lung-patches" / "val_patches.h5")
    assert p.images.shape == (130, 48, 48) and 0.0 <= p.images.min() and p.images.max() <= 1.0
    assert set(np.unique(p.masks)) <= {0, 1} and (p.masks.reshape(130, -1).sum(1) > 0).sum() > 100

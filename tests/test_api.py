"""The Python API (mcfast.api): the same items as the CLI, every argument form, one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mcfast
from mcfast.api import FORMATS, Synthesizer, build_recipe, save, to_coco
from mcfast.errors import InputError

STEPS = 5


@pytest.fixture(scope="module", autouse=True)
def one_thread_for_the_module():
    """One torch thread for the whole module, the module-scoped items included: the items compared here
    are made in different fixtures and tests, and float rounding depends on the thread count."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ct() -> Synthesizer:
    return Synthesizer.from_pretrained("ct:phantom64")


@pytest.fixture(scope="module")
def mg() -> Synthesizer:
    return Synthesizer.from_pretrained("mg:phantom64")


@pytest.fixture(scope="module")
def ct_items(ct):
    return ct.generate(n=3, seed=4, steps=STEPS, batch_size=2)


def test_api_items_are_the_cli_items(ct, ct_items, tmp_path):
    from mcfast.cli import main
    from mcfast.demo.defaults import demo_recipe

    out = tmp_path / "cli"
    code = main(["synthesize", "--ckpt", "ct:phantom64", "--recipe", str(demo_recipe("ct", "phantom64")),
                 "--n", "3", "--out", str(out), "--steps", str(STEPS), "--seed", "4", "--batch-size", "3",
                 "--no-progress"])
    assert code == 0
    for item in ct_items:
        assert np.array_equal(np.load(out / f"{item.index:06d}" / "image.npy"), item.model_image)
        meta = json.loads((out / f"{item.index:06d}" / "meta.json").read_text())
        assert [l["bbox"] for l in meta["lesions"]] == item.boxes
        assert np.array_equal(np.load(out / f"{item.index:06d}" / "labels.npy"), item.labels)


def test_item_fields_agree(ct_items):
    for item in ct_items:
        assert item.image.shape == (64, 64) and item.image.dtype == np.float32
        assert -1024 <= item.image.min() and item.image.max() <= 3071  # HU
        assert len(item.masks) == len(item.boxes) == len(item.categories) == len(item.meta["lesions"]) >= 1
        for k, (mask, (x, y, w, h)) in enumerate(zip(item.masks, item.boxes), start=1):
            rows, cols = np.nonzero(mask)
            assert (x, y, w, h) == (cols.min(), rows.min(), np.ptp(cols) + 1, np.ptp(rows) + 1)
            assert np.array_equal(item.labels == k, mask)
        assert item.anatomy.shape == (64, 64)
        assert "network_calls" in item.meta and item.meta["seed"] == item.seed
    assert "lesions=['nodule'" in repr(ct_items[0])


def test_indices_remake_one_item_alone(ct, ct_items):
    again = ct.generate(indices=[2], seed=4, steps=STEPS, batch_size=1)
    assert len(again) == 1 and again[0].index == 2
    assert np.array_equal(again[0].model_image, ct_items[2].model_image)


def test_array_anatomy_forms(ct):
    hu = mcfast.lung_phantom(size=64, seed=9)
    as_numpy = ct.generate(n=1, anatomy=hu, lesions=0, steps=STEPS)[0]
    as_tensor = ct.generate(n=1, anatomy=torch.from_numpy(hu)[None], lesions=0, steps=STEPS)[0]
    assert np.array_equal(as_numpy.model_image, as_tensor.model_image)
    assert np.allclose(as_numpy.anatomy, hu) and as_numpy.masks == [] and as_numpy.meta["anatomy"] == "<array>"
    # a larger slice is resized to the recipe's size
    big = ct.generate(n=1, anatomy=mcfast.lung_phantom(size=128, seed=9), lesions=1, steps=STEPS)[0]
    assert big.image.shape == (64, 64) and len(big.masks) == 1


@pytest.mark.parametrize("anatomy, match", [
    (np.zeros((64, 64, 3), np.float32), "2-D"),
    (np.full((64, 64), np.nan, np.float32), "NaN"),
    (np.zeros((2, 64, 64)), "2-D"),
    (np.full((64, 64), "a"), "real numbers"),
    (3.5, "'phantom', a path"),
    ("/no/such/slice.dcm", "anatomy path not found"),
])
def test_bad_anatomy_is_one_line(ct, anatomy, match):
    with pytest.raises(InputError, match=match) as exc:
        ct.generate(n=1, anatomy=anatomy, steps=STEPS)
    assert "\n" not in str(exc.value)


def test_mammogram_array_is_framed_and_checked(mg):
    img, _ = mcfast.breast_phantom_with_mask(size=96, seed=2)
    item = mg.generate(n=1, anatomy=img, steps=STEPS)[0]
    assert item.image.shape == (64, 64) and 0 <= item.image.min() and item.image.max() <= 1
    assert item.categories == ["mass"]
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        mg.generate(n=1, anatomy=img * 255, steps=STEPS)


def test_lesion_arguments(ct):
    base = ct.recipe.pathology[0]
    assert [len(ct.generate(n=1, lesions=k, steps=STEPS)[0].masks) for k in (0, 2)] == [0, 2]
    two_kinds = build_recipe(ct.recipe, lesions=[{"count": 1}, {"count": 2, "category": "mass"}])
    assert [(p.count, p.category, p.size) for p in two_kinds.pathology] == [
        ((1, 1), base.category, base.size), ((2, 2), "mass", base.size)]
    for bad, match in ((True, "a count"), (-1, ">= 0"), ("two", "a count"), ([3], r"lesions\[0\]"),
                       ({"colour": 1}, "unknown key")):
        with pytest.raises(InputError, match=match):
            build_recipe(ct.recipe, lesions=bad)


def test_settings_are_recipe_settings(ct):
    r = build_recipe(ct.recipe, seed=3, steps=20, sampler="ddim", eta=0.5, start_step=600, image_size=32)
    assert (r.seed, r.sampler.steps, r.sampler.method, r.sampler.eta, r.sampler.start_step, r.image_size) == (
        3, "20", "ddim", 0.5, 600, 32)
    assert ct.recipe.seed != 3 or ct.recipe.sampler.steps != "20"  # the synthesizer's own recipe is untouched
    fast = build_recipe(ct.recipe, fast=True)
    assert fast.sampler.method == "ddim" and fast.sampler.x0_guidance
    for kwargs, match in (({"sampler": "euler"}, "sampler.method"), ({"start_step": 0}, "start_step"),
                          ({"image_size": 60}, "multiple of 8"), ({"formats": ("jpeg",)}, "unknown output format")):
        with pytest.raises(InputError, match=match):
            build_recipe(ct.recipe, **kwargs)
    with pytest.raises(InputError, match="n must be an integer"):
        ct.generate(n=0)
    with pytest.raises(InputError, match="indices"):
        ct.generate(indices=[-1])


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(InputError, match="no shipped ct model named 'huge'"):
        Synthesizer.from_pretrained("ct:huge")
    with pytest.raises(InputError, match="no such model folder"):
        Synthesizer.from_pretrained(tmp_path / "missing")
    with pytest.raises(InputError, match="precision"):
        Synthesizer.from_pretrained("ct:phantom64", precision="int8")
    from mcfast.demo.defaults import demo_recipe

    with pytest.raises(InputError, match="modality = 'mg'.*trained on 'ct'"):
        Synthesizer.from_pretrained("ct:phantom64", recipe=demo_recipe("mg", "phantom64"))


def test_save_formats_and_coco(ct_items, tmp_path):
    folder = ct_items[0].save(tmp_path / "one", formats=("npy",))
    assert sorted(p.name for p in folder.iterdir()) == [
        "image.npy", "image_hu.npy", "labels.npy", "lung.png", "mask.png", "meta.json"]
    seg_only = ct_items[0].save(tmp_path / "seg", formats=("seg",))
    assert {"image.dcm", "seg.dcm"} <= {p.name for p in seg_only.iterdir()}
    coco_path = save(ct_items, tmp_path / "all", formats=FORMATS)
    coco = json.loads(coco_path.read_text())
    assert coco == json.loads(json.dumps(to_coco(ct_items)))
    assert [im["id"] for im in coco["images"]] == [1, 2, 3]
    assert len(coco["annotations"]) == sum(len(i.masks) for i in ct_items)


def test_save_refuses_mixed_modalities_before_writing(ct_items, mg, tmp_path):
    mixed = ct_items[:1] + mg.generate(n=1, steps=STEPS)
    with pytest.raises(InputError, match="several modalities"):
        save(mixed, tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="file"):
        ct_items[0].save(tmp_path / "file")


def test_top_level_names_resolve():
    for name in mcfast._LAZY:
        assert getattr(mcfast, name) is not None
    assert mcfast.Synthesizer is Synthesizer


def test_a_recipe_that_cannot_plan_leaves_no_provenance(ct, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(InputError, match="pathology"):
        ct.synthesize(1, out, lesions={"count": 8, "size": [32, 32]}, steps=STEPS, progress=False)
    assert not (out / "provenance.json").exists()
    result = ct.synthesize(1, out, steps=STEPS, progress=False)  # the corrected recipe is not refused
    assert result.written == 1 and (out / "provenance.json").is_file()


def test_batch_size_zero_is_refused(ct):
    with pytest.raises(InputError, match="batch_size must be an integer >= 1"):
        ct.generate(n=1, batch_size=0, steps=STEPS)


def test_auto_precision_follows_the_cpu(monkeypatch):
    """"auto" is bf16 only where the device computes bf16 natively: emulated bf16 is the slow choice."""
    import torch

    from mcfast.models import inference

    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert inference.fastest_precision("cpu") == expected
        assert Synthesizer.from_pretrained("ct:phantom64", precision="auto").engine.precision == expected
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert inference.fastest_precision("cpu") == "bf16"
    assert inference.fastest_precision("cuda") == "bf16"  # make_model_fn drops to fp16 on GPUs without bf16

"""Classifier augmentation study at a tiny size on generated images (no real data needed)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcfast.errors import InputError
from mcfast.evaluate import classifier as clf
from mcfast.evaluate import config as ecfg
from mcfast.evaluate import data as edata
from mcfast.evaluate.splits import group_split, mias_labels, mias_woman

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _blob_image(rng, abnormal: bool, size: int = 40) -> np.ndarray:
    img = rng.normal(0.4, 0.08, (size, size))
    if abnormal:  # a bright disc somewhere: learnable, like a mass
        cy, cx = rng.integers(8, size - 8, 2)
        yy, xx = np.mgrid[:size, :size]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] += 0.4
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_labelled_folder(root: Path, n: int, seed: int, layout: str = "subfolders") -> Path:
    rng = np.random.default_rng(seed)
    labels = {}
    for i in range(n):
        abnormal = i % 2 == 1
        rel = f"{'abnormal' if abnormal else 'normal'}/img{i:03d}.png" if layout == "subfolders" else f"img{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_blob_image(rng, abnormal)).save(root / rel)
        labels[rel] = "abnormal" if abnormal else "normal"
    if layout == "json":
        (root / "labels.json").write_text(json.dumps(labels))
    return root


def tiny_config(tmp_path: Path, synthetic_dir: Path | None) -> ecfg.EvalConfig:
    cfg = ecfg.EvalConfig()
    cfg.data.dataset = "folder"
    cfg.data.root = str(make_labelled_folder(tmp_path / "real", 24, seed=1, layout="json"))
    cfg.data.image_size = 32
    cfg.data.synthetic_dir = str(synthetic_dir) if synthetic_dir else ""
    cfg.data.split_fractions = [0.5, 0.25, 0.25]
    cfg.study.seeds = [0]
    cfg.study.n_bootstrap = 50
    cfg.study.output_dir = str(tmp_path / "out")
    cfg.train.epochs = 1
    cfg.train.batch_size = 8
    return cfg


def test_tiny_study_has_every_increment_and_valid_metrics(tmp_path):
    synth = make_labelled_folder(tmp_path / "synth", 10, seed=2)
    (synth / "provenance.json").write_text(json.dumps({"recipe": "tiny", "seed": 7}))
    cfg = tiny_config(tmp_path, synth)
    real = edata.load_real(cfg)
    assert real.images.shape == (24, 32, 32) and real.images.min() >= -1 and real.images.max() <= 1
    synthetic = edata.load_synthetic(cfg)
    assert len(synthetic) == 10 and set(synthetic.labels.tolist()) == {0, 1}
    results = clf.run_classifier_study(cfg, real, synthetic)
    incs = [r["increment"] for r in results["rows"]]
    assert incs == [0.0, 0.33, 0.67, 1.0, 1.33]
    n_real = results["rows"][0]["n_real_train"]
    assert n_real == results["splits"]["train"]["n"]
    for r in results["rows"]:
        assert r["n_synthetic"] == min(int(round(r["increment"] * n_real)), 10)
        for s in r["seeds"]:
            assert 0.0 <= s["auc"] <= 1.0 and 0.0 <= s["f1"] <= 1.0
            assert s["auc_lo"] <= s["auc_hi"]
        assert 0.0 <= r["auc_lo"] <= r["auc_hi"] <= 1.0 and 0.0 <= r["f1_lo"] <= r["f1_hi"] <= 1.0
    assert results["rows"][-1]["capped"]  # +133 % of 12 = 16 > 10 available
    paths = clf.write_results(results, cfg.study.output_dir)
    table = paths["table"].read_text()
    for label in ("+0%", "+33%", "+67%", "+100%", "+133%"):
        assert f"| {label} |" in table
    assert json.loads(paths["provenance"].read_text()) == {"recipe": "tiny", "seed": 7}
    assert paths["plot"].stat().st_size > 1000
    assert json.loads(paths["json"].read_text())["rows"][0]["seeds"][0]["seed"] == 0


def test_without_synthetic_only_baseline_runs_and_rest_is_pending(tmp_path):
    cfg = tiny_config(tmp_path, None)
    cfg.study.increments = [0.0, 0.33]
    results = clf.run_classifier_study(cfg, edata.load_real(cfg), None)
    assert [r["increment"] for r in results["rows"]] == [0.0]
    assert results["skipped"][0]["increment"] == 0.33
    assert "pending" in clf.results_table_markdown(results)


def test_training_is_reproducible_for_a_seed(tmp_path):
    cfg = tiny_config(tmp_path, None)
    real = edata.load_real(cfg)
    a, _ = clf.train_binary_classifier(real.images, real.labels, None, None, cfg.train, seed=3)
    b, _ = clf.train_binary_classifier(real.images, real.labels, None, None, cfg.train, seed=3)
    assert np.array_equal(clf.predict_scores(a, real.images[:4]), clf.predict_scores(b, real.images[:4]))


def test_bf16_training_is_reproducible_and_rounds_only_the_forward_pass(tmp_path):
    import torch

    cfg = tiny_config(tmp_path, None)
    cfg.train.precision = "bf16"
    real = edata.load_real(cfg)
    a, _ = clf.train_binary_classifier(real.images, real.labels, None, None, cfg.train, seed=3)
    b, _ = clf.train_binary_classifier(real.images, real.labels, None, None, cfg.train, seed=3)
    sa = clf.predict_scores(a, real.images[:6], precision="bf16")
    assert np.array_equal(sa, clf.predict_scores(b, real.images[:6], precision="bf16"))
    assert all(p.dtype == torch.float32 for p in a.parameters())  # weights stay float32
    fp32 = clf.predict_scores(a, real.images[:6])
    assert not np.array_equal(sa, fp32)  # the forward pass really ran in bfloat16 ...
    assert np.abs(sa - fp32).max() < 0.05  # ... and only rounded it


def test_unknown_classifier_precision_is_one_line(tmp_path):
    bad = tmp_path / "cfg.toml"
    bad.write_text('[train]\nprecision = "fp16"\n')
    with pytest.raises(InputError, match="train.precision must be one of fp32, bf16, got 'fp16'"):
        ecfg.load_config(bad)


def test_woman_level_split_keeps_both_breasts_together():
    names = [f"mdb{i:03d}" for i in range(1, 201)]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, len(names))
    groups = np.array([mias_woman(n) for n in names])
    assert mias_woman("mdb001") == mias_woman("mdb002") == 1 and mias_woman("mdb003") == 2
    for seed in range(5):
        splits = group_split(labels, groups, (0.6, 0.2, 0.2), seed)
        where = {}
        for split, idx in splits.items():
            for i in idx:
                where[names[i]] = split
        assert len(where) == len(names)  # every image in exactly one split
        for k in range(1, 101):
            assert where[f"mdb{2 * k - 1:03d}"] == where[f"mdb{2 * k:03d}"]
        for idx in splits.values():  # stratified: every split has both classes
            assert set(labels[idx].tolist()) == {0, 1}
    a = group_split(labels, groups, (0.6, 0.2, 0.2), 1)
    b = group_split(labels, groups, (0.6, 0.2, 0.2), 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_bad_inputs_give_clear_errors(tmp_path):
    bad = tmp_path / "cfg.toml"
    bad.write_text("[data]\nimage_sise = 32\n")
    with pytest.raises(InputError, match="image_sise"):
        ecfg.load_config(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no labelled images"):
        edata.load_labeled_folder(empty, 32)
    np.save(tmp_path / "hu.npy", np.full((8, 8), 500.0))
    with pytest.raises(InputError, match=r"hu\.npy.*\[-1, 1\]"):
        edata.read_image_file(tmp_path / "hu.npy")


def test_repo_configs_parse():
    root = Path(__file__).resolve().parents[1]
    for name in ("eval_classifier_mias.toml", "eval_classifier_ci.toml", "eval_classifier_ct.toml",
                 "eval_classifier_mias224.toml"):
        cfg = ecfg.load_config(root / "configs" / name)
        assert cfg.train.model.startswith("convnext")


@pytest.mark.data
def test_mias_labels_and_women_from_info_txt():
    info = DATA / "mias" / "Info.txt"
    if not info.is_file():
        pytest.skip(f"MIAS not found at {info}")
    labels = mias_labels(info)
    images = {p.stem for p in (DATA / "mias" / "images").glob("mdb*.png")}
    present = {k: v for k, v in labels.items() if k in images}
    assert len(present) == len(images)
    assert present["mdb001"] == 1 and present["mdb003"] == 0  # CIRC, NORM in Info.txt
    assert sum(present.values()) > 0 and sum(1 - v for v in present.values()) > 0


@pytest.mark.data
def test_ct_patches_from_lung_pet_ct_dx():
    root = DATA / "lung-pet-ct-dx" / "A0001"
    if not (root / "dicom").is_dir():
        pytest.skip(f"Lung-PET-CT-Dx not found at {root}")
    real = edata.load_ct_patches(root, image_size=32, patch_px=64, seed=0)
    assert real.images.shape[1:] == (32, 32) and -1 <= real.images.min() and real.images.max() <= 1
    n_pos = int(real.labels.sum())
    assert n_pos > 0 and len(real) - n_pos > 0
    # both reconstructions of a slice position share a group, so they never straddle a split
    splits = group_split(real.labels, real.groups, (0.5, 0.25, 0.25), 0)
    seen = {}
    for split, idx in splits.items():
        for g in set(real.groups[idx].tolist()):
            assert seen.setdefault(g, split) == split


def _phantom_slice_png(path: Path, nodule: tuple[int, int] | None, rng) -> None:
    """A 128-px lung-window slice: soft-tissue body, two dark lungs, optional bright nodule."""
    yy, xx = np.mgrid[:128, :128]
    hu = np.full((128, 128), -1000.0)
    hu[((yy - 64) / 56) ** 2 + ((xx - 64) / 60) ** 2 < 1] = 40
    for cx in (38, 90):
        hu[((yy - 64) / 40) ** 2 + ((xx - cx) / 20) ** 2 < 1] = -800
    if nodule:
        hu[(yy - nodule[1]) ** 2 + (xx - nodule[0]) ** 2 < 36] = 30
    hu += rng.normal(0, 20, hu.shape)
    center, width = edata.CT_WINDOWS["lung"]
    Image.fromarray((np.clip((hu - center + width / 2) / width, 0, 1) * 255).astype(np.uint8)).save(path)


def test_ct_synthetic_coco_slices_are_cut_into_patches(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "synth_ct"
    folder.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "tumour"}]}
    for i in range(3):
        nodule = (38, 60) if i < 2 else None
        _phantom_slice_png(folder / f"s{i}.png", nodule, rng)
        coco["images"].append({"id": i, "file_name": f"s{i}.png", "width": 128, "height": 128})
        if nodule:
            coco["annotations"].append({"id": i, "image_id": i, "category_id": 1, "bbox": [32, 54, 12, 12]})
    (folder / "coco.json").write_text(json.dumps(coco))  # the name `mcfast synthesize` writes
    cfg = ecfg.EvalConfig()
    cfg.data.dataset, cfg.data.image_size, cfg.data.ct_patch_px = "ct", 32, 40
    cfg.data.ct_positives_per_box, cfg.data.ct_negatives_per_positive = 2, 1.0
    syn = edata.load_synthetic(cfg, folder)
    assert int(syn.labels.sum()) == 4  # 2 slices x 1 box x 2 crops
    assert int((syn.labels == 0).sum()) == 4 + 2  # 1 per tumour crop, 2 from the clear slice
    assert syn.images.shape[1:] == (32, 32)
    # tumour crops are centred on the nodule: their centre is bright soft tissue in the lung window
    centre = syn.images[syn.labels == 1][:, 14:18, 14:18].mean()
    assert centre > syn.images[syn.labels == 0][:, 14:18, 14:18].mean()
    assert set(syn.groups.tolist()) == {"s0", "s1", "s2"}


def test_synthesize_style_folder_with_coco_json(tmp_path):
    """`mcfast synthesize` writes NNNNNN/image.png items, coco.json and provenance.json."""
    rng = np.random.default_rng(0)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "mass"}]}
    for i in range(4):
        (tmp_path / f"{i:06d}").mkdir()
        Image.fromarray(_blob_image(rng, i % 2 == 1)).save(tmp_path / f"{i:06d}" / "image.png")
        coco["images"].append({"id": i + 1, "file_name": f"{i:06d}/image.png", "width": 40, "height": 40})
        if i % 2 == 1:
            coco["annotations"].append({"id": i, "image_id": i + 1, "category_id": 1, "bbox": [5, 5, 10, 10]})
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (tmp_path / "provenance.json").write_text(json.dumps({"recipe": {"modality": "mg"}}))
    syn = edata.load_labeled_folder(tmp_path, 32)
    assert syn.labels.tolist() == [0, 1, 0, 1]
    assert syn.names == [f"{i:06d}/image.png" for i in range(4)] and len(set(syn.groups.tolist())) == 4
    assert edata.read_provenance(tmp_path)["content"] == {"recipe": {"modality": "mg"}}


@pytest.mark.data
def test_mias_breast_framing_matches_synthesis(shared_data):
    """framing='breast' crops to the breast with the chest wall on the left, like synthetic mammograms."""
    from mcfast.evaluate.data import load_mias

    film = load_mias(shared_data / "mias", 32)
    breast = load_mias(shared_data / "mias", 32, framing="breast")
    assert breast.images.shape == film.images.shape

    def chest_wall_left(images):
        return (images[:, :, :8].mean(axis=(1, 2)) > images[:, :, -8:].mean(axis=(1, 2))).mean()

    # films show left and right breasts as scanned; the breast framing puts every chest wall on the left
    assert chest_wall_left(breast.images) >= 0.95
    assert chest_wall_left(film.images) < 0.7

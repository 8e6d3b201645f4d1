"""Segmentation study (issue 18): metrics on crafted masks, case splits, config errors, the loop and resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monai", reason="the segmentation study needs MONAI (the 'eval' extra)")

from mcfast.errors import InputError  # noqa: E402
from mcfast.evaluate import segmentation as S  # noqa: E402
from mcfast.evaluate import segmentation_report as R  # noqa: E402
from mcfast.evaluate.segmentation_data import SegCrops, crop_lesions, msd_cases  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def square(size, r0, c0, side):
    m = np.zeros((size, size), np.uint8)
    m[r0:r0 + side, c0:c0 + side] = 1
    return m


def tiny_crops(n_cases=6, per_case=3, size=32, seed=0, group_prefix="case"):
    rng = np.random.default_rng(seed)
    images, masks, groups = [], [], []
    for c in range(n_cases):
        for k in range(per_case):
            m = square(size, *rng.integers(4, size - 12, 2), int(rng.integers(5, 9)))
            images.append((rng.normal(-0.6, 0.1, (size, size)) + 1.2 * m).astype(np.float32))
            masks.append(m)
            groups.append(f"{group_prefix}-{c}")
    return SegCrops(np.stack(images), np.stack(masks), np.array(groups), [f"{group_prefix}{i}" for i in range(len(images))])


def tiny_config(tmp_path, **train):
    cfg = S.SegConfig()
    cfg.study.seeds = [0, 1]
    cfg.study.increments = [0.0, 1.0]
    cfg.study.n_bootstrap = 20
    cfg.study.report_dir = str(tmp_path / "report")
    cfg.data.image_size = 32
    cfg.data.split_fractions = [0.5, 0.0, 0.5]
    cfg.train.features = [4, 4, 8, 8, 16, 4]
    cfg.train.epochs = 1
    cfg.train.batch_size = 8
    for k, v in train.items():
        setattr(cfg.train, k, v)
    S.validate_segmentation_config(cfg)
    return cfg


# --------------------------------------------------------------------------- metrics on crafted masks
def test_dice_known_values():
    a = square(32, 4, 4, 10)
    half = square(32, 4, 9, 10)           # shifted by half its width: 50 of 100 pixels shared
    pred = np.stack([a, half, square(32, 20, 20, 5), np.zeros_like(a), a])
    truth = np.stack([a, a, a, a, np.zeros_like(a)])
    d = S.dice_per_image(pred, truth)
    assert d[:4] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert np.isnan(d[4])                 # no tumour in the truth: not counted


def test_lesion_sensitivity_rules():
    truth = square(32, 2, 2, 6) + square(32, 20, 20, 8)          # two lesions
    pred = np.zeros_like(truth)
    pred[7, 7] = 1                         # one pixel inside the first lesion
    pred[28:31, 2:5] = 1                   # a false positive away from both
    overlap = S.SegMetricsConfig(found_rule="overlap", min_overlap_px=1)
    iou = S.SegMetricsConfig(found_rule="iou", iou_threshold=0.1)
    (r,) = S.lesion_detection(pred[None], truth[None], overlap)
    assert r["found"] == [True, False] and r["false_positives"] == 1
    assert r["iou"][0] == pytest.approx(1 / 36, abs=1e-4)
    (r,) = S.lesion_detection(pred[None], truth[None], iou)
    assert r["found"] == [False, False]   # 1/36 < 0.1
    pred2 = square(32, 20, 20, 8) | square(32, 2, 2, 3)         # all of lesion 2, 9/36 of lesion 1
    (r,) = S.lesion_detection(pred2[None], truth[None], iou)
    assert r["found"] == [True, True] and r["false_positives"] == 0


def test_sign_flip_test_exact():
    assert R.sign_flip_test(np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(2 / 16)
    assert R.sign_flip_test(np.array([0.1, -0.1])) == pytest.approx(1.0)


# --------------------------------------------------------------------------- cases and splits
def test_msd_cases_blocks_and_merge():
    rng = np.random.default_rng(0)
    imgs = rng.normal(size=(30, 16, 16)).astype(np.float32)
    imgs[10:20] = imgs[0:10] + 0.01 * rng.normal(size=(10, 16, 16))   # block 1 repeats block 0's case
    masks = np.ones((30, 16, 16), np.uint8)
    cases = msd_cases(imgs, masks, block=10, merge_fraction=0.5)
    assert len(set(cases[:20])) == 1 and set(cases[20:]).isdisjoint(cases[:20])
    assert len(set(msd_cases(imgs, masks, 10, 0.0))) == 3


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_splits_never_share_a_case(tmp_path, seed):
    cfg = tiny_config(tmp_path)
    cfg.data.split_seed = seed
    real = tiny_crops(n_cases=7)
    sp = S.split_real(cfg, real)
    assert sum(v.size for v in sp.values()) == len(real)
    assert set(real.groups[sp["train"]]).isdisjoint(real.groups[sp["test"]])


# --------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("text, words", [
    ("[train]\nepochz = 3\n", "unknown key"),
    ("[metrics]\nfound_rule = 'touch'\n", "found_rule"),
    ("[study]\nincrements = [0.33, 1.0]\n", "must include 0"),
    ("[data]\nimage_size = 40\n", "multiple of 16"),
    ("[synthesis]\nlesion_sources = ['mias']\n", "lesion_sources"),
    ("[train]\nepochs = 'many'\n", "expected a number"),
    ("[nope]\n", "unknown section"),
    ("[study\n", "invalid TOML"),
])
def test_config_errors_are_one_line(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        S.load_segmentation_config(path)
    assert words in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(InputError, match="not found"):
        S.load_segmentation_config(tmp_path / "missing.toml")


def test_shipped_config_loads():
    cfg = S.load_segmentation_config(Path(__file__).resolve().parents[1] / "configs" / "eval_segmentation_ct.toml")
    assert len(cfg.study.seeds) >= 5 and cfg.study.increments == [0.0, 0.33, 0.67, 1.0, 1.33]


# --------------------------------------------------------------------------- the loop, the report, resume
def test_loop_end_to_end_report_and_resume(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    real = tiny_crops(n_cases=6)
    synthetic = tiny_crops(n_cases=1, per_case=12, seed=5, group_prefix="synthetic")
    out = tmp_path / "runs"
    S.run_segmentation_study(cfg, real, synthetic, out, progress=False)
    files = sorted((out / "runs").glob("*.json"))
    assert [f.name for f in files] == ["inc0.00_seed0.json", "inc0.00_seed1.json", "inc1.00_seed0.json", "inc1.00_seed1.json"]
    run = json.loads(files[2].read_text())
    assert run["n_synthetic"] == run["n_real_train"] == 9 and len(run["dice"]) == 9
    paths = R.write_report(out)
    res = json.loads(paths["json"].read_text())
    assert [r["increment"] for r in res["rows"]] == [0.0, 1.0] and paths["plot"].is_file()
    delta = res["rows"][1]["dice"]["vs_real_only"]
    assert delta["lo"] <= delta["hi"] and 0 <= delta["p_sign_flip"] <= 1 and 0 < delta["p_bootstrap"] <= 1
    assert "| +100% |" in paths["table"].read_text()

    def boom(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(S, "train_segmenter", boom)
    S.run_segmentation_study(cfg, real, synthetic, out, progress=False)   # everything finished: nothing to do
    (out / "runs" / "inc1.00_seed1.json").unlink()
    monkeypatch.undo()
    S.run_segmentation_study(cfg, real, synthetic, out, progress=False)   # only the missing one
    assert (out / "runs" / "inc1.00_seed1.json").is_file()
    cfg.train.epochs = 2
    with pytest.raises(InputError, match="another configuration"):
        S.run_segmentation_study(cfg, real, synthetic, out, progress=False)


def test_rows_without_synthetic_are_pending(tmp_path):
    cfg = tiny_config(tmp_path)
    out = tmp_path / "runs"
    S.run_segmentation_study(cfg, tiny_crops(n_cases=4), None, out, progress=False)
    res = R.summarize(*R.load_runs(out))
    assert [r["increment"] for r in res["rows"]] == [0.0] and res["pending"] == [1.0]


def test_crop_lesions_keeps_exact_masks():
    labels = np.zeros((128, 128), np.uint8)
    labels[30:40, 30:40] = 1
    labels[90:100, 80:86] = 2
    image = np.full((128, 128), -0.8, np.float32)
    crops = crop_lesions(image, labels, crop_px=48, size=32, window="lung", rng=np.random.default_rng(0))
    assert len(crops) == 2
    for img, m in crops:
        assert img.shape == m.shape == (32, 32) and m.any() and -1 <= img.min() <= img.max() <= 1
    # 10x10 lesion at 48 -> 32: about (10 * 2/3)^2 pixels
    assert 30 <= crops[0][1].sum() <= 60


# --------------------------------------------------------------------------- real data (skipped without it)
@pytest.mark.skipif(not (DATA / "msd-lung-patches" / "val_patches.h5").is_file(),
                    reason="real data absent: ../shared/data/msd-lung-patches/val_patches.h5")
def test_real_msd_cases_and_lesion_sources(tmp_path):
    pytest.importorskip("h5py")
    from mcfast.evaluate.segmentation_data import lesion_patches, load_msd_crops, synthesis_recipe
    from mcfast.synthesis.recipe import recipe_from_dict

    cfg = S.load_segmentation_config(Path(__file__).resolve().parents[1] / "configs" / "eval_segmentation_ct.toml")
    real = load_msd_crops(DATA / "msd-lung-patches" / "val_patches.h5", 48, "lung", 10, 0.5)
    assert len(real) == 130 and len(set(real.groups.tolist())) >= 10
    sp = S.split_real(cfg, real)
    assert set(real.groups[sp["train"]]).isdisjoint(real.groups[sp["test"]])
    sources = ["msd", "lidc"] if (DATA / "lidc-nodule-slices").is_dir() else ["msd"]
    imgs, masks = lesion_patches(str(DATA / "msd-lung-patches" / "val_patches.h5"), sp["train"],
                                 str(DATA / "lidc-nodule-slices"), sources, 0)
    assert imgs.shape == masks.shape and masks.reshape(len(masks), -1).any(1).all()
    # no test-case tumour is lent to the synthesis: the MSD part is exactly the training tumour patches
    n_train_tumours = int(real.masks[sp["train"]].reshape(sp["train"].size, -1).any(1).sum())
    assert (imgs.shape[0] == n_train_tumours) == (sources == ["msd"])
    recipe_from_dict(synthesis_recipe(cfg.synthesis, tmp_path / "lesions.h5", 4))   # a valid recipe

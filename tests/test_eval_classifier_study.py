"""Issue 18 (mammography): fixed test women, the paired test, stratified synthetic picks, resumable runs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from mcfast.errors import InputError
from mcfast.evaluate import classifier as clf
from mcfast.evaluate import config as ecfg
from mcfast.evaluate import data as edata
from mcfast.evaluate.metrics import f1_score, paired_bootstrap_test, roc_auc
from mcfast.evaluate.splits import (fixed_test_split, group_name, mias_label_of, read_test_groups, study_split)

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------- metrics
def test_auc_on_crafted_scores():
    y = [0, 0, 1, 1]
    assert roc_auc(y, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert roc_auc(y, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5  # ties count one half


def test_paired_test_known_values():
    y = np.array([0, 0, 1, 1])
    a = np.array([[0.1, 0.4, 0.35, 0.8]] * 3)  # AUC 0.75, three seeds
    b = np.array([[0.1, 0.2, 0.3, 0.4]] * 3)   # AUC 1.0
    r = paired_bootstrap_test(roc_auc, y, a, b, n_boot=200, seed=0)
    assert r["delta"] == pytest.approx(-0.25) and r["per_seed_delta"] == pytest.approx([-0.25] * 3)
    # identical arms: every resampled difference is 0, so the p-value is exactly 1
    same = paired_bootstrap_test(roc_auc, y, a, a, n_boot=99, seed=0)
    assert same["delta"] == 0.0 and same["p"] == 1.0 and same["delta_lo"] == same["delta_hi"] == 0.0
    # perfect vs inverted: AUC 1 vs 0 in every resample, so Δ = 1 always and p is its floor 2 / (B + 1)
    y8 = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    good = np.tile(np.arange(8) / 8.0, (2, 1))
    r = paired_bootstrap_test(roc_auc, y8, good, -good, n_boot=99, seed=1)
    assert r["delta"] == 1.0 and r["p"] == pytest.approx(2 / 100) and r["delta_lo"] == 1.0


def test_paired_test_generic_per_unit_mean_matches_normal_theory():
    """With the per-unit mean as the metric (e.g. per-image Dice) and one seed, the paired bootstrap of the
    mean difference has the analytic standard error sd(d) / sqrt(n) and the z-test's p-value."""
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    n = 400
    b = rng.uniform(0.3, 0.9, n)
    d = rng.normal(0.02, 0.1, n)              # true mean difference 0.02, se 0.005: z ≈ 4 at the sample mean
    a = b + d
    r = paired_bootstrap_test(lambda y, s: float(np.mean(s)), None, a, b, n_boot=4000, seed=3)
    se = d.std(ddof=0) / np.sqrt(n)
    assert r["delta"] == pytest.approx(d.mean())
    assert (r["delta_hi"] - r["delta_lo"]) / (2 * 1.959964) == pytest.approx(se, rel=0.08)
    # a difference near 2 standard errors: the bootstrap p agrees with the z-test to ~0.02
    a2 = b + (d - d.mean() + 2.0 * se)
    r2 = paired_bootstrap_test(lambda y, s: float(np.mean(s)), None, a2, b, n_boot=4000, seed=4)
    assert r2["p"] == pytest.approx(2 * norm.sf(2.0), abs=0.02)


def test_paired_test_checks_shapes():
    with pytest.raises(InputError, match="shape"):
        paired_bootstrap_test(roc_auc, [0, 1], [[0.1, 0.2]], [[0.1, 0.2, 0.3]])


def test_paired_f1_on_thresholded_predictions():
    y = np.array([0, 0, 1, 1])
    r = paired_bootstrap_test(f1_score, y, np.array([[0, 0, 1, 1]]), np.array([[0, 1, 1, 0]]), n_boot=50)
    assert r["delta"] == pytest.approx(1.0 - 0.5)


# --------------------------------------------------------------------------- splits
def _women_data(n_women=60, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(1, n_women + 1), 2).astype(object)
    labels = np.zeros(groups.size, dtype=int)
    labels[rng.choice(groups.size, groups.size // 3, replace=False)] = 1
    return labels, groups


def test_fixed_test_split_honours_the_list_and_never_shares_a_woman():
    labels, groups = _women_data()
    test = [f"woman{k:03d}" for k in (2, 5, 11, 17, 23, 31, 44, 59)]
    for seed in range(4):
        sp = fixed_test_split(labels, groups, test, (0.8, 0.2, 0.0), seed)
        names = {k: {group_name(g) for g in groups[v].tolist()} for k, v in sp.items()}
        assert names["test"] == set(test)
        assert not (names["train"] & names["val"]) and not (names["train"] | names["val"]) & names["test"]
        assert sum(len(v) for v in sp.values()) == labels.size  # every image in exactly one split
        assert abs(len(names["val"]) - 0.2 * 52) <= 2
        for k in ("train", "val"):
            assert set(labels[sp[k]].tolist()) == {0, 1}  # stratified
    with pytest.raises(InputError, match="woman999"):
        fixed_test_split(labels, groups, ["woman999"], (0.8, 0.2, 0.0))


def test_study_split_reads_test_groups_from_a_toml(tmp_path):
    labels, groups = _women_data()
    toml = tmp_path / "held.toml"
    toml.write_text('[split]\nvalidation_patients = ["woman003", "woman004", "woman010"]\n')
    assert read_test_groups(toml) == ["woman003", "woman004", "woman010"]
    d = ecfg.DataConfig()
    d.test_groups_from, d.split_fractions = str(toml), [0.75, 0.25, 0.0]
    sp = study_split(labels, groups, d)
    assert {group_name(g) for g in groups[sp["test"]].tolist()} == {"woman003", "woman004", "woman010"}
    d2 = ecfg.DataConfig()
    d2.test_groups, d2.split_fractions = ["woman003", "woman004", "woman010"], [0.75, 0.25, 0.0]
    sp2 = study_split(labels, groups, d2)
    assert all(np.array_equal(sp[k], sp2[k]) for k in sp)  # the list and the file agree
    cfg = ecfg.EvalConfig()
    cfg.data.test_groups, cfg.data.test_groups_from = ["woman003"], str(toml)
    with pytest.raises(InputError, match="not both"):
        ecfg.validate_config(cfg)


def test_the_realism_test_women_are_the_classifier_test_women():
    held = read_test_groups(REPO / "configs" / "mg_mias_data.toml")
    assert len(held) == 28 and len(set(held)) == 28
    names = [f"mdb{i:03d}" for i in range(1, 323)]
    from mcfast.evaluate.splits import mias_woman

    groups = np.array([mias_woman(n) for n in names], dtype=object)
    labels = np.array([i % 3 == 0 for i in range(len(names))], dtype=int)
    cfg = ecfg.load_config(REPO / "configs" / "eval_classifier_mias224.toml")
    cfg.data.test_groups_from = str(REPO / "configs" / "mg_mias_data.toml")
    sp = study_split(labels, groups, cfg.data)
    assert sorted({group_name(g) for g in groups[sp["test"]].tolist()}) == sorted(held)


def test_mias_label_rules():
    assert mias_label_of({"NORM"}, "any") == 0 and mias_label_of({"CALC"}, "any") == 1
    assert mias_label_of({"CIRC"}, "mass") == 1 and mias_label_of({"SPIC", "CALC"}, "mass") == 1
    assert mias_label_of({"CALC"}, "mass") is None and mias_label_of({"ARCH"}, "mass") is None
    assert mias_label_of({"NORM"}, "mass") == 0


@pytest.mark.data
def test_mias224_split_counts(shared_data):
    """The documented split of configs/eval_classifier_mias224.toml, from Info.txt only (no pixels)."""
    if not (shared_data / "mias" / "Info.txt").is_file():
        pytest.skip("MIAS not found")
    spec = importlib.util.spec_from_file_location("synth_set", REPO / "scripts" / "synth_classifier_set.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = ecfg.load_config(REPO / "configs" / "eval_classifier_mias224.toml")
    cfg.data.root = str(shared_data / "mias")
    cfg.data.test_groups_from = str(REPO / "configs" / "mg_mias_data.toml")
    train, labels, women = mod.training_films(cfg)
    assert {k: len(v) for k, v in women.items()} == {"train": 78, "val": 19, "test": 28}
    assert len(train) == 128 and sum(labels[n] for n in train) == 29
    assert len(labels) == 210 and sum(labels.values()) == 46
    assert not set(women["train"]) & (set(women["val"]) | set(women["test"]))
    assert set(women["test"]) == set(read_test_groups(REPO / "configs" / "mg_mias_data.toml"))


def test_filtered_manifest_keeps_only_training_films(tmp_path):
    spec = importlib.util.spec_from_file_location("synth_set", REPO / "scripts" / "synth_classifier_set.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    items = []
    for k, name in enumerate(("mdb001", "mdb002", "mdb003")):
        np.save(prepared / f"mg_{k:06d}.npy", np.zeros((8, 8), np.float32))
        items.append({"file": f"mg_{k:06d}.npy", "source": f"/x/mias/images/{name}.png", "patient": "w"})
    (prepared / "manifest.json").write_text(json.dumps({"format": "mcfast-prepared", "modality": "mg",
                                                        "items": items}))
    n = mod.filtered_manifest(prepared, lambda s: s in {"mdb001", "mdb003"}, tmp_path / "out")
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert n == 2 and [Path(i["source"]).stem for i in m["items"]] == ["mdb001", "mdb003"]
    assert all(Path(i["file"]).is_absolute() and Path(i["file"]).is_file() for i in m["items"])


# --------------------------------------------------------------------------- synthetic picks
def test_choose_synthetic_keeps_the_class_share_and_is_nested():
    labels = np.array([1] * 10 + [0] * 30)
    syn = edata.LabeledImages(np.zeros((40, 2, 2), np.float32), labels, labels.astype(object), [str(i) for i in range(40)])
    prev = set()
    for n in (4, 13, 26, 40, 60):
        pick = clf.choose_synthetic(syn, n, seed=5, abnormal_share=0.25)
        assert pick.size == min(n, 40) and len(set(pick.tolist())) == pick.size
        assert labels[pick].sum() == min(round(min(n, 40) * 0.25), 10)
        assert prev <= set(pick.tolist())
        prev = set(pick.tolist())


# --------------------------------------------------------------------------- the resumable study
def _tiny(tmp_path):
    def images(n, seed):
        r = np.random.default_rng(seed)
        y = np.array([i % 2 for i in range(n)])
        x = r.normal(-0.2, 0.1, (n, 32, 32)).astype(np.float32)
        x[y == 1, 12:20, 12:20] += 0.8
        return x.clip(-1, 1), y

    x, y = images(20, 1)
    groups = np.array([f"woman{i // 2 + 1:03d}" for i in range(20)], dtype=object)
    y = np.array([int(i // 2 % 2) for i in range(20)])  # both images of a woman share a label
    x[y == 1, 12:20, 12:20] += 0.5
    real = edata.LabeledImages(x, y, groups, [f"img{i}" for i in range(20)])
    xs, ys = images(12, 2)
    syn = edata.LabeledImages(xs, ys, np.array([f"s{i}" for i in range(12)], dtype=object), [f"s{i}" for i in range(12)])
    cfg = ecfg.EvalConfig()
    cfg.data.dataset, cfg.data.image_size = "folder", 32
    cfg.data.test_groups = ["woman001", "woman002", "woman003", "woman004"]
    cfg.data.split_fractions = [0.67, 0.33, 0.0]
    cfg.study.seeds, cfg.study.increments = [0, 1], [0.0, 0.5]
    cfg.study.n_bootstrap, cfg.study.n_paired_bootstrap = 30, 50
    cfg.train.epochs, cfg.train.batch_size = 1, 8
    return cfg, real, syn


def test_resumable_study_saves_every_run_and_skips_finished(tmp_path, monkeypatch):
    cfg, real, syn = _tiny(tmp_path)
    out = tmp_path / "study"
    res = clf.run_classifier_study(cfg, real, syn, run_dir=out)
    files = sorted(p.name for p in (out / "runs").glob("inc*.json"))
    assert files == ["inc000_seed0.json", "inc000_seed1.json", "inc050_seed0.json", "inc050_seed1.json"]
    assert res["splits"]["test"]["group_names"] == cfg.data.test_groups
    row = res["rows"][1]
    assert row["paired_vs_real_only"]["seeds"] == [0, 1]
    for key in ("auc", "f1"):
        t = row["paired_vs_real_only"][key]
        assert 0 < t["p"] <= 1 and t["delta_lo"] <= t["delta_hi"]
    assert res["rows"][0]["paired_vs_real_only"] is None
    train = clf.split_parts(cfg, real)["train"]
    assert res["synthetic_pool"]["abnormal_share_used"] == pytest.approx(train.labels.mean())
    assert row["n_synthetic"] == round(0.5 * len(train))

    # a re-run trains nothing: every (increment, seed) is loaded
    def boom(*a, **k):
        raise AssertionError("retrained a saved run")
    monkeypatch.setattr(clf, "train_binary_classifier", boom)
    again = clf.run_classifier_study(cfg, real, syn, run_dir=out)
    assert [r["auc_mean"] for r in again["rows"]] == [r["auc_mean"] for r in res["rows"]]
    # a missing run is the only one trained
    (out / "runs" / "inc050_seed1.json").unlink()
    with pytest.raises(AssertionError, match="retrained"):
        clf.run_classifier_study(cfg, real, syn, run_dir=out)
    monkeypatch.undo()
    clf.run_classifier_study(cfg, real, syn, run_dir=out)
    # the report from saved runs alone: same rows, table with the paired column, plot
    saved = clf.results_from_saved(cfg, out)
    assert [r["auc_mean"] for r in saved["rows"]][0] == res["rows"][0]["auc_mean"]
    paths = clf.write_results(saved, out)
    table = paths["table"].read_text()
    assert "ΔAUC vs real-only" in table and "(reference)" in table and "Synthetic pool: 12 images" in table
    assert "test 4 / 8 /" in table
    # other data under the same output: refused, not mixed
    real2 = edata.LabeledImages(real.images[:, ::-1].copy(), real.labels, real.groups, real.names)
    with pytest.raises(InputError, match="other data"):
        clf.run_classifier_study(cfg, real2, syn, run_dir=out)


def test_real_only_runs_saved_before_the_pool_exists_are_reused_with_it(tmp_path, monkeypatch):
    """The real-only row can run while the synthetic pool is still being made; a pool run must not
    reuse a run saved with another pool."""
    cfg, real, syn = _tiny(tmp_path)
    out = tmp_path / "study"
    first = clf.run_classifier_study(cfg, real, None, run_dir=out)
    assert [r["increment"] for r in first["rows"]] == [0.0]
    trained = []
    real_train = clf.train_binary_classifier

    def counting(x, y, *a, **k):
        trained.append(len(y))
        return real_train(x, y, *a, **k)
    monkeypatch.setattr(clf, "train_binary_classifier", counting)
    res = clf.run_classifier_study(cfg, real, syn, run_dir=out)
    n_real = len(clf.split_parts(cfg, real)["train"])
    assert trained and all(n > n_real for n in trained)  # only the synthetic rows were trained
    assert res["rows"][0]["auc_mean"] == first["rows"][0]["auc_mean"]
    saved = clf.results_from_saved(cfg, out)
    assert [r["auc_mean"] for r in saved["rows"]] == [r["auc_mean"] for r in res["rows"]]
    # another pool: the real-only runs still count, a synthetic run saved with the old pool is refused
    syn2 = edata.LabeledImages(syn.images[:, ::-1].copy(), syn.labels, syn.groups, syn.names)
    with pytest.raises(InputError, match="other data"):
        clf.run_classifier_study(cfg, real, syn2, run_dir=out)


def test_cli_runs_resumes_and_reports_from_saved(tmp_path, capsys):
    from mcfast.cli import main
    from tests.test_eval_classifier import make_labelled_folder

    real = make_labelled_folder(tmp_path / "real", 16, seed=1, layout="json")
    synth = make_labelled_folder(tmp_path / "synth", 6, seed=2)
    out = tmp_path / "out"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f"""[study]
seeds = [0]
increments = [0.0, 0.5]
n_bootstrap = 20
n_paired_bootstrap = 20
output_dir = "{out}"
report_dir = "{tmp_path / 'docs'}"
report_name = "study_x"
[data]
dataset = "folder"
root = "{real}"
image_size = 32
synthetic_dir = "{synth}"
test_groups = ["img000", "img001", "img002", "img003"]
split_fractions = [0.6, 0.4, 0.0]
[train]
epochs = 1
batch_size = 8
""")
    assert main(["evaluate", "classifier", "--config", str(cfg), "--no-progress"]) == 0
    assert len(list((out / "runs").glob("inc*.json"))) == 2
    first = json.loads((out / "results.json").read_text())
    (out / "results.json").unlink()
    (out / "table.md").unlink()
    assert main(["evaluate", "classifier", "--config", str(cfg), "--report"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["auc_mean"] for r in again["rows"]] == [r["auc_mean"] for r in first["rows"]]
    assert (out / "table.md").is_file() and (out / "auc_vs_synthetic.png").is_file()
    assert again["splits"]["test"]["group_names"] == ["img000", "img001", "img002", "img003"]
    # the report copy: the same results under report_dir / report_name
    copy = json.loads((tmp_path / "docs" / "study_x.json").read_text())
    assert [r["auc_mean"] for r in copy["rows"]] == [r["auc_mean"] for r in again["rows"]]
    assert (tmp_path / "docs" / "study_x.md").read_text() == (out / "table.md").read_text()
    assert (tmp_path / "docs" / "study_x.png").stat().st_size > 1000
    cfg.write_text(cfg.read_text().replace('report_name = "study_x"', 'report_name = "a/b"'))
    with pytest.raises(InputError, match="study.report_name must be a file stem"):
        ecfg.load_config(cfg)

"""Realism audits: two-sample classifier test, Fréchet distance, MS-SSIM."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mcfast.errors import InputError
from mcfast.evaluate import realism


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _disc_images(rng, n, size=32):
    """Every image shows a bright disc in the centre over faint texture."""
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size // 2) ** 2 + (xx - size // 2) ** 2 < (size // 4) ** 2).astype(np.float32)
    return np.clip(_smooth_noise(rng, n, size) * 0.2 + disc * 1.5 - 0.5, -1, 1)


def _smooth_noise(rng, n, size=32, scale=0.5):
    x = torch.from_numpy(rng.normal(size=(n, 1, size, size)).astype(np.float32))
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1) * 2
    return (torch.tanh(x * scale)[:, 0]).numpy()


def test_frechet_distance_matches_closed_form_and_is_symmetric():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    s1 = a @ a.T + np.eye(5)
    mu = rng.normal(size=5)
    assert realism.frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-6)
    # 1-D: (m1-m2)^2 + (s1 - s2)^2 in terms of standard deviations
    assert realism.frechet_distance([1.0], [[4.0]], [0.0], [[1.0]]) == pytest.approx(1.0 + 1.0)
    b = rng.normal(size=(5, 5))
    s2 = b @ b.T
    d12 = realism.frechet_distance(mu, s1, mu + 1, s2)
    assert d12 == pytest.approx(realism.frechet_distance(mu + 1, s2, mu, s1), rel=1e-6)
    # singular covariances (rank 1) still give a finite, non-negative value
    v = rng.normal(size=(5, 1))
    assert np.isfinite(realism.frechet_distance(mu, v @ v.T, mu, 2 * v @ v.T))


def test_frechet_features_small_for_same_distribution_large_for_different():
    rng = np.random.default_rng(1)
    real = _smooth_noise(rng, 160)
    same = _smooth_noise(rng, 160)
    other = _disc_images(rng, 160)
    net = realism.train_feature_network(real, epochs=2, seed=0)
    d_same = realism.frechet_feature_distance(net, real, same)
    d_other = realism.frechet_feature_distance(net, real, other)
    assert d_other > 5 * d_same


def test_ms_ssim_identity_and_decrease_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(4, 1, 64, 64, generator=g) * 2 - 1, 5, 1, 2)
    assert torch.allclose(realism.ms_ssim(x, x), torch.ones(4), atol=1e-6)
    previous = torch.ones(4)
    for sigma in (0.05, 0.2, 0.5):
        noisy = (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)
        val = realism.ms_ssim(x, noisy)
        assert (val < previous).all()
        previous = val
    assert (realism.ms_ssim(x[:1].expand(4, -1, -1, -1), x.flip(0)) <= 1).all()
    with pytest.raises(InputError):
        realism.ms_ssim(x, x[:, :, :32])


def test_msssim_diversity_lower_for_diverse_set():
    rng = np.random.default_rng(2)
    diverse = _smooth_noise(rng, 16)
    base = _smooth_noise(rng, 1)
    collapsed = np.clip(base + 0.02 * rng.normal(size=(16, 32, 32)), -1, 1).astype(np.float32)
    assert realism.msssim_diversity(diverse, 30)["mean"] < realism.msssim_diversity(collapsed, 30)["mean"]


def test_two_sample_test_identical_vs_different():
    rng = np.random.default_rng(3)
    a = _smooth_noise(rng, 32)
    b = _smooth_noise(rng, 32)
    same = realism.two_sample_test(a, b, epochs=2, n_boot=200, seed=0)
    assert same["auc_lo"] <= 0.5 <= same["auc_hi"]
    diff = realism.two_sample_test(a, _disc_images(rng, 32), epochs=2, n_boot=200, seed=0)
    assert diff["auc"] > 0.9 and diff["auc_lo"] > 0.5
    assert diff["n_test"] == {"real": 16, "synthetic": 16}


def test_report_names_the_feature_family_that_gives_a_set_away():
    from mcfast.evaluate.hand_features import hand_feature_test
    from mcfast.evaluate.realism_sets import fmt_families

    rng = np.random.default_rng(0)
    smooth = rng.normal(0, 0.1, (12, 32, 32)).cumsum(1).cumsum(2) / 20
    rough = smooth + rng.normal(0, 0.05, smooth.shape)  # same intensities, more high-frequency power
    result = hand_feature_test(np.clip(smooth, -1, 1), np.clip(rough, -1, 1), folds=3, n_boot=50)
    text = fmt_families(result)
    intensity, spectrum, gradient = (float(v) for v in text.split(" / "))
    assert spectrum > 0.9 and gradient > 0.9 and text == " / ".join(
        f"{result['group_auc'][k]:.2f}" for k in ("intensity", "spectrum", "gradient"))
    assert fmt_families({"auc": 0.5}) == "–"  # a result saved before the families were scored


def test_report_names_the_total_training_steps_of_warm_started_weights():
    from mcfast.evaluate.realism_sets import checkpoint_fields, model_steps

    warm = checkpoint_fields({"step": 2100, "history": {"total_steps": 11100, "sessions": []}})
    assert warm == {"checkpoint_step": 2100, "checkpoint_total_steps": 11100}
    assert model_steps(warm) == "11,100 training steps (step 2,100 of its last run)"
    fresh = checkpoint_fields({"step": 600})  # a run never warm-started has no history
    assert model_steps(fresh) == "600 training steps"
    assert model_steps({"checkpoint_step": 2100}) == "step 2100"  # results saved before totals were recorded


def test_report_machine_line_says_the_patch_cnn_thread_count():
    from mcfast.evaluate.patch_cnn import DEFAULT_THREADS
    from mcfast.evaluate.realism_sets import machine_line, scoring_machine

    info = scoring_machine()
    assert info["patch_cnn_threads"] == DEFAULT_THREADS and info["torch_threads"] == torch.get_num_threads()
    line = machine_line(dict(info, torch_threads=2, cuda=False, cpu_count=2, cpu_model="CPU X"))
    assert line.endswith(f"2 thread(s) in the scoring pass (the patch CNN on {DEFAULT_THREADS})")
    assert line.startswith("2 CPU cores (CPU X), no GPU")
    old = {k: v for k, v in info.items() if k != "patch_cnn_threads"}  # a report scored before the pin
    assert machine_line(dict(old, torch_threads=2, cuda=False)).endswith("2 thread(s) in the scoring pass")


def test_report_shows_the_runs_of_a_repeated_patch_cnn_and_says_how_it_was_made():
    from mcfast.evaluate.realism_sets import fmt_auc, patch_cnn_note

    single = {"auc": 0.5, "auc_lo": 0.3, "auc_hi": 0.7}
    assert fmt_auc(single) == "0.50 [0.30, 0.70]" == fmt_auc(dict(single, repeat_aucs=[]))
    assert fmt_auc(dict(single, repeat_aucs=[0.62, 0.41, 0.55])) == "0.50 [0.30, 0.70] (runs 0.41–0.62)"
    assert patch_cnn_note({"suite": {}}) == [] == patch_cnn_note({"suite": {"cnn_repeats": 1}})
    assert "mean of 3 CNNs" in " ".join(patch_cnn_note({"suite": {"cnn_repeats": 3}}))


def test_suite_passes_its_cnn_repeats_to_the_patch_cnn(monkeypatch):
    from mcfast.evaluate import realism_suite, two_sample

    seen = {}

    def fake_cnn(a, b, **kw):
        seen.update(kw)
        raise StopIteration  # the rest of the suite is not this test's business

    monkeypatch.setattr(two_sample, "patch_cnn_test", fake_cnn)
    images = np.zeros((4, 32, 32), np.float32)
    with pytest.raises(StopIteration):
        realism_suite.compare(images, images, images, None, realism_suite.SuiteSettings(cnn_repeats=3))
    assert seen["repeats"] == 3

"""The TorchScript sampler: parity with mcfast's eager sampler, loading with torch only, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mcfast.diffusion import create_diffusion, sample
from mcfast.errors import CheckpointError, InputError, McfastError
from mcfast.export import (export_torchscript, load_sampler, pack_conditions, save_inputs,
                           script_sampler)
from mcfast.export import jit_compat
from mcfast.guidance.conditions import Condition
from mcfast.guidance.ilvr import ILVRGuidance, _condition_seed
from mcfast.models.unet import UNetModel
from mcfast.train.checkpoint import save_checkpoint
from mcfast.train.checkpoint import checkpoint_dir

SIZE, STEPS, BATCH = 32, 6, 2
MODEL = dict(image_size=SIZE, in_channels=1, model_channels=16, out_channels=2, num_res_blocks=1,
             attention_resolutions=[2], dropout=0.0, channel_mult=[1, 2], num_heads=2, use_scale_shift_norm=True)
DIFFUSION = dict(T=1000, schedule="cosine", model_var_type="learned_range", loss_type="hybrid")


def have_ops() -> bool:
    from mcfast.export.runtime import load_ops_library
    return load_ops_library()


def make_run(root: Path, model_cfg: dict = MODEL, diffusion: dict = DIFFUSION, seed: int = 0) -> Path:
    """A run folder with random (non-zero) weights for a tiny U-Net, saved by the checkpoint module."""
    torch.manual_seed(seed)
    model = UNetModel(**model_cfg)
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised output layers would make ε̂ ≡ 0
            p.normal_(0.0, 0.05)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters()).state_dict()
    run = root / "run"
    save_checkpoint(run, model_state=state, ema_state=state, optimizer_state=opt,
                    config={"model": model_cfg, "diffusion": diffusion, "data": {"modality": "generic",
                                                                                 "image_size": SIZE}, "step": 7})
    return run


def make_conditions(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    ref1 = torch.rand(SIZE, SIZE, generator=g) * 2 - 1
    ref2 = torch.rand(SIZE, SIZE, generator=g) * 2 - 1
    # Image 0: anatomy (whole image) + a Gaussian-weighted patch that stops at t = 400; image 1: one condition.
    return [[Condition.full(ref1, 4, 0), Condition.on_canvas(ref2, (4, 6, 12, 10), 2, 400)],
            [Condition.full(ref2, 8, 200)]]


def eager_and_inputs(run: Path, method: str, eta: float, seed: int = 11):
    """mcfast's own eager sampler (reference guidance) and the same noise as explicit sampler inputs."""
    from mcfast.train.checkpoint import load_model
    model, dkw, _ = load_model(run)
    diffusion = create_diffusion(**dict(dkw, respacing=str(STEPS)))
    conds = make_conditions()
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(BATCH, 1, SIZE, SIZE, generator=g)
    out = sample(model, diffusion, (BATCH, 1, SIZE, SIZE), method=method, eta=eta, noise=x_T,
                 generator=torch.Generator().manual_seed(3),
                 guidance=ILVRGuidance(conds, diffusion, seed, backend="reference"), progress=False)
    # Replay the sampler's step noise and each condition's own stream in the order they are drawn.
    gs = torch.Generator().manual_seed(3)
    step_noise = torch.zeros(STEPS, BATCH, 1, SIZE, SIZE)
    for j in range(STEPS):
        i = STEPS - 1 - j
        if i > 0 and (method == "ddpm" or eta > 0):
            step_noise[j] = torch.randn((BATCH, 1, SIZE, SIZE), generator=gs)
    inputs = pack_conditions(conds, BATCH, SIZE)
    slots = inputs["refs"].shape[1]
    cond_noise = torch.zeros(STEPS, BATCH, slots, SIZE, SIZE)
    for b, per in enumerate(conds):
        for s, c in enumerate(per):
            gen = torch.Generator().manual_seed(_condition_seed(seed, b, s))
            for j in range(STEPS):
                i = STEPS - 1 - j
                if c.active_at(int(diffusion.timestep_map[i])) and diffusion.alphas_cumprod_prev[i] < 1.0:
                    cond_noise[j, b, s] = torch.randn((1, SIZE, SIZE), generator=gen)[0]
    inputs.update(noise=x_T, step_noise=step_noise, cond_noise=cond_noise)
    return out, inputs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is as fast and does not oversubscribe the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("export"))


@pytest.mark.parametrize("method,eta", [("ddpm", 0.0), ("ddim", 0.5)])
@pytest.mark.parametrize("ops", ["off", "auto"])
def test_scripted_sampler_matches_eager_sampler(run_dir, tmp_path, method, eta, ops):
    if ops == "auto" and not have_ops():
        pytest.skip("mcfast ops library not built")
    eager, inputs = eager_and_inputs(run_dir, method, eta)
    path = export_torchscript(run_dir, tmp_path / "sampler.pt", steps=STEPS, method=method, eta=eta, ops=ops)
    sampler = load_sampler(path)
    meta = json.loads(sampler.metadata())
    assert meta["uses_ops"] == (ops == "auto") and meta["steps"] == STEPS and meta["method"] == method
    scripted = sampler(**inputs)
    assert scripted.shape == (BATCH, 1, SIZE, SIZE)
    assert (scripted - eager).abs().max().item() <= 1e-4
    # The guidance does something: without conditions the result differs.
    assert (scripted - eager).abs().max() < 0.1 * (eager - inputs["noise"]).abs().max()
    frames = sampler.intermediates(**inputs)
    assert frames.shape == (STEPS + 1, BATCH, 1, SIZE, SIZE)
    assert torch.equal(frames[0], inputs["noise"]) and (frames[-1] - scripted).abs().max() == 0


def test_seeded_runs_are_reproducible_and_seed_dependent(run_dir):
    from mcfast.export.build import sampler_from_run
    sampler, _ = sampler_from_run(run_dir, STEPS, ops="off")
    scripted = script_sampler(sampler)
    inputs = pack_conditions(make_conditions(), BATCH, SIZE)
    a, b, c = scripted(**inputs, seed=4), scripted(**inputs, seed=4), scripted(**inputs, seed=5)
    assert torch.equal(a, b) and (a - c).abs().max() > 0.1
    assert torch.equal(a, sampler(**inputs, seed=4))  # eager module == scripted module


@pytest.mark.skipif(not have_ops(), reason="mcfast ops library not built")
def test_ops_sampler_draws_the_noise_that_is_not_given(run_dir):
    from mcfast.export.build import sampler_from_run
    scripted = script_sampler(sampler_from_run(run_dir, STEPS, ops="require")[0])
    _, full = eager_and_inputs(run_dir, "ddpm", 0.0)
    partial = {k: v for k, v in full.items() if k != "cond_noise"}
    a, b = scripted(**partial, seed=1), scripted(**partial, seed=1)
    assert torch.equal(a, b)
    assert (a - scripted(**partial, seed=2)).abs().max() > 1e-3  # the missing ε comes from the seed
    assert (a - scripted(**full)).abs().max() > 1e-3


def test_saved_sampler_runs_with_torch_only(run_dir, tmp_path):
    """Load in a subprocess whose sys.path has no mcfast: torch + the ops library only."""
    ops = "auto" if have_ops() else "off"
    path = export_torchscript(run_dir, tmp_path / "sampler.pt", steps=STEPS, ops=ops)
    inputs = pack_conditions(make_conditions(), BATCH, SIZE)
    save_inputs(tmp_path / "inputs.safetensors", inputs)
    expected = load_sampler(path)(**inputs, seed=9)
    lib = ""
    if ops == "auto":
        from mcfast import ops as mcops
        lib = str(mcops.library_path())
    script = textwrap.dedent(f"""
        import importlib.util, os, sys
        repo = {str(Path(__file__).resolve().parents[1])!r}
        sys.path[:] = [p for p in sys.path if p not in ("", ".", repo) and not os.path.isdir(os.path.join(p, "mcfast"))]
        # an editable install (pip install -e) finds mcfast through a meta-path finder, not sys.path
        sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
        assert importlib.util.find_spec("mcfast") is None, "mcfast must not be importable here"
        import numpy as np, torch
        from safetensors.torch import load_file
        if {lib!r}:
            torch.ops.load_library({lib!r})
        sampler = torch.jit.load({str(path)!r})
        out = sampler(**load_file({str(tmp_path / 'inputs.safetensors')!r}), seed=9)
        np.save({str(tmp_path / 'out.npy')!r}, out.numpy())
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert np.abs(np.load(tmp_path / "out.npy") - expected.numpy()).max() <= 1e-6


@pytest.mark.skipif(not have_ops(), reason="mcfast ops library not built")
def test_missing_ops_library_gives_clear_error(run_dir, tmp_path):
    path = export_torchscript(run_dir, tmp_path / "sampler.pt", steps=STEPS, ops="require")
    script = f"import torch\ntorch.jit.load({str(path)!r})\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Segmentation" not in proc.stderr
    assert "mcfast::guided_step" in proc.stderr  # torch names the unknown op
    # mcfast's loader, with the library unavailable, says what is missing and how to load it.
    script = textwrap.dedent(f"""
        import mcfast.ops
        from mcfast.errors import McfastError, InputError
        def unavailable():
            raise McfastError("not built")
        mcfast.ops.load = unavailable
        from mcfast.export import load_sampler
        try:
            load_sampler({str(path)!r})
        except InputError as exc:
            print(exc)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "torch.ops.mcfast ops that are not registered" in proc.stdout and "library_path()" in proc.stdout


def test_scripted_checks_reject_bad_conditions(run_dir):
    from mcfast.export.build import sampler_from_run
    sampler = script_sampler(sampler_from_run(run_dir, STEPS, ops="off")[0])
    good = pack_conditions(make_conditions(), BATCH, SIZE)

    def call(**changes):
        with pytest.raises(torch.jit.Error) as info:
            sampler(**dict(good, **changes))
        return str(info.value)

    assert "factors must have shape (B, S)" in call(factors=good["factors"][:, :1])
    assert "weights must have shape (B, S, H, W)" in call(weights=good["weights"][:1])
    assert "refs must have shape (B, S, H, W)" in call(refs=good["refs"][0])
    assert "exported for 32x32" in call(refs=torch.zeros(BATCH, 2, 16, 16), weights=torch.zeros(BATCH, 2, 16, 16))
    bad = good["factors"].clone()
    bad[0, 0] = 3
    assert "factor 3 of condition (0, 0) does not divide the image size 32x32" in call(factors=bad)
    stops = good["stop_steps"].clone()
    stops[1, 0] = 5000
    assert "past the diffusion's 1000 timesteps" in call(stop_steps=stops)
    assert "NaN" in call(refs=torch.full_like(good["refs"], float("nan")))
    assert "noise must have shape" in call(noise=torch.zeros(1, 1, SIZE, SIZE))
    assert "step_noise must have shape" in call(step_noise=torch.zeros(STEPS + 1, BATCH, 1, SIZE, SIZE))


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    run = make_run(tmp_path)
    cfg = json.loads((checkpoint_dir(run) / "config.json").read_text())
    cfg["model"]["model_channels"] = 32  # config and weights disagree
    (checkpoint_dir(run) / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match the architecture|has shape|differ from those saved"):
        export_torchscript(run, tmp_path / "s.pt", steps=STEPS, ops="off")
    from mcfast.cli import main
    assert main(["export", "--ckpt", str(run), "--out", str(tmp_path / "s.pt"), "--steps", "5", "--ops", "off"]) == 2
    assert not (tmp_path / "s.pt").exists()


def test_cli_export_writes_a_loadable_sampler(run_dir, tmp_path, capsys):
    from mcfast.cli import main
    out = tmp_path / "sampler.pt"
    assert main(["export", "--ckpt", str(run_dir), "--out", str(out), "--steps", "5", "--sampler", "ddim",
                 "--ops", "off"]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = json.loads(load_sampler(out).metadata())
    assert meta["method"] == "ddim" and meta["steps"] == 5 and meta["ckpt_step"] == 7
    with pytest.raises(McfastError, match="--steps must be in 1..1000"):
        export_torchscript(run_dir, tmp_path / "x.pt", steps=0, ops="off")
    with pytest.raises(InputError, match="not found"):
        load_sampler(tmp_path / "missing.pt")


def test_only_the_jit_deprecation_warning_is_filtered():
    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scripted = jit_compat.script(Tiny())
        with jit_compat.quiet_jit_deprecation():
            warnings.warn("something else", FutureWarning)
            warnings.warn("`torch.jit.load` is deprecated. Please switch to `torch.export`.", UserWarning)
    messages = [(w.category, str(w.message)) for w in caught]
    assert not any("torch.jit.script` is deprecated" in m for c, m in messages if c is FutureWarning)
    assert (FutureWarning, "something else") in messages
    assert any(c is UserWarning and "deprecated" in m for c, m in messages)  # other categories stay visible
    assert scripted(torch.zeros(1)).item() == 1.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.jit.script(Tiny())  # the filter is local: plain torch.jit.script still warns
    assert any(issubclass(w.category, FutureWarning) and "deprecated" in str(w.message) for w in caught)


def test_pack_conditions_pads_and_marks_empty_slots():
    packed = pack_conditions(make_conditions(), BATCH, SIZE)
    assert packed["refs"].shape == (BATCH, 2, SIZE, SIZE)
    assert packed["stop_steps"].tolist() == [[0, 400], [200, -1]]
    assert packed["factors"].tolist() == [[4, 2], [8, 1]]
    assert packed["weights"][0, 0].min() == 1 and packed["weights"][0, 1].max() == pytest.approx(1.0, abs=0.05)
    assert packed["weights"][0, 1, 0, 0] == 0  # outside the patch box
    with pytest.raises(InputError, match="16x16 but the sampler makes 32x32"):
        pack_conditions([Condition.full(torch.zeros(16, 16), 2)], 1, SIZE)

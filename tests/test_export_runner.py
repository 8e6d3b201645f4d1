"""The C++ runner (csrc/runner/mcfast_run.cpp), built with CMake against the pip torch.

The build is cached in build/cmake-export (ignored by git); the first build takes over a
minute on a 2-core CPU, so these tests are marked slow (`pytest -m slow tests/test_export_runner.py`).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mcfast.export import export_torchscript, load_sampler, pack_conditions, save_inputs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_export_torchscript import (BATCH, SIZE, STEPS, eager_and_inputs, make_conditions, make_run,  # noqa: E402
                                     one_thread)  # noqa: F401  (autouse: one torch thread)

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build" / "cmake-export"

pytestmark = pytest.mark.slow


def build_runner() -> Path:
    """Configure (once) and build the runner and the ops library; returns the runner's path."""
    if not (REPO / "CMakeLists.txt").is_file():
        pytest.skip("CMakeLists.txt (the ops library target) is not in the repository yet")
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    BUILD.mkdir(parents=True, exist_ok=True)
    if not (BUILD / "CMakeCache.txt").is_file():
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.run(["cmake", "-S", str(REPO), "-B", str(BUILD), *generator, "-DCMAKE_BUILD_TYPE=Release",
                        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                        "-DCUDA_TOOLKIT_ROOT_DIR=/usr/local/cuda", "-DTORCH_CUDA_ARCH_LIST=9.0",
                        f"-DPython_EXECUTABLE={sys.executable}"],
                       check=True, capture_output=True, text=True)
    proc = subprocess.run(["cmake", "--build", str(BUILD), "--target", "mcfast_run", "-j", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return BUILD / "mcfast_run"


@pytest.fixture(scope="module")
def runner() -> Path:
    return build_runner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    run = make_run(root)
    # The runner links the CMake ops library, so the sampler may call torch.ops.mcfast.
    from mcfast.export.runtime import load_ops_library
    ops = "auto" if load_ops_library() else "off"
    return run, export_torchscript(run, root / "sampler.pt", steps=STEPS, ops=ops), root


def run_runner(runner: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(runner), *args], capture_output=True, text=True, timeout=300)


def test_runner_matches_eager_and_scripted_python(runner, exported, tmp_path):
    run, sampler_path, _ = exported
    eager, inputs = eager_and_inputs(run, "ddpm", 0.0)
    save_inputs(tmp_path / "in.safetensors", inputs)
    proc = run_runner(runner, "--sampler", str(sampler_path), "--conditions", str(tmp_path / "in.safetensors"),
                      "--out", str(tmp_path / "out.npy"), "--png", str(tmp_path / "img"), "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    images = np.load(tmp_path / "out.npy")
    assert images.shape == (BATCH, 1, SIZE, SIZE) and images.dtype == np.float32
    scripted = load_sampler(sampler_path)(**inputs).numpy()
    assert np.abs(images - scripted).max() <= 1e-4
    assert np.abs(images - eager.numpy()).max() <= 1e-4
    from PIL import Image
    for b in range(BATCH):
        png = np.asarray(Image.open(tmp_path / f"img_{b}.png"))
        assert png.shape == (SIZE, SIZE) and png.dtype == np.uint8
        expected = np.round((np.clip(images[b, 0], -1, 1) + 1) * 127.5)
        assert np.abs(png.astype(np.float64) - expected).max() <= 1


def test_runner_seed_matches_python_seed(runner, exported, tmp_path):
    _, sampler_path, _ = exported
    inputs = pack_conditions(make_conditions(), BATCH, SIZE)
    save_inputs(tmp_path / "in.safetensors", inputs)
    proc = run_runner(runner, "--sampler", str(sampler_path), "--conditions", str(tmp_path / "in.safetensors"),
                      "--out", str(tmp_path / "out.npy"), "--seed", "9", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    expected = load_sampler(sampler_path)(**inputs, seed=9).numpy()
    assert np.abs(np.load(tmp_path / "out.npy") - expected).max() <= 1e-4


def test_runner_bad_input_exits_with_one_clear_line(runner, exported, tmp_path):
    _, sampler_path, _ = exported
    good = pack_conditions(make_conditions(), BATCH, SIZE)

    def fails(tensors=None, raw: bytes | None = None, sampler: Path = sampler_path) -> str:
        cond = tmp_path / "bad.safetensors"
        if raw is not None:
            cond.write_bytes(raw)
        elif tensors is not None:
            save_inputs(cond, tensors)
        proc = run_runner(runner, "--sampler", str(sampler), "--conditions", str(cond), "--out",
                          str(tmp_path / "o.npy"))
        assert proc.returncode == 2, (proc.returncode, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("mcfast_run: error: "), proc.stderr
        return lines[0]

    assert "factors must have shape (B, S)" in fails(dict(good, factors=good["factors"][:, :1]))
    bad = good["factors"].clone()
    bad[0, 1] = 3
    assert "does not divide the image size 32x32" in fails(dict(good, factors=bad))
    assert "'bogus' is not a sampler input" in fails(raw=_safetensors_bytes({**good, "bogus": torch.zeros(1)}))
    assert "too short" in fails(raw=b"\x01")
    assert "header length" in fails(raw=(10 ** 9).to_bytes(8, "little") + b"{}")
    assert "bad safetensors header" in fails(raw=(4).to_bytes(8, "little") + b"{\"a\"")
    assert "cannot load the sampler" in fails(good, sampler=tmp_path / "nope.pt")
    proc = run_runner(runner, "--sampler", str(sampler_path), "--conditions", str(tmp_path / "missing.safetensors"),
                      "--out", str(tmp_path / "o.npy"))
    assert proc.returncode == 2 and "cannot open conditions file" in proc.stderr
    proc = run_runner(runner, "--sampler", str(sampler_path))
    assert proc.returncode == 2 and "are required" in proc.stderr


def _safetensors_bytes(tensors) -> bytes:
    from safetensors.torch import save
    return save({k: v.contiguous() for k, v in tensors.items()})

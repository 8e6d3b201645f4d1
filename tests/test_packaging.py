"""Packaging: pyproject metadata and extras, the files a wheel carries, and (slow) a wheel installed into a
fresh venv outside the source tree that synthesizes an image."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from importlib import resources
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# What the wheel must carry besides the Python modules: the shipped models and the demo recipes.
DATA = sorted(str(p.relative_to(REPO)) for pattern in ("mcfast/assets/*/*", "mcfast/configs/*.toml")
              for p in REPO.glob(pattern) if p.suffix in (".safetensors", ".json", ".md", ".toml"))


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def copy_source(dst: Path) -> Path:
    """The files a build needs (what the sdist holds), without built libraries or caches."""
    dst.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "CMakeLists.txt"):
        shutil.copy2(REPO / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "csrc", dst / "csrc", ignore=ignore)
    shutil.copytree(REPO / "mcfast", dst / "mcfast", ignore=ignore)
    return dst


def test_data_files_exist():
    assert any(p.endswith("model.safetensors") for p in DATA) and any(p.endswith(".toml") for p in DATA)


def test_extras_match_the_helper_and_test_needs_all():
    from mcfast.extras import EXTRAS

    extras = PYPROJECT["project"]["optional-dependencies"]
    assert set(extras) == set(EXTRAS) | {"all", "test"}
    for extra, modules in EXTRAS.items():
        assert {_name(r) for r in extras[extra]} == set(modules), extra
    assert extras["all"] == [f"mcfast[{','.join(EXTRAS)}]"]
    assert "mcfast[all]" in extras["test"] and {"pytest", "pytest-benchmark"} <= {_name(r) for r in extras["test"]}
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert {"torch", "numpy", "pydicom", "safetensors", "scikit-image", "tqdm"} <= core
    assert not core & {"fastapi", "uvicorn", "timm", "triton", "h5py", "matplotlib", "highdicom", "torchvision"}


def test_torch_range_is_the_same_to_build_and_to_run():
    # torch's C++ ABI changes between minor releases: mcfast._C runs only with the torch it was built against.
    build = [r for r in PYPROJECT["build-system"]["requires"] if _name(r) == "torch"]
    run = [r for r in PYPROJECT["project"]["dependencies"] if _name(r) == "torch"]
    assert build == run and len(run) == 1 and "<" in run[0]
    import torch
    from packaging.specifiers import SpecifierSet

    assert torch.__version__.split("+")[0] in SpecifierSet(run[0][len("torch"):])


def test_installed_package_has_assets_and_configs():
    root = resources.files("mcfast")
    for rel in DATA:
        assert (root / rel.removeprefix("mcfast/")).is_file(), rel


def test_build_py_carries_assets_and_configs(tmp_path):
    """setuptools' own package-data pass (what goes into the wheel besides mcfast._C), without compiling."""
    src = copy_source(tmp_path / "src")
    out = tmp_path / "lib"
    env = dict(os.environ, MCFAST_CUDA="0")
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(out)], cwd=src, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.suffix != ".py")
    assert built == DATA
    assert (out / "mcfast" / "extras.py").is_file() and (out / "mcfast" / "ops" / "fake.py").is_file()


def _site_packages_without_mcfast(dst: Path) -> Path:
    """A folder of links to this environment's packages (torch and all), less mcfast itself, so that a fresh
    venv reuses them through a .pth file instead of installing torch again."""
    dst.mkdir()
    for p in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = p.name.lower()
        if name.startswith(("mcfast", "__editable__", "_mcfast")) or name.endswith(".pth"):
            continue
        (dst / p.name).symlink_to(p)
    return dst


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_synthesizes(tmp_path):
    # Build (CPU kernels only, to keep it short; the CUDA build is the same setup.py with nvcc) without build
    # isolation: this venv already has the build requirements, and an isolated build would install a second
    # torch (several GB) just for this test.
    src = copy_source(tmp_path / "src")
    dist = tmp_path / "dist"
    env = dict(os.environ, MCFAST_CUDA="0", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(dist), str(src)], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = dist.glob("mcfast-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(DATA) <= names
    assert any(re.fullmatch(r"mcfast/_C\..*so", n) for n in names), sorted(n for n in names if "_C" in n)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Provides-Extra: turing" in metadata and "Requires-Dist: torch" in metadata

    # A fresh venv outside the source tree; torch and the other dependencies come from this environment's
    # site-packages (linked, less mcfast), so only the wheel is installed.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    target = venv / "bin" / "python"
    purelib = subprocess.run([str(target), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "deps.pth").write_text(str(_site_packages_without_mcfast(tmp_path / "deps")) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(target), "install", "--no-deps",
                           "--no-index", "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    work = tmp_path / "work"  # cwd outside the source tree: nothing from REPO is importable
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    probe = subprocess.run([str(target), "-c", (
        "import json, mcfast, torch; from importlib import resources; "
        "print(json.dumps({'pkg': str(resources.files('mcfast')), 'lib': str(mcfast.ops.library_path()), "
        "'ops': mcfast.ops.has_ops(), 'step': hasattr(torch.ops.mcfast, 'guided_step')}))")],
        cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    info = json.loads(probe.stdout)
    assert Path(info["pkg"]).is_relative_to(venv) and Path(info["lib"]).is_relative_to(venv), info
    assert info["ops"] and info["step"], info

    pkg = Path(info["pkg"])
    out = work / "out"
    proc = subprocess.run([str(venv / "bin" / "mcfast"), "synthesize", "--ckpt", str(pkg / "assets" / "default_ct"),
                           "--recipe", str(pkg / "configs" / "demo_ct.toml"), "--n", "1", "--batch-size", "1",
                           "--steps", "10", "--threads", "1", "--no-progress", "--out", str(out)],
                          cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == 1
    assert list(out.rglob("*.npy")) and list(out.rglob("seg.dcm"))
    api = subprocess.run([str(target), "-c", (
        "import mcfast; item = mcfast.Synthesizer.from_pretrained('ct:phantom64').generate(n=1, steps=5)[0]; "
        "print(item.image.shape, len(item.masks) == len(item.boxes) >= 1)")],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert api.returncode == 0 and api.stdout.split() == ["(64,", "64)", "True"], api.stdout + api.stderr[-3000:]

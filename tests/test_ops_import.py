"""`import mcfast` registers torch.ops.mcfast.* (and their fake kernels); `mcfast --help` imports no torch;
a missing library or extra gives one clear line."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=300)


def check(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


OPS_REGISTERED = """
    ops = ("guided_step", "group_norm_silu")
    for name in ops:
        getattr(torch.ops.mcfast, name)                       # AttributeError when not registered
        entry = torch._library.simple_registry.singleton.find(f"mcfast::{name}")
        assert entry.fake_impl.kernel is not None, f"no fake kernel for mcfast::{name}"
    assert mcfast.ops.has_ops()
    print("ok")
"""


@pytest.mark.parametrize("order", ["mcfast first", "torch first"])
def test_import_mcfast_registers_ops_and_fake_kernels(order):
    imports = "import mcfast\nimport torch\n" if order == "mcfast first" else "import torch\nimport mcfast\n"
    assert check(run_python(imports + textwrap.dedent(OPS_REGISTERED))).strip() == "ok"


def test_import_mcfast_alone_imports_no_torch():
    out = check(run_python("import sys, mcfast; print('torch' in sys.modules, 'mcfast._C' in sys.modules)"))
    assert out.split() == ["False", "False"]


def test_fake_kernel_serves_under_fake_tensors():
    check(run_python("""
        import mcfast, torch
        from torch._subclasses.fake_tensor import FakeTensorMode
        with FakeTensorMode():
            x = torch.empty(2, 64, 8, 8)
            w = torch.ones(64)
            y = torch.ops.mcfast.group_norm_silu(x, w, w, None, None, 32, 1e-5, True)
        assert y.shape == (2, 64, 8, 8), y.shape
    """))


def test_missing_library_is_reported_with_the_build_step():
    out = check(run_python("""
        import sys
        sys.modules["mcfast._C"] = None                     # as if the library were not built
        import mcfast, torch                                # importing still works
        from mcfast.errors import McfastError
        assert not mcfast.ops.has_ops()
        assert not hasattr(torch.ops.mcfast, "guided_step")
        try:
            mcfast.ops.load()
        except McfastError as exc:
            print(exc)
    """))
    assert "not built" in out and "pip install" in out and "build_ext --inplace" in out


HELP_NO_TORCH = """
    import sys
    sys.argv = ["mcfast", "--help"]
    try:
        {call}
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
    heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    print("imported:", heavy, file=sys.stderr)
    assert not heavy, heavy
"""


@pytest.mark.parametrize("call", [
    "from mcfast.cli import main; main(['--help'])",                                     # the console script
    "import runpy; runpy.run_module('mcfast', run_name='__main__', alter_sys=True)",     # python -m mcfast
])
def test_help_imports_no_torch(call):
    out = check(run_python(HELP_NO_TORCH.format(call=call)))
    assert "usage: mcfast" in out


def test_dash_m_help_importtime_shows_no_torch():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "mcfast", "--help"], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: mcfast" in proc.stdout
    assert [line for line in proc.stderr.splitlines() if "torch" in line] == []


def test_missing_extra_is_one_line_naming_the_extra(tmp_path):
    proc = run_python(f"""
        import sys
        sys.modules["fastapi"] = None                       # as if the 'turing' extra were not installed
        from mcfast.cli import main
        sys.exit(main(["turing", "serve", "--study", {str(tmp_path / 'study')!r}]))
    """)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mcfast turing: error: ")
    assert "'turing' extra: pip install 'mcfast[turing]'" in lines[0]


def test_require_names_the_extra(monkeypatch):
    from mcfast.errors import McfastError
    from mcfast.extras import MissingExtraError, require

    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(MissingExtraError) as info:
        require("highdicom", extra="seg", feature="DICOM SEG output")
    assert isinstance(info.value, McfastError) and isinstance(info.value, ImportError)
    message = str(info.value)
    assert message.startswith("DICOM SEG output needs highdicom from the 'seg' extra: pip install 'mcfast[seg]'")
    assert "\n" not in message
    assert require("json", extra="seg").__name__ == "json"
    with pytest.raises(ValueError, match="unknown extra"):
        require("json", extra="nope")


def test_triton_modules_are_not_imported_unless_requested():
    out = check(run_python("""
        import sys, mcfast, torch
        import mcfast.ops.guided, mcfast.ops.norm, mcfast.diffusion.samplers
        print(sorted(m for m in sys.modules if m == "triton" or m.startswith("mcfast.ops.triton")))
    """))
    assert out.strip() == "[]"

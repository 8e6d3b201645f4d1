"""torch.export + AOTInductor package of one guided step: same images as the eager sampler.

AOTInductor compiles C++ for minutes on a 2-core CPU, hence `slow`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mcfast.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_export_torchscript import BATCH, SIZE, STEPS, eager_and_inputs, make_run, one_thread  # noqa: E402,F401

pytestmark = pytest.mark.slow

FAST_COMPILE = {"aot_inductor.compile_wrapper_opt_level": "O0"}


def test_pt2_package_matches_eager_sampler(tmp_path):
    from mcfast.export import export_pt2
    from mcfast.export.aoti import AOTISampler
    from mcfast.export.runtime import load_ops_library

    run = make_run(tmp_path)
    eager, inputs = eager_and_inputs(run, "ddpm", 0.0)
    out = export_pt2(run, tmp_path / "sampler.pt2", steps=STEPS, batch=BATCH, slots=inputs["refs"].shape[1],
                     inductor_configs=FAST_COMPILE)
    meta = json.loads((tmp_path / "sampler.pt2.json").read_text())
    assert meta["kind"] == ("guided_step" if load_ops_library() else "unet")
    sampler = AOTISampler(out)
    images = sampler(**inputs)
    assert images.shape == (BATCH, 1, SIZE, SIZE)
    assert (images - eager).abs().max().item() <= 1e-4
    if meta["kind"] == "guided_step":
        with pytest.raises(InputError, match="exported for batch 2"):
            sampler(inputs["refs"][:1], inputs["factors"][:1], inputs["stop_steps"][:1], inputs["weights"][:1])

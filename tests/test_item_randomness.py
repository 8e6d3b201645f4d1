"""An item's image depends on (recipe seed, item index) only: not on the batch size, its batch-mates,
the number of processes or a resume (mcfast.seeding; the network runs per item for this)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mcfast.seeding import SEED_RULE, item_seed
from mcfast.synthesis.pipeline import synthesize
from mcfast.synthesis.recipe import load_recipe
from synthesis_helpers import make_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "mcfast" / "configs"
N = 8


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("live") / "run", 64, "ct", live_output=True)


def _recipe(backend: str, batch_size: int):
    r = load_recipe(CONFIGS / "demo_ct.toml")
    r.image_size, r.sampler.steps, r.sampler.backend, r.sampler.batch_size = 64, "4", backend, batch_size
    return r


def _images(out: Path, n: int = N) -> np.ndarray:
    return np.stack([np.load(out / f"{k:06d}" / "image.npy") for k in range(n)])


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_item_is_bit_identical_for_batch_sizes_1_3_8(tmp_path, live_run, backend):
    images = {}
    for bs in (1, 3, 8):
        synthesize(live_run, _recipe(backend, bs), N, tmp_path / f"b{bs}", progress=False)
        images[bs] = _images(tmp_path / f"b{bs}")
    assert np.array_equal(images[1], images[3]) and np.array_equal(images[1], images[8])
    assert np.abs(images[1][0] - images[1][1]).max() > 1e-2  # items differ from each other


def test_fused_op_matches_reference_within_rounding(tmp_path, live_run):
    synthesize(live_run, _recipe("reference", 3), N, tmp_path / "ref", progress=False)
    synthesize(live_run, _recipe("auto", 3), N, tmp_path / "fused", progress=False)
    assert np.abs(_images(tmp_path / "ref") - _images(tmp_path / "fused")).max() < 1e-4


def test_resume_after_lost_items_gives_the_same_images(tmp_path, live_run):
    r = _recipe("auto", 3)
    synthesize(live_run, r, N, tmp_path / "full", progress=False)
    shutil.copytree(tmp_path / "full", tmp_path / "part")
    for k in (1, 5, 6):  # as if a run had been killed before these items were written
        shutil.rmtree(tmp_path / "part" / f"{k:06d}")
    result = synthesize(live_run, r, N, tmp_path / "part", progress=False)
    assert result.written == 3 and result.skipped == N - 3
    assert np.array_equal(_images(tmp_path / "full"), _images(tmp_path / "part"))


def test_seed_streams_are_distinct_and_recorded(tmp_path, live_run):
    # Version 1 derived stream seeds by adding to the run seed, so seed s's step noise was seed s+1's x_T.
    seeds = {(s, i, stream): item_seed(s, i, stream) for s in range(3) for i in range(3)
             for stream in (None, "start", "steps", "guidance")}
    assert len(set(seeds.values())) == len(seeds)
    synthesize(live_run, _recipe("auto", 2), 1, tmp_path / "o", progress=False)
    provenance = json.loads((tmp_path / "o" / "provenance.json").read_text())
    assert provenance["item_seeds"] == json.loads(json.dumps(SEED_RULE)) and SEED_RULE["version"] == 2

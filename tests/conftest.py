"""Shared pytest fixtures."""
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data (real images beside the repo); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not found (it lives beside the repository, see its README)")
    return SHARED_DATA


@pytest.fixture()
def one_thread():
    """Tiny models run fastest (and steadiest on a shared 2-core machine) on one torch thread."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_run_32(tmp_path_factory) -> Path:
    """An untrained tiny 32² CT run (tests/synthesis_helpers.make_tiny_run), made once per session and only
    read: the bad-input tests link it into each sandbox."""
    from synthesis_helpers import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("tiny") / "run", image_size=32)

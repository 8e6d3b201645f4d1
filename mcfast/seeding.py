"""Per-item seeds: every synthesized or sampled image draws from a seed of its own, so it depends on its
index and the run's seed only — not on its batch-mates, the batch size or the rank that makes it."""
from __future__ import annotations

import numpy as np


def item_seed(run_seed: int, index: int) -> int:
    """A well-mixed seed for item ``index`` of a run seeded ``run_seed`` (the same on every rank and re-run)."""
    return int(np.random.SeedSequence([run_seed, index]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(2))

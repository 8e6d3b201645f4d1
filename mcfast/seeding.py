"""Per-item seeds: every synthesized or sampled image draws from seeds of its own, so it depends on its
index and the run's seed only — not on its batch-mates, the batch size, the rank that makes it or a resume.

The rule (recorded in each run's provenance.json as :data:`SEED_RULE`): item ``i`` of a run seeded ``s``
draws its anatomy and lesions from ``SeedSequence([s, i])``, and each noise stream from
``SeedSequence([s, i, stream])`` — x_T (1), step noise (2), guidance noise (3; condition ``c`` of the
item then from ``SeedSequence([that seed, 0, c])``, see :mod:`mcfast.guidance.ilvr`). Distinct entropy
words keep the streams independent of each other and of other run seeds (adding 1 to the run seed,
as version 1 did, made the step noise of seed s the x_T noise of seed s + 1).
"""
from __future__ import annotations

import numpy as np

STREAMS = {"start": 1, "steps": 2, "guidance": 3}
SEED_RULE = {"version": 2, "plan": "SeedSequence([seed, index])",
             "noise": "SeedSequence([seed, index, stream])", "streams": STREAMS,
             "condition": "SeedSequence([guidance seed, 0, condition index])"}


def mix_seed(*words: int) -> int:
    """A well-mixed 62-bit seed from integer entropy words (numpy's SeedSequence)."""
    return int(np.random.SeedSequence(list(words)).generate_state(1, dtype=np.uint64)[0] >> np.uint64(2))


def item_seed(run_seed: int, index: int, stream: str | None = None) -> int:
    """The seed of item ``index`` of a run seeded ``run_seed``: its plan's (``stream`` None) or one of
    its noise streams' ("start", "steps", "guidance"). The same on every rank and re-run."""
    if stream is None:
        return mix_seed(run_seed, index)
    return mix_seed(run_seed, index, STREAMS[stream])

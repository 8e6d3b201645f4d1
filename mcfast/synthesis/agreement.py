"""How closely a synthesized image follows each of its references at the condition's own scale.

For condition s with factor n and weight W: the weighted mean absolute difference (model space)
between φ_n(x0) and φ_n(y_s). The same number for an unguided sample from the same model and
starting noise is the baseline: guidance should bring it down for every condition.
"""
from __future__ import annotations

import numpy as np
import torch

from mcfast.guidance.filters import lowpass
from mcfast.synthesis.plan import ItemPlan


def condition_errors(plan: ItemPlan, image_model: np.ndarray) -> list[dict]:
    """Weighted MAE of φ_n(image) − φ_n(reference) for every condition of ``plan``."""
    x = torch.as_tensor(np.asarray(image_model, dtype=np.float32))[None, None]
    rows = []
    for cond in plan.conditions:
        y = cond.ref[None].float()
        w = cond.weight_map().float()
        diff = (lowpass(x, cond.factor, cond.filter) - lowpass(y, cond.factor, cond.filter))[0, 0].abs()
        rows.append({"name": cond.name, "factor": cond.factor, "weighted": not cond.is_full,
                     "mae": float((w * diff).sum() / w.sum())})
    return rows


def summarise(per_item: list[list[dict]]) -> dict:
    """Mean MAE over items, separately for the anatomy (full) and the pathology (weighted) conditions."""
    out = {}
    for key, weighted in (("anatomy", False), ("pathology", True)):
        values = [r["mae"] for rows in per_item for r in rows if r["weighted"] == weighted]
        if values:
            out[key] = {"mean_mae": float(np.mean(values)), "n": len(values)}
    return out

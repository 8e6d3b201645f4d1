"""Training sets made from mcfast's own phantoms (no outside data): the embedded default's source.

Each image is written as an NPY in model space [-1, 1] (CT: HU through ``hu_to_model``; MG: 2x − 1),
named by its seed, with a manifest, so ``mcfast train --data DIR`` reads it directly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mcfast.atomic import atomic_path, write_text
from mcfast.errors import InputError


def phantom_model_space(modality: str, size: int, seed: int) -> np.ndarray:
    """One phantom of ``modality`` ("ct" or "mg") in model space, (size, size) float32."""
    from mcfast.synthesis.plan import to_model

    if modality == "ct":
        from mcfast.anatomy.phantom import lung_phantom

        return to_model("ct", lung_phantom(size=size, seed=seed))
    if modality == "mg":
        from mcfast.anatomy.breast_phantom import breast_phantom

        return to_model("mg", breast_phantom(size=size, seed=seed))
    raise InputError(f"modality must be 'ct' or 'mg', got {modality!r}")


def write_phantom_dataset(modality: str, n: int, size: int, out: str | Path, seed: int = 0,
                          progress: bool = True) -> Path:
    """Write ``n`` phantoms (seeds seed..seed+n-1) to ``out``; existing files are kept (resumable)."""
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for k in tqdm(range(seed, seed + n), desc=f"{modality} phantoms", disable=not progress):
        path = out / f"{modality}_{k:06d}.npy"
        if path.exists():
            continue
        with atomic_path(path) as tmp:
            np.save(tmp, phantom_model_space(modality, size, k))
    write_text(out / "manifest.json", json.dumps({
        "source": f"mcfast {modality} phantoms", "modality": modality, "size": size, "seeds": [seed, seed + n - 1],
        "space": "model [-1, 1]" + (" (HU -1024..3071)" if modality == "ct" else " (2x - 1)")}, indent=2))
    return out

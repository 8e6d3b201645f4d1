"""Turn a training run into a shipped default model: EMA weights only (sampling needs nothing else).

Reproduce the shipped defaults (about an hour on 2 CPU cores each, bf16 autocast):

    mcfast phantoms --modality ct --n 3000 --size 64 --out runs/data_ct64
    mcfast train --data runs/data_ct64 --out runs/ct64 --image-size 64 --modality ct --preset tiny \
        --model-channels 32 --channel-mult 1,2,2,2 --num-res-blocks 1 --attention-resolutions 16 --num-heads 2 \
        --batch-size 8 --lr 2e-4 --max-steps 4000 --precision bf16 --seed 0
    python -m mcfast.demo.ship runs/ct64 mcfast/assets/default_ct

(and the same with ``mg``). The step actually shipped is recorded in the shipped config.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from mcfast.atomic import atomic_path, write_text
from mcfast.train.checkpoint import CONFIG_FILE, MODEL_FILE, load_checkpoint


def ship(run_dir: str | Path, dest: str | Path) -> Path:
    """Copy the EMA weights and a trimmed config of ``run_dir`` to ``dest``."""
    config, weights, _ = load_checkpoint(run_dir)
    ema = {k: v.contiguous() for k, v in weights.items() if k.startswith("ema.")}
    step = int(config["step"])
    modality = config.get("data", {}).get("modality", "generic")
    shipped = {
        "model": config["model"], "diffusion": config["diffusion"], "data": config["data"], "step": step,
        "train": config.get("train"), "mcfast_version": config.get("mcfast_version"),
        "trained_on": f"mcfast {modality} phantoms ('mcfast phantoms --modality {modality}'); no outside data",
        "reproduce": (__doc__ or "").split("Reproduce")[1].strip() if __doc__ else "",
    }
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest / MODEL_FILE) as tmp:
        save_file(ema, str(tmp), metadata={"step": str(step), "format": "mcfast"})
    write_text(dest / CONFIG_FILE, json.dumps(shipped, indent=1) + "\n")
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m mcfast.demo.ship RUN_DIR DEST_DIR")
    print(ship(sys.argv[1], sys.argv[2]))

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
from pathlib import Path

import torch
from safetensors.torch import save_file

from mcfast.atomic import atomic_path, write_text
from mcfast.train.checkpoint import CONFIG_FILE, MODEL_FILE, load_checkpoint


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def ship(run_dir: str | Path, dest: str | Path, dtype: str = "fp32", trained_on: str | None = None,
         history: dict | None = None) -> Path:
    """Copy the EMA weights (cast to ``dtype``; bf16 halves the file and samples the same under bf16
    autocast) and a trimmed config of ``run_dir`` to ``dest``. ``trained_on`` names the data;
    ``history`` (e.g. steps and CPU-hours over several sessions) is recorded as given."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    config, weights, _ = load_checkpoint(run_dir)
    ema = {k: v.to(DTYPES[dtype]).contiguous() for k, v in weights.items() if k.startswith("ema.")}
    step = int(config["step"])
    modality = config.get("data", {}).get("modality", "generic")
    data = {k: v for k, v in config["data"].items() if k != "root"}  # a local path says nothing to a user
    shipped = {
        "model": config["model"], "diffusion": config["diffusion"], "data": data, "step": step,
        "train": config.get("train"), "mcfast_version": config.get("mcfast_version"), "dtype": dtype,
        "trained_on": trained_on or f"mcfast {modality} phantoms ('mcfast phantoms --modality {modality}'); "
                                    f"no outside data",
        "reproduce": (__doc__ or "").split("Reproduce")[1].strip() if trained_on is None and __doc__ else "",
    }
    if history is not None:
        shipped["history"] = history
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest / MODEL_FILE) as tmp:
        save_file(ema, str(tmp), metadata={"step": str(step), "format": "mcfast"})
    write_text(dest / CONFIG_FILE, json.dumps(shipped, indent=1) + "\n")
    return dest


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Ship a run's EMA weights as a default model folder.")
    ap.add_argument("run_dir")
    ap.add_argument("dest")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--trained-on", default=None, help="what the data was (default: mcfast phantoms)")
    ap.add_argument("--history", default=None, help="JSON object recorded as the training history")
    a = ap.parse_args()
    from mcfast.errors import McfastError

    try:
        print(ship(a.run_dir, a.dest, a.dtype, a.trained_on, json.loads(a.history) if a.history else None))
    except (McfastError, json.JSONDecodeError) as exc:
        raise SystemExit(f"mcfast.demo.ship: error: {exc}") from None

"""Run folders: safetensors weights + optimizer state and a JSON config, written atomically, read without pickle.

Layout of ``RUN/``::

    model.safetensors      raw weights under "model.", EMA weights under "ema."
    optimizer.safetensors  optimizer state tensors "state.<param index>.<name>", plus "extra.<name>" tensors
    config.json            {"model", "diffusion", "data", "train", "step", "optimizer": {param_groups},
                            "rng": {...}, "files": {name: step}}

Each file is replaced atomically and config.json is written last; both safetensors files carry
the step in their metadata, so a crash between files is detected as a mismatched checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from mcfast.atomic import atomic_path, write_text
from mcfast.errors import CheckpointError

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
CONFIG_FILE = "config.json"


def _cpu_contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Split an optimizer state dict into tensors ("state.<index>.<key>") and JSON-able param groups."""
    tensors: dict[str, torch.Tensor] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if not torch.is_tensor(value):
                value = torch.tensor(value)
            tensors[f"state.{index}.{key}"] = value
    groups = []
    for group in state_dict["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()})
    return tensors, groups


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    """Inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    param_groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": param_groups}


def save_checkpoint(run_dir: str | Path, *, model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor],
                    optimizer_state: dict, config: dict[str, Any], extra_tensors: dict[str, torch.Tensor] | None = None,
                    ) -> None:
    """Write the three checkpoint files of ``run_dir`` atomically (config.json last)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    step = str(int(config["step"]))
    weights = {f"model.{k}": v for k, v in model_state.items()}
    weights.update({f"ema.{k}": v for k, v in ema_state.items()})
    opt_tensors, groups = flatten_optimizer_state(optimizer_state)
    opt_tensors.update({f"extra.{k}": v for k, v in (extra_tensors or {}).items()})
    with atomic_path(run_dir / MODEL_FILE) as tmp:
        save_file(_cpu_contiguous(weights), str(tmp), metadata={"step": step, "format": "mcfast"})
    with atomic_path(run_dir / OPTIMIZER_FILE) as tmp:
        save_file(_cpu_contiguous(opt_tensors), str(tmp), metadata={"step": step, "format": "mcfast"})
    config = dict(config, optimizer={"param_groups": groups})
    write_text(run_dir / CONFIG_FILE, json.dumps(config, indent=1) + "\n")


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.json, with clear errors for a missing or corrupt file."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {Path(run_dir)} is not an mcfast run folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt JSON ({exc})") from None
    for key in ("model", "diffusion", "step"):
        if key not in config:
            raise CheckpointError(f"{path}: lacks the {key!r} entry")
    return config


def _read_tensors(path: Path, step: int) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None
    if meta.get("step") != str(step):
        raise CheckpointError(f"{path}: holds step {meta.get('step')} but config.json says step {step} "
                              f"(mismatched checkpoint files)")
    return tensors


def load_checkpoint(run_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(config, weights, optimizer tensors) of a run; raises CheckpointError on any inconsistency."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    step = int(config["step"])
    return config, _read_tensors(run_dir / MODEL_FILE, step), _read_tensors(run_dir / OPTIMIZER_FILE, step)


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries starting with ``prefix + '.'``, with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load ``state`` into ``module`` requiring identical names and shapes (CheckpointError otherwise)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not match the architecture in config.json "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, value in state.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise CheckpointError(f"{source}: {name} has shape {tuple(value.shape)}, the model expects "
                                  f"{tuple(own[name].shape)}")
    module.load_state_dict(state, strict=True)


def load_model(run_dir: str | Path, device: str | torch.device = "cpu", ema: bool = True):
    """Rebuild the U-Net of a run with its EMA (or raw) weights: ``(model, diffusion_kwargs, config)``.

    The model is in eval mode on ``device``. Nothing is unpickled (safetensors + JSON only).
    """
    from mcfast.models.unet import UNetModel

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    weights = _read_tensors(run_dir / MODEL_FILE, int(config["step"]))
    try:
        model = UNetModel(**config["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{run_dir / CONFIG_FILE}: invalid model settings ({exc})") from None
    state = split_prefix(weights, "ema" if ema else "model")
    if not state:
        raise CheckpointError(f"{run_dir / MODEL_FILE}: has no {'ema' if ema else 'model'}.* weights")
    load_state_strict(model, state, run_dir / MODEL_FILE)
    return model.to(device).eval(), dict(config["diffusion"]), config


def read_init(source: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, float32 weights) to warm-start from: a run folder or a shipped asset folder (EMA weights,
    the raw weights when a file has no EMA copy). Shipped assets may be bf16/fp16; training is float32."""
    source = Path(source)
    config = read_config(source)
    weights = _read_tensors(source / MODEL_FILE, int(config["step"]))
    state = split_prefix(weights, "ema") or split_prefix(weights, "model")
    if not state:
        raise CheckpointError(f"{source / MODEL_FILE}: has no ema.* or model.* weights")
    return config, {k: v.float() for k, v in state.items()}

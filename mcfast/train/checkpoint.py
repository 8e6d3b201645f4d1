"""Run folders: safetensors weights + optimizer state and a JSON config, published atomically, read without pickle.

Layout of a training run ``RUN/``::

    checkpoints/latest              the name of the published step folder ("step_0000300")
    checkpoints/step_0000300/
        model.safetensors           raw weights under "model.", EMA weights under "ema."
        optimizer.safetensors       optimizer state tensors "state.<param index>.<name>", plus "extra.<name>"
        config.json                 {"model", "diffusion", "data", "train", "step", "optimizer": {param_groups},
                                     "rng": {...}}

A checkpoint is one unit: its three files are written into a hidden temporary folder, which is
renamed to ``step_NNNNNNN`` when complete; then ``latest`` is replaced (one rename) and only then
are older step folders deleted. A kill at any moment therefore leaves ``latest`` naming a complete
checkpoint (the new or the previous one); temporary and unpublished folders are removed when a
run starts. A shipped model (``mcfast/assets/*``) and runs written before this layout are *flat*:
the three files (or just model.safetensors + config.json) directly in the folder; every reader
here accepts both.

Both safetensors files carry the step, and model.safetensors the model settings, in their
metadata: files of different checkpoints, or a config.json edited by hand, are refused.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from mcfast.atomic import current_umask, write_text
from mcfast.errors import CheckpointError

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"step_\d{7,}(_\d+)?")
_TEMP_PREFIX = ".tmp-"


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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dir(run_dir: str | Path) -> Path:
    """The folder holding the published checkpoint of ``run_dir`` (its step folder, or itself when flat)."""
    run_dir = Path(run_dir)
    latest = run_dir / CHECKPOINTS_DIR / LATEST_FILE
    if latest.is_file():
        name = latest.read_text(encoding="utf-8").strip()
        if not _STEP_DIR.fullmatch(name):
            raise CheckpointError(f"{latest}: names {name!r}, not a step folder")
        folder = latest.parent / name
        if not (folder / CONFIG_FILE).is_file():
            raise CheckpointError(f"{latest}: names {name}, which holds no {CONFIG_FILE}")
        return folder
    return run_dir


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint (either layout)."""
    run_dir = Path(run_dir)
    return (run_dir / CHECKPOINTS_DIR / LATEST_FILE).is_file() or (run_dir / CONFIG_FILE).is_file()


def weights_file(run_dir: str | Path) -> Path:
    """model.safetensors of the published checkpoint of ``run_dir``."""
    return checkpoint_dir(run_dir) / MODEL_FILE


def clean_unpublished(run_dir: str | Path) -> list[Path]:
    """Delete what an interrupted save left: temporary folders, step folders ``latest`` does not name,
    and the temporary files of the flat layout's atomic writes. Returns what was removed."""
    run_dir = Path(run_dir)
    removed = [p for p in run_dir.glob(f".{MODEL_FILE}.*") if p.is_file()]
    removed += [p for p in run_dir.glob(f".{OPTIMIZER_FILE}.*") if p.is_file()]
    root = run_dir / CHECKPOINTS_DIR
    if root.is_dir():
        keep = checkpoint_dir(run_dir).name if (root / LATEST_FILE).is_file() else None
        for entry in root.iterdir():
            if entry.name.startswith(_TEMP_PREFIX) or entry.name.startswith(f".{LATEST_FILE}."):
                removed.append(entry)
            elif entry.is_dir() and _STEP_DIR.fullmatch(entry.name) and entry.name != keep:
                removed.append(entry)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


def _free_step_name(root: Path, step: int) -> str:
    name = f"step_{step:07d}"
    k = 1
    while (root / name).exists():  # the same step saved again (the published one must stay until replaced)
        name = f"step_{step:07d}_{k}"
        k += 1
    return name


def save_checkpoint(run_dir: str | Path, *, model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor],
                    optimizer_state: dict, config: dict[str, Any], extra_tensors: dict[str, torch.Tensor] | None = None,
                    ) -> Path:
    """Publish a checkpoint of ``run_dir`` as one unit (see the module docstring); returns its folder."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    step = int(config["step"])
    meta = {"step": str(step), "format": "mcfast"}
    weights = {f"model.{k}": v for k, v in model_state.items()}
    weights.update({f"ema.{k}": v for k, v in ema_state.items()})
    opt_tensors, groups = flatten_optimizer_state(optimizer_state)
    opt_tensors.update({f"extra.{k}": v for k, v in (extra_tensors or {}).items()})
    config = dict(config, optimizer={"param_groups": groups})
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}step_{step:07d}-", dir=root))
    try:
        save_file(_cpu_contiguous(weights), str(tmp / MODEL_FILE),
                  metadata={**meta, "model": _canonical(config["model"])})
        save_file(_cpu_contiguous(opt_tensors), str(tmp / OPTIMIZER_FILE), metadata=meta)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
        for name in (MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE):
            _fsync(tmp / name)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700
        final = root / _free_step_name(root, step)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(root)
    write_text(root / LATEST_FILE, final.name + "\n")  # the commit point
    _fsync(root)
    for stale in [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name) and p != final]:
        shutil.rmtree(stale, ignore_errors=True)
    for flat in (MODEL_FILE, OPTIMIZER_FILE, CONFIG_FILE):  # superseded files of a run from the flat layout
        (run_dir / flat).unlink(missing_ok=True)
    return final


def _canonical(model_config: dict) -> str:
    return json.dumps(model_config, sort_keys=True)


_READ_ATTEMPTS = 5


def _read_published(run_dir: str | Path, read):
    """``read(folder)`` on the published checkpoint of ``run_dir``. A run that is still training may
    publish a newer checkpoint and delete this one while it is being read: then the newer one is read
    instead, so a reader never mixes the files of two steps."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: is a file, not an mcfast run folder")
    for attempt in range(_READ_ATTEMPTS):
        folder = checkpoint_dir(run_dir)
        try:
            return read(folder)
        except CheckpointError:
            if folder.exists() or attempt == _READ_ATTEMPTS - 1:  # nothing was replaced: a real error
                raise


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The config.json of the run's published checkpoint, with clear errors for a missing or corrupt file."""
    return _read_published(run_dir, lambda folder: _read_config_at(folder, Path(run_dir)))


def _read_config_at(folder: Path, run_dir: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {run_dir} is not an mcfast run folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt JSON ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc.strerror})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: is not a JSON object")
    for key, kind in (("model", dict), ("diffusion", dict), ("step", int)):
        if key not in config:
            raise CheckpointError(f"{path}: lacks the {key!r} entry")
        if not isinstance(config[key], kind) or isinstance(config[key], bool):
            raise CheckpointError(f"{path}: {key!r} must be a {'JSON object' if kind is dict else 'whole number'}, "
                                  f"not {config[key]!r}")
    _check_weights_header(folder / MODEL_FILE, config)
    return config


def _check_weights_header(weights: Path, config: dict[str, Any]) -> None:
    """Compare the model settings saved with the weights (header only: cheap) with config.json's."""
    if not weights.is_file():
        return  # reported by whoever reads the weights
    try:
        with safe_open(str(weights), framework="pt") as f:
            saved = (f.metadata() or {}).get("model")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:  # RuntimeError: cannot open
        raise CheckpointError(f"{weights}: corrupt safetensors file ({exc})") from None
    if saved is not None and json.loads(saved) != config["model"]:
        raise CheckpointError(f"{weights.parent / CONFIG_FILE}: model settings differ from those saved with the "
                              f"weights in {weights.name} (was config.json edited?)")


def _read_tensors(path: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of ``path``, checked against ``config`` (step, model settings) and for finite values."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    step = int(config["step"])
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:  # RuntimeError: cannot open
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None
    if meta.get("step") != str(step):
        raise CheckpointError(f"{path}: holds step {meta.get('step')} but config.json says step {step} "
                              f"(mismatched checkpoint files)")
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: {name} holds NaN or infinite values (a diverged run?)")
    return tensors


def load_checkpoint(run_dir: str | Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(config, weights, optimizer tensors) of a run; raises CheckpointError on any inconsistency."""
    def read(folder: Path):
        config = _read_config_at(folder, Path(run_dir))
        return config, _read_tensors(folder / MODEL_FILE, config), _read_tensors(folder / OPTIMIZER_FILE, config)
    return _read_published(run_dir, read)


def _read_config_and_weights(run_dir: str | Path) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """(folder, config, model.safetensors tensors) of the published checkpoint, read consistently."""
    def read(folder: Path):
        config = _read_config_at(folder, Path(run_dir))
        return folder, config, _read_tensors(folder / MODEL_FILE, config)
    return _read_published(run_dir, read)


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


def build_model(model_config: dict[str, Any], source: Path | str):
    """A UNetModel from the ``model`` block of a config.json, with a CheckpointError naming ``source``
    for an unknown key or a value of the wrong kind."""
    from mcfast.models.unet import UNetModel

    params = inspect.signature(UNetModel.__init__).parameters
    for key, value in model_config.items():
        if key not in params or key == "self":
            raise CheckpointError(f"{source}: unknown model setting {key!r}")
        default = params[key].default
        if default is inspect.Parameter.empty:  # image_size
            default = 0
        if not _same_kind(value, default):
            raise CheckpointError(f"{source}: model setting {key!r} = {value!r} has the wrong kind "
                                  f"(expected {_kind_name(default)})")
    try:
        return UNetModel(**model_config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: invalid model settings ({exc})") from None


def _same_kind(value, default) -> bool:
    """Whether a JSON value fits a parameter with this default (bool, int, float or a list of ints)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return True


def _kind_name(default) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number"}.get(type(default),
                                                                                  "a list of whole numbers")


def load_model(run_dir: str | Path, device: str | torch.device = "cpu", ema: bool = True):
    """Rebuild the U-Net of a run with its EMA (or raw) weights: ``(model, diffusion_kwargs, config)``.

    The model is in eval mode on ``device``. Nothing is unpickled (safetensors + JSON only).
    """
    folder, config, weights = _read_config_and_weights(run_dir)
    model = build_model(config["model"], folder / CONFIG_FILE)
    state = split_prefix(weights, "ema" if ema else "model")
    if not state:
        raise CheckpointError(f"{folder / MODEL_FILE}: has no {'ema' if ema else 'model'}.* weights")
    load_state_strict(model, state, folder / MODEL_FILE)
    return model.to(device).eval(), dict(config["diffusion"]), config


def read_init(source: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, float32 weights) to warm-start from: a run folder or a shipped asset folder (EMA weights,
    the raw weights when a file has no EMA copy). Shipped assets may be bf16/fp16; training is float32."""
    folder, config, weights = _read_config_and_weights(source)
    state = split_prefix(weights, "ema") or split_prefix(weights, "model")
    if not state:
        raise CheckpointError(f"{folder / MODEL_FILE}: has no ema.* or model.* weights")
    return config, {k: v.float() for k, v in state.items()}

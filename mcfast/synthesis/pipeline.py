"""Run a recipe: plan items, sample them in batches with ILVR guidance, write annotated outputs.

Resumable (finished items are skipped), and split across ranks when launched by ``torchrun``
(item k goes to rank k mod world size; rank 0 merges everything into one COCO file).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mcfast import __version__
from mcfast.atomic import write_text
from mcfast.errors import InputError
from mcfast.synthesis import outputs
from mcfast.seeding import item_seed
from mcfast.synthesis.plan import plan_item
from mcfast.synthesis.recipe import Recipe

PROVENANCE = "provenance.json"


@dataclass
class SynthesisResult:
    out: Path
    written: int
    skipped: int
    coco: Path | None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def initial_noise(plans: list, size: int) -> torch.Tensor:
    """x_T (B, 1, size, size) from each item's own seed: an item's start does not depend on its batch-mates."""
    return torch.stack([torch.randn(1, size, size, generator=torch.Generator().manual_seed(p.seed)) for p in plans])


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return rank, world


def _check_provenance(out: Path, provenance: dict) -> None:
    """Refuse to mix two different runs in one folder; the same run resumes."""
    path = out / PROVENANCE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise InputError(f"{path}: unreadable provenance; use another --out") from None
    for key in ("recipe", "checkpoint_sha256", "n"):
        if old.get(key) != provenance.get(key):
            raise InputError(f"{out}: holds a run with a different {key}; use another --out to keep both")


def synthesize(ckpt: str | Path, recipe: Recipe, n: int, out: str | Path, *, device: str | None = None,
               precision: str = "fp32", batch_size: int | None = None, progress: bool = True,
               channels_last: bool = False, fused_norm: bool | None = None) -> SynthesisResult:
    """Make ``n`` annotated images from the run at ``ckpt`` following ``recipe`` into ``out``.

    ``fused_norm``: the U-Net's fused norm + SiLU op (None = when it is available; see make_model_fn)."""
    from mcfast.diffusion.eps_scaling import scale_eps
    from mcfast.models.inference import make_model_fn
    from mcfast.diffusion.gaussian import create_diffusion
    from mcfast.diffusion.samplers import sample, sdedit_start
    from mcfast.models.unet import check_sampling_size
    from mcfast.guidance.ilvr import ILVRGuidance
    from mcfast.train.checkpoint import MODEL_FILE, load_model

    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    ckpt, out = Path(ckpt), Path(out)
    model, diffusion_kwargs, config = load_model(ckpt, device=device or "cpu")
    trained = int(config.get("data", {}).get("image_size", config["model"].get("image_size", 0)))
    check_sampling_size(config["model"], recipe.image_size, trained, where=f"{recipe.source} with the model at {ckpt}")
    size = recipe.image_size
    trained_on = config.get("data", {}).get("modality", "generic")
    if trained_on not in ("generic", recipe.modality):
        raise InputError(f"{recipe.source}: modality = {recipe.modality!r} but the model at {ckpt} was trained on "
                         f"{trained_on!r} images")
    diffusion = create_diffusion(**{**diffusion_kwargs, "respacing": recipe.sampler.steps})
    rank, world = _dist_info()
    provenance = {
        "mcfast_version": __version__, "torch_version": torch.__version__,
        "recipe": json.loads(json.dumps(recipe.to_dict())), "n": n, "checkpoint": str(ckpt),
        "checkpoint_sha256": file_sha256(ckpt / MODEL_FILE), "checkpoint_step": config.get("step"),
        "item_seeds": "numpy SeedSequence([recipe.seed, index])", "world_size": world,
        "precision": precision, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _check_provenance(out, provenance)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0 and not (out / PROVENANCE).is_file():
        write_text(out / PROVENANCE, json.dumps(provenance, indent=2))
    mine = [i for i in range(n) if i % world == rank]
    todo = [i for i in mine if not outputs.is_done(out, i)]
    device_t = next(model.parameters()).device
    model_fn = scale_eps(make_model_fn(model, device_t, precision, channels_last=channels_last,
                                       fused_norm=fused_norm), recipe.sampler.eps_scale)
    bs = batch_size or recipe.sampler.batch_size
    bar = tqdm(total=len(todo), desc=f"synthesize {recipe.modality}", unit="img", disable=not progress)
    for start in range(0, len(todo), bs):
        batch = todo[start:start + bs]
        plans = [plan_item(recipe, i) for i in batch]
        noise = initial_noise(plans, size).to(device_t)
        # SDEdit start: each item's anatomy reference noised to start_step with its own x_T noise.
        anatomy = torch.stack([p.conditions[0].ref for p in plans]).to(device_t)
        x_start, first = sdedit_start(diffusion, anatomy, noise, recipe.sampler.start_step)
        # One step-noise generator and one guidance seed per item: an item's image depends on its seed only.
        gens = [torch.Generator(device=device_t).manual_seed(item_seed(recipe.seed + 1, i)) for i in batch]
        guidance = ILVRGuidance([p.conditions for p in plans], diffusion,
                                generator=[item_seed(recipe.seed + 2, i) for i in batch], backend=recipe.sampler.backend)
        x = sample(model_fn, diffusion, noise.shape, method=recipe.sampler.method, eta=recipe.sampler.eta,
                   clip_denoised=recipe.sampler.clip_denoised, noise=x_start, generator=gens, guidance=guidance,
                   progress=False, device=device_t, start_at=first, x0_guidance=recipe.sampler.x0_guidance)
        images = x.float().cpu().numpy()[:, 0]
        for p, img in zip(plans, images):
            outputs.write_item(out, p, img, recipe.modality, recipe.output,
                               {"rank": rank, "batch": batch, "sampler": recipe.sampler.method,
                                "eta": recipe.sampler.eta, "x0_guidance": recipe.sampler.x0_guidance,
                                "eps_scale": recipe.sampler.eps_scale,
                                "steps": recipe.sampler.steps, "start_step": recipe.sampler.start_step,
                                "network_calls": first + 1})
        bar.update(len(batch))
    bar.close()
    coco = None
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        coco = outputs.write_coco(out, n, recipe.modality)
    return SynthesisResult(out, len(todo), len(mine) - len(todo), coco)

"""One configuration of the end-to-end synthesis benchmark, run in its own process (so its peak memory and
thread count are its own): prints one JSON line with seconds per image and peak RSS.

    python benchmarks/synthesis_case.py '{"config": "fast", "size": 512, "threads": 2, "n": 2}'

Configurations (anatomy = a B-spline lung phantom per image, 1-2 procedural nodules, every output written):
- ``paper``: the ILVR paper's way — an ADM "small"-shape U-Net with self-attention (random weights: speed
  only), fp32, plain PyTorch layers (none of mcfast's fused ops), 250 ancestral steps from pure noise, the eager PyTorch ILVR reference. Too slow to run whole
  in a benchmark, it is timed at two chain lengths (``paper_calls``) and the per-call cost is
  extrapolated linearly to 250 calls (ancestral steps cost the same at every t).
- ``default``: the shipped crop-trained model (mcfast/assets/ct_real) with the recipe's own sampler
  (50 respaced ancestral steps, SDEdit start at t = 700: 35 calls), bf16 + channels_last, the fused
  norm + SiLU op in the U-Net, the fused guided step.
- ``fast``: the same model and recipe in the fast mode (``mcfast synthesize --fast``).
"""
from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "configs" / "lung_ct_phantom512.toml"
PAPER_STEPS = 250


def _recipe(size: int):
    from mcfast.evaluate.realism_sets import scaled_recipe

    return scaled_recipe(RECIPE, size)


def paper_run(folder: Path, size: int) -> Path:
    """A run folder holding the paper-style network (small preset widths, attention at 16 and 8 px)."""
    import torch

    from mcfast.models.unet import UNetModel, default_channel_mult, preset_config
    from mcfast.train.checkpoint import save_checkpoint

    config = preset_config("small", min(size, 256))
    config["image_size"] = size
    config["channel_mult"] = default_channel_mult(min(size, 256))
    lowest = size // 2 ** (len(config["channel_mult"]) - 1)
    config["attention_resolutions"] = tuple(size // r for r in (16, 8) if r >= lowest)
    torch.manual_seed(0)
    model = UNetModel(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    state = model.state_dict()
    optimizer = torch.optim.AdamW(model.parameters()).state_dict()
    save_checkpoint(folder, model_state=state, ema_state=state, optimizer_state=optimizer, config={
        "model": model.model_config(),
        "diffusion": {"T": 1000, "schedule": "cosine", "model_var_type": "learned_range", "loss_type": "hybrid"},
        "data": {"modality": "ct", "image_size": size}, "step": 0})
    return folder


def timed_synthesis(ckpt: Path, recipe, n: int, precision: str, channels_last: bool, fused_norm: bool) -> float:
    """Seconds per image of one synthesis run (the modules are imported before the clock starts)."""
    from mcfast.synthesis.pipeline import synthesize

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        synthesize(ckpt, recipe, n, Path(out) / "run", precision=precision, channels_last=channels_last,
                   progress=False, fused_norm=fused_norm)
        return (time.perf_counter() - start) / n


def run_case(config: str, size: int, threads: int, n: int, paper_calls: tuple[int, int] = (2, 6)) -> dict:
    import torch

    from mcfast.diffusion.samplers import network_calls
    from mcfast.synthesis.recipe import use_fast_sampler, validate

    torch.set_num_threads(threads)
    recipe = _recipe(size)
    recipe.sampler.batch_size = n
    result = {"config": config, "size": size, "threads": threads, "n": n}
    if config == "paper":
        recipe.sampler.method, recipe.sampler.steps, recipe.sampler.backend = "ddpm", str(PAPER_STEPS), "reference"
        # The timed steps sit at the bottom of the chain; with every stop step at 0 each of them carries all
        # the corrections, as the paper's steps above the anatomy's stop step do.
        recipe.anatomy.stop_step = 0
        for p in recipe.pathology:
            p.stop_step = 0
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = paper_run(Path(tmp) / "paper", size)
            seconds = []
            for calls in paper_calls:
                # A start at the original step of the chain's (calls-1)-th index makes exactly `calls` calls.
                recipe.sampler.start_step = (calls - 1) * 1000 // PAPER_STEPS + 1
                validate(recipe)
                assert network_calls(recipe.sampler.steps, recipe.sampler.start_step) == calls
                seconds.append(timed_synthesis(ckpt, recipe, n, "fp32", False, fused_norm=False))
        (c1, c2), (s1, s2) = paper_calls, seconds
        per_call = (s2 - s1) / (c2 - c1)
        fixed = s1 - c1 * per_call
        result.update(seconds_per_image=fixed + PAPER_STEPS * per_call, seconds_per_call=per_call,
                      fixed_seconds=fixed, network_calls=PAPER_STEPS, extrapolated_from_calls=list(paper_calls),
                      measured_seconds=seconds)
    else:
        if config == "fast":
            use_fast_sampler(recipe)
        result.update(seconds_per_image=timed_synthesis(REPO / "mcfast" / "assets" / "ct_real", recipe, n, "bf16",
                                                        True, fused_norm=True),
                      network_calls=network_calls(recipe.sampler.steps, recipe.sampler.start_step))
    result.update(sampler=recipe.sampler.method, steps=recipe.sampler.steps, x0_guidance=recipe.sampler.x0_guidance,
                  backend=recipe.sampler.backend,
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    return result


if __name__ == "__main__":
    print(json.dumps(run_case(**json.loads(sys.argv[1]))))

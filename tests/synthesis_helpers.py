"""A tiny random-weight run folder for pipeline tests (no training needed)."""
from __future__ import annotations

from pathlib import Path

import torch

from mcfast.models.unet import UNetModel
from mcfast.train.checkpoint import save_checkpoint


def make_tiny_run(run_dir: Path, image_size: int = 32, modality: str = "ct", seed: int = 0,
                  live_output: bool = False) -> Path:
    """An untrained tiny U-Net run. ADM zero-initialises the output convolutions, so its ε is 0 everywhere;
    ``live_output`` redraws those zeros so that the prediction depends on x (for tests that need it)."""
    torch.manual_seed(seed)
    model = UNetModel(image_size=image_size, in_channels=1, model_channels=16, out_channels=2, num_res_blocks=1,
                      attention_resolutions=(), dropout=0.0, channel_mult=(1, 2), num_heads=1,
                      use_scale_shift_norm=True)
    if live_output:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1 and not p.any():
                    p.normal_(0.0, 0.05)
    state = model.state_dict()
    opt = torch.optim.AdamW(model.parameters()).state_dict()
    save_checkpoint(run_dir, model_state=state, ema_state=state, optimizer_state=opt, config={
        "model": model.model_config(),
        "diffusion": {"T": 1000, "schedule": "cosine", "model_var_type": "learned_range", "loss_type": "hybrid"},
        "data": {"modality": modality, "image_size": image_size}, "step": 0})
    return run_dir

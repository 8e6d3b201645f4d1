"""Improved-DDPM diffusion: schedules, the Gaussian process and its losses, sampling loops."""
from mcfast.diffusion.gaussian import GaussianDiffusion, SpacedDiffusion, create_diffusion
from mcfast.diffusion.samplers import sample
from mcfast.diffusion.schedule import get_named_beta_schedule, space_timesteps

__all__ = ["GaussianDiffusion", "SpacedDiffusion", "create_diffusion", "sample",
           "get_named_beta_schedule", "space_timesteps"]

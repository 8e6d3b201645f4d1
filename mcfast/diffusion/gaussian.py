"""Gaussian diffusion (improved DDPM): forward process, posterior, learned-range variance, losses.

Every schedule-derived coefficient is computed in float64 numpy (names as in
openai/improved-diffusion) and gathered per timestep as a float32 tensor, so the
float32 model never sees rounding from cumulative products done in low precision.
Indices ``t`` passed to methods are indices into *this* chain (which may be a respaced
sub-chain); the network is always called with the original timestep ``timestep_map[t]``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from mcfast.diffusion.companding import get_companding
from mcfast.diffusion.schedule import get_named_beta_schedule, respaced_betas, space_timesteps
from mcfast.errors import InputError

MODEL_VAR_TYPES = ("learned_range", "fixed_small", "fixed_large")
LOSS_TYPES = ("hybrid", "simple")


class GaussianDiffusion:
    """The improved-DDPM process over ``len(betas)`` steps.

    ``model_var_type``: "learned_range" (network outputs ε and v, 2 channels per image channel),
    "fixed_small" (σ² = β̃_t, the posterior variance) or "fixed_large" (σ² = β_t, with β̃_1 at t = 0).
    ``loss_type``: "simple" (MSE on ε) or "hybrid" (MSE + λ·L_vlb, λ = ``vb_weight``; the vlb term
    only trains the variance because the mean is detached inside it).
    ``companding``: the map from model space to the space this chain runs in (diffusion.companding);
    its users (training, sampling) encode and decode through ``self.companding``.
    """

    def __init__(self, betas, model_var_type: str = "learned_range", loss_type: str = "hybrid",
                 vb_weight: float = 0.001, timestep_map=None, companding: str = "linear"):
        if model_var_type not in MODEL_VAR_TYPES:
            raise InputError(f"unknown model_var_type {model_var_type!r}; expected one of {', '.join(MODEL_VAR_TYPES)}")
        if loss_type not in LOSS_TYPES:
            raise InputError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0 or not np.all((betas > 0) & (betas <= 1)):
            raise InputError("betas must be a non-empty 1-D array with values in (0, 1]")
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.vb_weight = float(vb_weight)
        self.companding = get_companding(companding)
        self.betas = betas
        self.num_timesteps = int(len(betas))
        self.timestep_map = (np.arange(self.num_timesteps, dtype=np.int64) if timestep_map is None
                             else np.asarray(timestep_map, dtype=np.int64))

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t); it is 0 at t = 0, so the log is clipped to β̃_1.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]) if self.num_timesteps > 1
            else np.maximum(self.posterior_variance, 1e-20))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self._cache: dict[tuple[str, str], Tensor] = {}

    # -- helpers -------------------------------------------------------------------------
    def _extract(self, name: str, t: Tensor, ndim: int) -> Tensor:
        """Gather float64 coefficient ``name`` at indices ``t`` as float32, shaped (B, 1, ..., 1)."""
        key = (name, str(t.device))
        table = self._cache.get(key)
        if table is None:
            table = torch.from_numpy(np.ascontiguousarray(getattr(self, name))).to(t.device)
            self._cache[key] = table
        out = table[t.long()].float()
        return out.reshape(out.shape + (1,) * (ndim - out.ndim))

    def model_timesteps(self, t: Tensor) -> Tensor:
        """Original-chain timesteps the network expects for chain indices ``t``."""
        key = ("timestep_map", str(t.device))
        table = self._cache.get(key)
        if table is None:
            table = torch.from_numpy(self.timestep_map).to(t.device)
            self._cache[key] = table
        return table[t.long()]

    @property
    def learns_variance(self) -> bool:
        return self.model_var_type == "learned_range"

    # -- forward process -----------------------------------------------------------------
    def q_mean_variance(self, x_start: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = self._extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
        var = self._extract("sqrt_one_minus_alphas_cumprod", t, x_start.ndim) ** 2
        log_var = self._extract("log_one_minus_alphas_cumprod", t, x_start.ndim)
        return mean, var.expand_as(x_start), log_var.expand_as(x_start)

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)."""
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
        return (self._extract("sqrt_alphas_cumprod", t, x_start.ndim) * x_start
                + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start.ndim) * noise)

    def q_posterior_mean_variance(self, x_start: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t−1} | x_t, x_0)."""
        mean = (self._extract("posterior_mean_coef1", t, x_t.ndim) * x_start
                + self._extract("posterior_mean_coef2", t, x_t.ndim) * x_t)
        var = self._extract("posterior_variance", t, x_t.ndim).expand_as(x_t)
        log_var = self._extract("posterior_log_variance_clipped", t, x_t.ndim).expand_as(x_t)
        return mean, var, log_var

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t.ndim) * x_t
                - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t.ndim) * eps)

    def predict_eps_from_xstart(self, x_t: Tensor, t: Tensor, pred_xstart: Tensor) -> Tensor:
        return ((self._extract("sqrt_recip_alphas_cumprod", t, x_t.ndim) * x_t - pred_xstart)
                / self._extract("sqrt_recipm1_alphas_cumprod", t, x_t.ndim))

    # -- reverse process -----------------------------------------------------------------
    def split_model_output(self, model_output: Tensor, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """(ε, v) from the network output; v is None for fixed variances (extra channels are ignored)."""
        c = x.shape[1]
        model_output = model_output.float()
        if self.learns_variance:
            if model_output.shape[1] != 2 * c:
                raise InputError(f"learned_range variance needs {2 * c} output channels, model gave {model_output.shape[1]}")
            return model_output[:, :c], model_output[:, c:]
        if model_output.shape[1] not in (c, 2 * c):
            raise InputError(f"model gave {model_output.shape[1]} output channels for {c}-channel images")
        return model_output[:, :c], None

    def model_log_variance(self, v: Tensor | None, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(variance, log-variance) of p(x_{t−1} | x_t) for this chain's variance type."""
        if self.model_var_type == "learned_range":
            assert v is not None
            min_log = self._extract("posterior_log_variance_clipped", t, x.ndim)
            max_log = self._extract("log_betas", t, x.ndim)
            frac = (v + 1.0) / 2.0
            log_var = frac * max_log + (1.0 - frac) * min_log
            return torch.exp(log_var), log_var
        if self.model_var_type == "fixed_large":
            # β_t, except β̃_1 at t = 0 so that the decoder's variance is not too large (as in improved-diffusion).
            log_var = self._extract("fixed_large_log_variance", t, x.ndim).expand_as(x)
        else:
            log_var = self._extract("posterior_log_variance_clipped", t, x.ndim).expand_as(x)
        return torch.exp(log_var), log_var

    @property
    def log_betas(self) -> np.ndarray:
        return np.log(self.betas)

    @property
    def fixed_large_log_variance(self) -> np.ndarray:
        return np.log(np.append(self.posterior_variance[1], self.betas[1:])) if self.num_timesteps > 1 \
            else np.log(self.betas)

    def p_mean_variance(self, model_output: Tensor, x: Tensor, t: Tensor, clip_denoised: bool = True,
                        denoised_fn: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
        """p(x_{t−1} | x_t) from the network output: dict(mean, variance, log_variance, pred_xstart, eps)."""
        eps, v = self.split_model_output(model_output, x)
        variance, log_variance = self.model_log_variance(v, t, x)
        pred_xstart = self.predict_xstart_from_eps(x, t, eps)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_xstart": pred_xstart, "eps": eps}

    # -- losses ---------------------------------------------------------------------------
    def vb_terms_bpd(self, model_output: Tensor, x_start: Tensor, x_t: Tensor, t: Tensor,
                     clip_denoised: bool = False) -> Tensor:
        """Per-image L_t in bits per dimension: KL(q(x_{t−1}|x_t,x_0) ‖ p) for t > 0, decoder NLL at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
        kl = normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])
        kl = mean_flat(kl) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, means=out["mean"], log_scales=0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) of chain indices ``t`` (B,)."""
        abar = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64)[t.cpu()]
        return (abar / (1.0 - abar)).float().to(t.device)

    def training_losses(self, model: Callable[[Tensor, Tensor], Tensor], x_start: Tensor, t: Tensor,
                        noise: Tensor | None = None, generator: torch.Generator | None = None,
                        min_snr_gamma: float = 0.0) -> dict[str, Tensor]:
        """Per-image losses dict(loss, mse, vb) for chain indices ``t`` (vb is 0 unless hybrid + learned_range).

        ``min_snr_gamma`` > 0 weights the ε-MSE by min(SNR_t, γ) / SNR_t (Min-SNR-γ, Hang et al. 2023:
        the low-noise steps, whose gradients conflict with the rest, stop dominating); the logged
        ``mse`` stays unweighted."""
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
        x_t = self.q_sample(x_start, t, noise=noise)
        model_output = model(x_t, self.model_timesteps(t)).float()
        eps, v = self.split_model_output(model_output, x_t)
        mse = mean_flat((noise - eps) ** 2)
        if self.loss_type == "hybrid" and self.learns_variance:
            # Stop-gradient on the mean: L_vlb only steers the variance (improved-DDPM §3.1).
            frozen = torch.cat([eps.detach(), v], dim=1)
            # λ·L_vlb with L_vlb ≈ T·E_t[L_t]: scale the sampled term by λ·T.
            vb = self.vb_terms_bpd(frozen, x_start, x_t, t) * (self.vb_weight * self.num_timesteps)
        else:
            vb = torch.zeros_like(mse)
        weighted = mse
        if min_snr_gamma > 0:
            snr = self.snr(t)
            weighted = mse * torch.clamp(snr, max=min_snr_gamma) / snr
        return {"loss": weighted + vb, "mse": mse, "vb": vb}


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion over a subset ``use_timesteps`` of a base chain with ``base_betas``, keeping ᾱ at kept steps."""

    def __init__(self, use_timesteps, base_betas, **kwargs):
        betas, timestep_map = respaced_betas(base_betas, use_timesteps)
        self.use_timesteps = set(int(t) for t in timestep_map)
        self.original_num_steps = len(base_betas)
        super().__init__(betas, timestep_map=timestep_map, **kwargs)


def create_diffusion(T: int = 1000, schedule: str = "cosine", respacing: str = "",
                     model_var_type: str = "learned_range", loss_type: str = "hybrid",
                     vb_weight: float = 0.001, companding: str = "linear") -> GaussianDiffusion:
    """Build the diffusion from plain settings (the ``diffusion`` block of a run's config.json).

    ``respacing`` "" keeps all T steps; otherwise see :func:`space_timesteps`.
    """
    base = get_named_beta_schedule(schedule, T)
    kwargs = dict(model_var_type=model_var_type, loss_type=loss_type, vb_weight=vb_weight, companding=companding)
    if respacing in ("", None) or str(respacing) == str(T):
        if respacing not in ("", None):
            space_timesteps(T, respacing)  # validate anyway
        return GaussianDiffusion(base, **kwargs)
    return SpacedDiffusion(space_timesteps(T, respacing), base, **kwargs)


# -- Gaussian helpers (as in improved-diffusion/losses.py) -----------------------------
def mean_flat(x: Tensor) -> Tensor:
    """Mean over all but the batch dimension."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: Tensor, *, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-likelihood of data in [-1, 1] quantised to 256 bins under a Gaussian, in nats (elementwise)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))))

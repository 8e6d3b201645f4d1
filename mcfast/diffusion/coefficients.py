"""Step coefficients of every sampler: the one place their formulas live.

Each reverse step x_i → x_{i−1} of a (possibly respaced) chain is linear in the model's data
prediction x̂₀, the current sample x_i and, for multistep solvers, the previous step's x̂₀:

    x_{i−1} = c_x0·x̂₀ + c_xt·x_i + c_prev·x̂₀_prev + σ·z

- DDPM ancestral: the posterior q(x_{i−1} | x_i, x̂₀) (coefficients on ``GaussianDiffusion``).
- DDIM (Song et al. 2021) with stochasticity η: σ = η·√((1−ᾱ_prev)/(1−ᾱ))·√(1−ᾱ/ᾱ_prev), and
  ε' = (x_i − √ᾱ·x̂₀)/√(1−ᾱ) enters with √(1−ᾱ_prev−σ²).
- DPM-Solver++(2M) (Lu et al. 2022), data prediction, on the chain's own ᾱ: with α = √ᾱ,
  s = √(1−ᾱ), λ = log(α/s) and h = λ_{i−1} − λ_i,
  x_{i−1} = (s_{i−1}/s_i)·x_i − α_{i−1}·(e^{−h} − 1)·D, D = (1 + 1/2r)·x̂₀ − (1/2r)·x̂₀_prev,
  r = h_prev/h; first order (D = x̂₀) on the first step, on the step into the chain's first
  timestep (i = 1: with uniform timesteps its λ-jump dwarfs the previous one, r ≪ 1, and the
  extrapolation overshoots — diffusers' ``lower_order_final``) and on the last, where s_{i−1} = 0
  and the step returns D itself.

The eager samplers (``mcfast.diffusion.samplers``), the fused op's per-step coefficient table
(:func:`fused_step_row` / :func:`fused_step_table`: read by the eager fused dispatch
``mcfast.ops.guided``, the TorchScript ops sampler and the AOTInductor driver) and the exported
TorchScript loop all take their numbers from here, in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Columns of the fused op's (B, 9) coefficient table (csrc/guided_plan.h, docs/kernels.md).
FUSED_COLUMNS = ("x0_from_xt", "x0_from_eps", "mean_x0", "mean_xt", "logvar_min", "logvar_max", "noise_scale",
                 "ref_signal", "ref_noise")
X0_FROM_XT, X0_FROM_EPS, MEAN_X0, MEAN_XT, LOGVAR_MIN, LOGVAR_MAX, NOISE_SCALE, REF_SIGNAL, REF_NOISE = range(9)
NUM_COEFS = len(FUSED_COLUMNS)
# Methods whose update the fused op's table can state (linear in x̂₀ and x_t, one σ).
FUSED_METHODS = ("ddpm", "ddim")


@dataclass(frozen=True)
class LinearStep:
    """x_{i−1} = c_x0·x̂₀ + c_xt·x_i + c_prev·x̂₀_prev + sigma·z (z ~ N(0, I); sigma = 0: no noise)."""

    c_x0: float
    c_xt: float
    c_prev: float = 0.0
    sigma: float = 0.0


def alpha_bars(diffusion: Any, i: int) -> tuple[float, float]:
    """(ᾱ_i, ᾱ_prev_i) of chain index ``i`` (ᾱ_prev of index 0 is 1: the clean image)."""
    return float(diffusion.alphas_cumprod[i]), float(diffusion.alphas_cumprod_prev[i])


def ddim_sigma(abar: float, abar_prev: float, eta: float) -> float:
    """σ of a DDIM step with stochasticity η (η = 1: the DDPM posterior's σ)."""
    return eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar)) * math.sqrt(1.0 - abar / abar_prev)


def ddim_eps_coefficient(abar_prev: float, sigma: float) -> float:
    """√(1 − ᾱ_prev − σ²): the weight of the ε implied by x̂₀ in a DDIM step."""
    return math.sqrt(max(1.0 - abar_prev - sigma ** 2, 0.0))


def ddim_step_coefficients(diffusion: Any, i: int, eta: float) -> LinearStep:
    """DDIM as a linear step in (x̂₀, x_i): ε' = (x_i/√ᾱ − x̂₀)·√ᾱ/√(1−ᾱ), so c_x0 = √ᾱ_prev − b·√ᾱ/√(1−ᾱ)."""
    abar, abar_prev = alpha_bars(diffusion, i)
    sigma = ddim_sigma(abar, abar_prev, eta)
    b_eps = ddim_eps_coefficient(abar_prev, sigma)
    eps_per_xt = 1.0 / math.sqrt(1.0 - abar)               # ε' = eps_per_xt·x_i − eps_per_x0·x̂₀
    eps_per_x0 = math.sqrt(abar) / math.sqrt(1.0 - abar)
    return LinearStep(c_x0=math.sqrt(abar_prev) - b_eps * eps_per_x0, c_xt=b_eps * eps_per_xt,
                      sigma=sigma if i > 0 else 0.0)


def log_snr_half(abar: float) -> float:
    """λ = log(α/s) = ½·log(ᾱ/(1−ᾱ)); +inf for the clean image (ᾱ = 1)."""
    if abar >= 1.0:
        return math.inf
    return 0.5 * (math.log(abar) - math.log1p(-abar))


def dpmpp_2m_step_coefficients(diffusion: Any, i: int, has_previous: bool) -> LinearStep:
    """DPM-Solver++(2M) step from chain index ``i`` to i − 1; ``has_previous``: x̂₀ of index i + 1 is known.

    Second order needs the previous step (index i + 1), i > 1 and a finite λ_{i−1}; otherwise
    first order, which is DDIM with η = 0.
    """
    abar, abar_prev = alpha_bars(diffusion, i)
    alpha_prev = math.sqrt(abar_prev)
    s_i, s_prev = math.sqrt(1.0 - abar), math.sqrt(max(1.0 - abar_prev, 0.0))
    lam, lam_prev = log_snr_half(abar), log_snr_half(abar_prev)
    if math.isinf(lam_prev):
        return LinearStep(c_x0=alpha_prev, c_xt=0.0)  # s_{i−1} = 0: x_{i−1} = α_{i−1}·D with D = x̂₀
    h = lam_prev - lam
    c_xt = s_prev / s_i
    c_d = -alpha_prev * math.expm1(-h)                      # −α_{i−1}(e^{−h} − 1) > 0
    last_index = diffusion.num_timesteps - 1
    if not has_previous or i >= last_index or i == 1:
        return LinearStep(c_x0=c_d, c_xt=c_xt)
    lam_next = log_snr_half(float(diffusion.alphas_cumprod[i + 1]))
    r = (lam - lam_next) / h
    return LinearStep(c_x0=c_d * (1.0 + 0.5 / r), c_xt=c_xt, c_prev=-c_d * 0.5 / r)


def fused_step_row(diffusion: Any, i: int, method: str, eta: float) -> tuple[list[float], bool]:
    """The fused op's coefficient row of chain index ``i`` (columns :data:`FUSED_COLUMNS`), in float64,
    and whether σ comes from the learned v (DDPM with a learned-range variance).

    x̂₀ = x0_from_xt·x_i − x0_from_eps·ε; mean = mean_x0·x̂₀ + mean_xt·x_i; log σ² = logvar_min (or
    the v-interpolation to logvar_max); x' = mean + noise_scale·σ·z; the noised reference is
    ref_signal·y + ref_noise·ε_s. DDIM fits the same row: its update is linear in (x̂₀, x_i)
    (:func:`ddim_step_coefficients`).
    """
    if method not in FUSED_METHODS:
        raise ValueError(f"the fused step implements {', '.join(FUSED_METHODS)}, not {method!r}")
    abar_prev = float(diffusion.alphas_cumprod_prev[i])
    row = [0.0] * NUM_COEFS
    row[X0_FROM_XT] = float(diffusion.sqrt_recip_alphas_cumprod[i])
    row[X0_FROM_EPS] = float(diffusion.sqrt_recipm1_alphas_cumprod[i])
    row[REF_SIGNAL], row[REF_NOISE] = math.sqrt(abar_prev), math.sqrt(max(0.0, 1.0 - abar_prev))
    learned = False
    if method == "ddpm":
        row[MEAN_X0] = float(diffusion.posterior_mean_coef1[i])
        row[MEAN_XT] = float(diffusion.posterior_mean_coef2[i])
        var_type = diffusion.model_var_type
        if var_type == "learned_range":
            learned = True
            row[LOGVAR_MIN] = float(diffusion.posterior_log_variance_clipped[i])
            row[LOGVAR_MAX] = float(diffusion.log_betas[i])
        else:
            lv = (diffusion.fixed_large_log_variance if var_type == "fixed_large"
                  else diffusion.posterior_log_variance_clipped)
            row[LOGVAR_MIN] = row[LOGVAR_MAX] = float(lv[i])
        row[NOISE_SCALE] = 1.0 if i > 0 else 0.0
    else:
        step = ddim_step_coefficients(diffusion, i, eta)
        row[MEAN_X0], row[MEAN_XT] = step.c_x0, step.c_xt
        use_noise = step.sigma > 0
        row[LOGVAR_MIN] = row[LOGVAR_MAX] = 2.0 * math.log(step.sigma) if use_noise else 0.0
        row[NOISE_SCALE] = 1.0 if use_noise else 0.0
    return row, learned


def fused_step_table(diffusion: Any, method: str, eta: float) -> tuple[np.ndarray, bool]:
    """Every chain index's :func:`fused_step_row`: a (num_timesteps, 9) float64 array (row i = index i)
    and whether σ comes from the learned v."""
    rows = [fused_step_row(diffusion, i, method, eta)[0] for i in range(diffusion.num_timesteps)]
    learned = method == "ddpm" and diffusion.model_var_type == "learned_range"
    return np.asarray(rows, dtype=np.float64).reshape(-1, NUM_COEFS), learned

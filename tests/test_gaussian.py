import math

import numpy as np
import pytest
import torch

from mcfast.diffusion.gaussian import GaussianDiffusion, create_diffusion, normal_kl
from mcfast.errors import InputError

FLOAT64_NAMES = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                 "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"]


def test_coefficient_arrays_are_float64_and_timestep_map_identity():
    d = create_diffusion(100, "cosine")
    for name in FLOAT64_NAMES:
        arr = getattr(d, name)
        assert arr.dtype == np.float64 and arr.shape == (100,), name
    assert np.array_equal(d.timestep_map, np.arange(100))


def test_q_sample_mean_and_variance():
    d = create_diffusion(1000, "linear")
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1, 1, 1), 0.7)
    for step in (0, 300, 999):
        t = torch.full((x0.shape[0],), step, dtype=torch.long)
        xt = d.q_sample(x0, t, generator=g)
        abar = d.alphas_cumprod[step]
        assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.02)
        assert xt.var().item() == pytest.approx(1 - abar, rel=0.05, abs=2e-5)


def test_posterior_matches_gaussian_conditioning():
    d = create_diffusion(1000, "cosine")
    x0 = torch.tensor([[[[0.3]]], [[[-0.8]]]])
    xt = torch.tensor([[[[1.1]]], [[[0.2]]]])
    for step in (1, 17, 500, 998):
        t = torch.full((2,), step, dtype=torch.long)
        mean, var, log_var = d.q_posterior_mean_variance(x0, xt, t)
        a_prev, a_t = d.alphas_cumprod[step - 1], 1 - d.betas[step]
        # Bayes: prior q(x_{t-1}|x0) = N(√ᾱ_{t-1} x0, 1-ᾱ_{t-1}), likelihood q(x_t|x_{t-1}) = N(√α_t x_{t-1}, β_t).
        precision = 1 / (1 - a_prev) + a_t / d.betas[step]
        exp_var = 1 / precision
        exp_mean = exp_var * (math.sqrt(a_prev) * x0.double() / (1 - a_prev) + math.sqrt(a_t) * xt.double() / d.betas[step])
        torch.testing.assert_close(mean.double(), exp_mean, rtol=1e-5, atol=1e-6)
        assert var[0].item() == pytest.approx(exp_var, rel=1e-5)
        assert log_var[0].item() == pytest.approx(math.log(exp_var), rel=1e-5)


def test_xstart_eps_round_trip():
    d = create_diffusion(200, "linear")
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 50, 100, 199])
    xt = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.predict_xstart_from_eps(xt, t, eps), x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(d.predict_eps_from_xstart(xt, t[:], x0)[1:], eps[1:], atol=1e-3, rtol=1e-3)


def test_learned_range_variance_between_posterior_and_beta():
    d = create_diffusion(1000, "cosine")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 1, 4, 4, generator=g)
    t = torch.tensor([1, 10, 200, 700, 999])
    v = torch.rand(5, 1, 4, 4, generator=g) * 2 - 1
    out = d.p_mean_variance(torch.cat([torch.zeros_like(x), v], 1), x, t)
    lo = torch.tensor(d.posterior_variance[t.numpy()]).float().view(-1, 1, 1, 1)
    hi = torch.tensor(d.betas[t.numpy()]).float().view(-1, 1, 1, 1)
    assert torch.all(out["variance"] >= lo * (1 - 1e-5)) and torch.all(out["variance"] <= hi * (1 + 1e-5))
    ends = d.p_mean_variance(torch.cat([torch.zeros_like(x), torch.ones_like(x)], 1), x, t)
    torch.testing.assert_close(ends["variance"], hi.expand_as(x), rtol=1e-5, atol=0)
    ends = d.p_mean_variance(torch.cat([torch.zeros_like(x), -torch.ones_like(x)], 1), x, t)
    torch.testing.assert_close(ends["variance"], lo.expand_as(x), rtol=1e-5, atol=0)


def test_fixed_variances():
    small = create_diffusion(100, model_var_type="fixed_small", loss_type="simple")
    large = create_diffusion(100, model_var_type="fixed_large", loss_type="simple")
    x = torch.zeros(1, 1, 2, 2)
    t = torch.tensor([40])
    assert small.p_mean_variance(torch.zeros_like(x), x, t)["variance"][0, 0, 0, 0].item() == pytest.approx(
        small.posterior_variance[40], rel=1e-5)
    assert large.p_mean_variance(torch.zeros_like(x), x, t)["variance"][0, 0, 0, 0].item() == pytest.approx(
        large.betas[40], rel=1e-5)


def test_vlb_term_equals_direct_gaussian_kl():
    d = create_diffusion(100, "cosine")
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(3, 1, 6, 6, generator=g) * 2 - 1
    t = torch.tensor([5, 50, 99])
    xt = d.q_sample(x0, t, generator=g)
    out_raw = torch.randn(3, 2, 6, 6, generator=g).clamp(-1, 1)
    vb = d.vb_terms_bpd(out_raw, x0, xt, t)
    # Direct: q posterior in closed form, p from ε̂ and v by hand, KL via torch.distributions.
    td = t.numpy()
    c = lambda a: torch.tensor(a[td]).view(-1, 1, 1, 1)
    x0d, xtd, eps, v = x0.double(), xt.double(), out_raw[:, :1].double(), out_raw[:, 1:].double()
    q_mean = c(d.posterior_mean_coef1) * x0d + c(d.posterior_mean_coef2) * xtd
    q_std = c(d.posterior_variance).sqrt()
    x0_hat = c(d.sqrt_recip_alphas_cumprod) * xtd - c(d.sqrt_recipm1_alphas_cumprod) * eps
    p_mean = c(d.posterior_mean_coef1) * x0_hat + c(d.posterior_mean_coef2) * xtd
    frac = (v + 1) / 2
    p_logvar = frac * torch.log(c(d.betas)) + (1 - frac) * c(d.posterior_log_variance_clipped)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(q_mean, q_std),
                                           torch.distributions.Normal(p_mean, (0.5 * p_logvar).exp()))
    expected = kl.mean(dim=(1, 2, 3)) / math.log(2)
    torch.testing.assert_close(vb.double(), expected, rtol=2e-3, atol=1e-5)


def test_decoder_nll_at_t0_is_positive_and_small_for_good_mean():
    d = create_diffusion(100, "cosine")
    x0 = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    t = torch.zeros(1, dtype=torch.long)
    xt = d.q_sample(x0, t, torch.zeros_like(x0))
    eps_true = torch.zeros_like(x0)
    good = d.vb_terms_bpd(torch.cat([eps_true, -torch.ones_like(x0)], 1), x0, xt, t)
    bad = d.vb_terms_bpd(torch.cat([eps_true + 3, -torch.ones_like(x0)], 1), x0, xt, t)
    assert 0 < good.item() < bad.item()


def test_hybrid_loss_stops_gradient_of_vb_into_mean():
    d = create_diffusion(50, "cosine", loss_type="hybrid")
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    out_param = torch.zeros(2, 2, 4, 4, requires_grad=True)
    losses = d.training_losses(lambda x, t: out_param, x0, torch.tensor([3, 30]), generator=g)
    losses["vb"].sum().backward()
    assert out_param.grad[:, :1].abs().max() == 0 and out_param.grad[:, 1:].abs().max() > 0
    assert torch.allclose(losses["loss"], losses["mse"] + losses["vb"])


def test_model_sees_original_timesteps_when_respaced():
    d = create_diffusion(1000, "linear", respacing="ddim10", loss_type="simple")
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    d.training_losses(model, torch.zeros(2, 1, 4, 4), torch.tensor([0, 9]))
    assert seen[0].tolist() == [0, 900]


def test_bad_settings_raise_input_error():
    with pytest.raises(InputError, match="'learned'"):
        create_diffusion(10, model_var_type="learned")
    with pytest.raises(InputError, match="'l2'"):
        create_diffusion(10, loss_type="l2")
    d = create_diffusion(10)
    with pytest.raises(InputError, match="2 output channels"):
        d.p_mean_variance(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.tensor([1]))

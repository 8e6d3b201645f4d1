import pytest
import torch

from mcfast.diffusion.gaussian import create_diffusion
from mcfast.diffusion.samplers import sample
from mcfast.errors import InputError


pytestmark = pytest.mark.usefixtures("one_thread")


def oracle_model(diffusion, x0):
    """A 'network' that knows the single data point x0 and returns the exact ε (and v = 0)."""
    abar = torch.tensor(diffusion.alphas_cumprod).float()
    index_of = {int(t): i for i, t in enumerate(diffusion.timestep_map)}

    def model(x, t):
        i = torch.tensor([index_of[int(s)] for s in t])
        a = abar[i].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], 1)
    return model


def noisy_model(x, t):
    return torch.cat([0.5 * x + 0.001 * t.view(-1, 1, 1, 1).float(), torch.tanh(x)], 1)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_sampling_is_deterministic_per_seed(method):
    d = create_diffusion(1000, "cosine", respacing="20")
    run = lambda seed: sample(noisy_model, d, (2, 1, 8, 8), method=method, eta=0.5,
                              generator=torch.Generator().manual_seed(seed), progress=False)
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == (2, 1, 8, 8) and torch.isfinite(a).all()


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_oracle_model_recovers_data_point(method):
    d = create_diffusion(1000, "cosine", respacing="50")
    x0 = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)
    out = sample(oracle_model(d, x0), d, (1, 1, 4, 4), method=method,
                 generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(out, x0, atol=2e-3, rtol=0)


def test_ddim_eta0_ignores_generator_given_noise():
    d = create_diffusion(100, "linear", respacing="ddim10")
    noise = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    a = sample(noisy_model, d, noise.shape, method="ddim", noise=noise,
               generator=torch.Generator().manual_seed(1), progress=False)
    b = sample(noisy_model, d, noise.shape, method="ddim", noise=noise,
               generator=torch.Generator().manual_seed(2), progress=False)
    assert torch.equal(a, b)


def test_clipping_keeps_x0_prediction_in_range():
    d = create_diffusion(100, "linear", respacing="10")
    big = lambda x, t: torch.cat([-50 * torch.ones_like(x), torch.zeros_like(x)], 1)
    out = sample(big, d, (1, 1, 4, 4), method="ddim", noise=torch.zeros(1, 1, 4, 4), progress=False)
    assert out.abs().max() <= 1.0 + 1e-5
    unclipped = sample(big, d, (1, 1, 4, 4), method="ddim", noise=torch.zeros(1, 1, 4, 4),
                       clip_denoised=False, progress=False)
    assert unclipped.abs().max() > 2


def test_intermediates_and_model_called_with_original_timesteps():
    d = create_diffusion(1000, "linear", respacing="ddim5")
    seen = []

    def model(x, t):
        seen.append(int(t[0]))
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    x, inter = sample(model, d, (1, 1, 4, 4), generator=torch.Generator().manual_seed(0),
                      progress=False, return_intermediates=True)
    assert seen == [800, 600, 400, 200, 0]
    assert len(inter) == 6 and torch.equal(inter[-1], x)


def test_deterministic_below_all_steps_is_ddim_eta0():
    d = create_diffusion(1000, "cosine", respacing="10")
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    run = lambda **kw: sample(noisy_model, d, noise.shape, noise=noise, progress=False,
                              generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(run(method="ddpm", deterministic_below=1000), run(method="ddim", eta=0.0))
    assert torch.equal(run(method="ddim", eta=0.7, deterministic_below=1000), run(method="ddim", eta=0.0))
    assert not torch.equal(run(method="ddpm"), run(method="ddim", eta=0.0))


def test_deterministic_below_keeps_the_stochastic_steps_above_it():
    """Above the threshold the chain is the plain ancestral one (same noise draws); from the first step
    below it on, each step is the DDIM η = 0 step of the x it was given, and the output ignores the
    generator once the stochastic part is fixed."""
    from mcfast.diffusion.samplers import ddim_step

    d = create_diffusion(1000, "cosine", respacing="10")   # timesteps 0, 100, ..., 900
    noise = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    run = lambda **kw: sample(noisy_model, d, noise.shape, noise=noise, progress=False,
                              generator=torch.Generator().manual_seed(6), return_intermediates=True, **kw)
    _, plain = run(method="ddpm")
    out, mixed = run(method="ddpm", deterministic_below=250)   # steps at t = 200, 100, 0 are deterministic
    for k in range(8):                                           # x_T and the steps at t = 900 ... 300
        assert torch.equal(mixed[k], plain[k])
    assert not torch.equal(mixed[8], plain[8])
    x = mixed[7]
    for i in (2, 1, 0):
        t = torch.full((1,), int(d.timestep_map[i]))
        x, _ = ddim_step(d, noisy_model(x, t).float(), x, i, True, 0.0, None)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="deterministic_below"):
        sample(noisy_model, d, noise.shape, noise=noise, progress=False, deterministic_below=1001)


def test_deterministic_below_reaches_the_fused_path_as_ddim():
    d = create_diffusion(100, "cosine", respacing="4")   # timesteps 0, 33, 66, 99 (approximately)
    g = RecordingGuidance()
    zeros = lambda x, t: torch.zeros(x.shape[0], 2, *x.shape[2:])
    sample(zeros, d, (1, 1, 2, 2), guidance=g, generator=torch.Generator().manual_seed(0), progress=False,
           deterministic_below=int(d.timestep_map[2]))
    assert [c for c in g.calls if c[0] == "fused"] == [("fused", 3, "ddpm"), ("fused", 2, "ddpm"),
                                                      ("fused", 1, "ddim"), ("fused", 0, "ddim")]


class RecordingGuidance:
    def __init__(self, fuse_at=()):
        self.calls = []
        self.fuse_at = set(fuse_at)

    def fused_step(self, x_t, model_output, i, method, eta, clip_denoised, generator):
        self.calls.append(("fused", i, method))
        return torch.full_like(x_t, 0.25) if i in self.fuse_at else None

    def correct(self, x_prev, i):
        self.calls.append(("correct", i))
        return x_prev * 0 + i


def test_guidance_protocol_plain_and_fused_paths():
    d = create_diffusion(100, "cosine", respacing="4")
    g = RecordingGuidance(fuse_at={0})
    seen_inputs = []

    def model(x, t):
        seen_inputs.append(x.clone())
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    out = sample(model, d, (1, 1, 2, 2), guidance=g, generator=torch.Generator().manual_seed(0), progress=False)
    assert g.calls == [("fused", 3, "ddpm"), ("correct", 3), ("fused", 2, "ddpm"), ("correct", 2),
                       ("fused", 1, "ddpm"), ("correct", 1), ("fused", 0, "ddpm")]
    # The corrected x feeds the next model call; the fused result is the output.
    assert torch.equal(seen_inputs[1], torch.full((1, 1, 2, 2), 3.0))
    assert torch.equal(out, torch.full((1, 1, 2, 2), 0.25))


def test_bad_arguments():
    d = create_diffusion(10)
    with pytest.raises(InputError, match="'plms'"):
        sample(noisy_model, d, (1, 1, 2, 2), method="plms", progress=False)
    with pytest.raises(InputError, match="shape"):
        sample(noisy_model, d, (1, 1, 2, 2), noise=torch.zeros(1, 1, 3, 3), progress=False)


def test_sample_command_model_wrapper_precisions():
    from mcfast.models.inference import make_model_fn
    from mcfast.models.unet import UNetModel

    torch.manual_seed(0)
    model = UNetModel(image_size=16, model_channels=16, out_channels=2, num_res_blocks=1,
                      attention_resolutions=(2,), channel_mult=(1, 2), num_heads=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    x, t = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 900])
    with torch.no_grad():
        ref = make_model_fn(model, torch.device("cpu"), "fp32", False)(x, t)
        fast = make_model_fn(model, torch.device("cpu"), "bf16", True)(x, t)
    assert fast.dtype == torch.float32 and (fast - ref).norm() / ref.norm() < 0.05
    with pytest.raises(InputError, match="fp16"):
        make_model_fn(model, torch.device("cpu"), "fp16", False)

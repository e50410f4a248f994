"""The diffusion family: the VE-SDE against Song et al.'s closed forms and the issue's reference values, the
Gaussian process against MONAI's schedulers, and every sampler against an analytic case.

Analytic case: data x0 ~ N(mu, s^2) independently per pixel. Noised by any of the processes, the data stay
Gaussian, so the exact score / noise / objective of the noised data is known in closed form; driven by it, a
sampler must return samples whose mean and standard deviation are mu and s (within Monte-Carlo error and the
sampler's own discretisation error, which shrinks with the steps).
"""

import math

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from petsynth.diffusion import VESDE, BrownianBridge, GaussianDiffusion, NoiseProcess, samplers
from petsynth.diffusion.gaussian import SCHEDULES

MU, S = 1.5, 0.5
SHAPE = (64, 1, 16, 16)  # 16384 samples: the standard error of the mean is S / 128 ~ 0.004


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def check_moments(x, mean_tol, std_tol):
    assert torch.isfinite(x).all()
    assert abs(float(x.mean()) - MU) < mean_tol, float(x.mean())
    assert abs(float(x.std()) - S) < std_tol, float(x.std())


# --- the VE-SDE ----------------------------------------------------------------------------------------------
def test_vesde_reference_values():
    sde = VESDE(sigma_min=0.01, sigma_max=348.0, num_scales=1000)
    assert float(sde.sigma(torch.tensor(0.5))) == pytest.approx(1.865476, abs=1e-6)
    t = torch.tensor([0.1, 0.5, 0.9])
    torch.testing.assert_close(sde.diffusion(t) / sde.sigma(t), torch.full((3,), 4.573264), atol=1e-6, rtol=0)
    d = sde.discrete_sigmas
    assert d.shape == (1000,) and float(d[0]) == pytest.approx(0.01) and float(d[-1]) == pytest.approx(348.0)
    assert float((d[-1] ** 2 - d[-2] ** 2).sqrt()) == pytest.approx(50.0903, abs=1e-4)
    ratios = d[1:] / d[:-1]  # geometric: one ratio, (sigma_max / sigma_min)^(1 / 999)
    torch.testing.assert_close(ratios, torch.full((999,), 34800.0 ** (1 / 999), dtype=torch.float64))
    # sigma(i / (N - 1)) is the i-th discrete scale; the sampler grid with eps = 0 visits them in reverse
    torch.testing.assert_close(sde.sigma(torch.arange(1000, dtype=torch.float64) / 999), d)
    torch.testing.assert_close(VESDE(0.01, 348.0, 1000, eps=0.0).sigma(VESDE(eps=0.0).timesteps(1000)), d.flip(0))
    assert isinstance(sde, NoiseProcess)


def test_vesde_prior_and_marginal():
    sde = VESDE(0.01, 348.0, 1000)
    prior = sde.prior_sample((200_000,), generator=gen(1))
    assert abs(float(prior.std()) / 348.0 - 1) < 0.01 and abs(float(prior.mean())) < 348.0 * 0.01
    x0 = torch.full((100_000, 1), 2.0, dtype=torch.float64)
    x_t, target = sde.q_sample(x0, 0.5, generator=gen(2))
    sigma = 1.865476
    assert abs(float(x_t.mean()) - 2.0) < 5 * sigma / math.sqrt(1e5)
    assert abs(float(x_t.std()) / sigma - 1) < 0.01
    torch.testing.assert_close(target, -(x_t - x0) / sigma**2, rtol=1e-5, atol=1e-9)  # -z / sigma
    torch.testing.assert_close(sde.predict_x0(x_t, 0.5, target), x0)  # Tweedie with the kernel's score
    t = sde.training_times(10_000, generator=gen(3))
    assert float(t.min()) >= sde.eps and float(t.max()) <= 1.0 and abs(float(t.mean()) - 0.5) < 0.01


def gaussian_score(x, sigma):
    """Score of N(MU, S^2) data noised by N(0, sigma^2): -(x - MU) / (S^2 + sigma^2)."""
    return -(x - MU) / (S**2 + sigma.view(-1, *([1] * (x.ndim - 1))) ** 2)


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma):
        self.calls += 1
        assert sigma.shape == (x.shape[0],)
        return self.fn(x, sigma)


@pytest.mark.parametrize("name, kwargs, nfe, std_tol", [
    ("pc", dict(steps=1000, snr=0.16, corrector_steps=1), 1000 + 999, 0.02),
    ("pc", dict(steps=300, snr=0.16, corrector_steps=2), 300 + 2 * 299, 0.02),
    ("reverse_diffusion", dict(steps=1000), 1000, 0.02),
    ("langevin", dict(steps=1000, snr=0.16, corrector_steps=1), 1000 + 1, 0.02),
    ("ode", dict(steps=100), 2 * 100 - 1, 0.02),
    ("ode", dict(steps=100, rho=None), 2 * 100 - 1, 0.02),
])
def test_ve_samplers_with_the_exact_score_sample_the_data(name, kwargs, nfe, std_tol):
    sde = VESDE(sigma_min=0.01, sigma_max=348.0, num_scales=1000)
    score_fn, info = Counting(gaussian_score), {}
    x = samplers.SAMPLERS[name](sde, score_fn, SHAPE, generator=gen(4), info=info, **kwargs)
    assert x.shape == SHAPE
    check_moments(x, mean_tol=0.02, std_tol=std_tol)
    assert info["nfe"] == score_fn.calls == nfe and info["steps"] == kwargs["steps"]


def test_ode_is_deterministic_and_converges_to_the_exact_flow():
    """For Gaussian data the probability-flow ODE is linear: x(0) = MU + (x_T - MU) S / sqrt(S^2 + sigma_max^2)."""
    sde = VESDE(0.01, 50.0, 1000, eps=0.0)
    x_T = torch.randn(8, 1, 4, 4, generator=gen(5), dtype=torch.float64) * 50.0
    exact = MU + (x_T - MU) * S / math.sqrt(S**2 + 50.0**2)
    errors = [float((samplers.ode(sde, gaussian_score, x_T, n) - exact).abs().max()) for n in (25, 50, 100)]
    assert errors[2] < 5e-3 and errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3  # second order
    torch.testing.assert_close(samplers.ode(sde, gaussian_score, x_T, 30), samplers.ode(sde, gaussian_score, x_T, 30))


def test_pc_starts_from_the_wide_prior():
    """The prior is N(0, sigma_max^2): a sampler's first network call sees noise of that size."""
    sde = VESDE(0.01, 348.0, 1000)
    seen = []
    samplers.pc(sde, gaussian_score, (4, 1, 64, 64), steps=5, callback=seen.append, generator=gen(6))
    assert seen[0]["t"] == pytest.approx(348.0) and abs(float(seen[0]["x"].std()) / 348.0 - 1) < 0.05
    assert [round(c["t"], 6) for c in seen] == [round(float(v), 6) for v in sde.sigma(sde.timesteps(5))]


def test_predictor_and_corrector_steps():
    x = torch.zeros(2, 1, 100, 100)
    score = torch.zeros_like(x)
    # zero score: the predictor only adds noise of std sqrt(sigma^2 - sigma_next^2) (50.0903 on the top step)
    d = VESDE().discrete_sigmas
    top, below = float(d[-1]), float(d[-2])
    out, mean = samplers.reverse_diffusion_step(x, score, top, below, gen(7))
    assert torch.equal(mean, x) and abs(float(out.std()) - 50.0903) < 0.02 * 50.0903
    # Langevin on N(0, 1) with the exact score -x: step size 2 (snr ||z|| / ||x||)^2 per sample
    x = torch.randn(3, 1, 50, 50, generator=gen(8))
    x[1] *= 10  # a sample ten times off: its step is 100 times larger, not the batch mean's
    out, mean = samplers.langevin_step(x, -x, snr=0.1, generator=gen(9))
    z = torch.randn(x.shape, generator=gen(9))
    eps = 2 * (0.1 * z.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)) ** 2
    torch.testing.assert_close(mean, x - eps.view(-1, 1, 1, 1) * x)
    torch.testing.assert_close(out, mean + (2 * eps).sqrt().view(-1, 1, 1, 1) * z)
    zero = torch.zeros_like(x)  # an untrained network's score: no step, not an infinite one
    out, mean = samplers.langevin_step(x, zero, snr=0.1, generator=gen(9))
    assert torch.equal(out, x) and torch.equal(mean, x)


# --- the Gaussian process and DDIM ---------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_gaussian_schedules_and_marginal_match_monai(schedule):
    ours = GaussianDiffusion(1000, schedule, 0.0015, 0.0195)
    args = {} if schedule == "cosine" else {"beta_start": 0.0015, "beta_end": 0.0195}
    ref = DDPMScheduler(num_train_timesteps=1000, schedule=schedule, **args)
    torch.testing.assert_close(ours.betas, ref.betas, rtol=0, atol=0)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=0)
    x0, noise = torch.randn(4, 3, 8, 8, generator=gen(10)), torch.randn(4, 3, 8, 8, generator=gen(11))
    t = torch.tensor([0, 10, 500, 999])
    x_t, target = ours.q_sample(x0, t, noise)
    torch.testing.assert_close(x_t, ref.add_noise(x0, noise, t), rtol=0, atol=0)
    assert torch.equal(target, noise)
    x_t64, _ = ours.q_sample(x0.double(), t, noise.double())  # float64: abar_999 of the cosine schedule is ~1e-8
    torch.testing.assert_close(ours.predict_x0(x_t64, t, noise.double()), x0.double())
    abar = ref.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(ours.score(x_t, t, noise), -noise / (1 - abar).sqrt())
    assert isinstance(ours, NoiseProcess)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("steps", [7, 50])
def test_ddim_matches_monai_ddim_scheduler(eta, steps):
    """Our DDIM against MONAI's DDIMScheduler.step on the DDIM paper's grid, same model, same noise."""
    process = GaussianDiffusion(1000, "scaled_linear_beta", 0.0015, 0.0195)
    weight = torch.randn(1, 2, 1, 1, generator=gen(12))

    def model_fn(x, t):  # an arbitrary smooth "network" of x and t
        return torch.tanh(x * weight + t.view(-1, 1, 1, 1) / 1000.0)

    x_T = torch.randn(3, 2, 8, 8, generator=gen(13))
    ours = samplers.ddim(process, model_fn, x_T, steps, eta=eta, generator=gen(14))
    sched = DDIMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015,
                          beta_end=0.0195, clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(steps)
    x, g = x_T, gen(14)
    for t in (torch.arange(steps - 1, -1, -1) * (1000 // steps)).tolist():
        x, _ = sched.step(model_fn(x, torch.full((3,), t)), t, x, eta=eta, generator=g)
    torch.testing.assert_close(ours, x, rtol=1e-6, atol=1e-6)
    assert process.timesteps(7).tolist() == [6 * 142, 5 * 142, 4 * 142, 3 * 142, 2 * 142, 142, 0]


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("schedule", ["scaled_linear_beta", "linear_beta"])
def test_ddim_with_the_exact_noise_samples_the_data(eta, schedule):
    process = GaussianDiffusion(1000, schedule, *((0.0015, 0.0195) if schedule == "scaled_linear_beta" else (1e-4, 0.02)))
    abar = process.alphas_cumprod.double()

    def eps_fn(x, t):  # E[eps | x_t] for N(MU, S^2) data
        a = abar[t].view(-1, 1, 1, 1)
        x0 = MU + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (x - a.sqrt() * MU)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    a_T = abar[999]  # start from the exact marginal at t = 999 (the prior N(0, I) is off by sqrt(abar_T) MU)
    x_T = a_T.sqrt() * MU + (a_T * S**2 + 1 - a_T).sqrt() * torch.randn(SHAPE, generator=gen(15), dtype=torch.float64)
    info = {}
    x = samplers.ddim(process, eps_fn, x_T, 1000, eta=eta, generator=gen(16), info=info)
    check_moments(x, mean_tol=0.02, std_tol=0.02)
    assert info == {"sampler": "ddim", "steps": 1000, "nfe": 1000}


def test_ddim_with_an_oracle_recovers_x0_in_few_steps():
    process = GaussianDiffusion(1000)
    x0 = torch.rand(2, 1, 8, 8, generator=gen(17)) * 2 - 1
    abar = process.alphas_cumprod

    def oracle(x_t, t):  # the exact noise of x_t for this x0
        a = abar[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    for steps in (50, 7, 1):
        out = samplers.ddim(process, oracle, (2, 1, 8, 8), steps, generator=gen(18))
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


# --- the bridge ----------------------------------------------------------------------------------------------
def test_bridge_samplers_with_the_bayes_denoiser_sample_the_data():
    """x0 ~ N(MU, S^2), y fixed: E[x0 | x_t, y] is linear; the stochastic sampler (Algorithm 2) returns draws
    with the data's mean and spread when it visits every step (skips plug in x0_hat for x0 and lose spread:
    std 0.32 at 10 steps, 0.46 at 100; the last x0_hat itself is 0.5 % narrow). The deterministic one maps
    its one fixed start y to one point, near MU (within 0.03 for this spread)."""
    T, yv = 1000, -0.5
    b = BrownianBridge(T)
    m, d = b.m_t, b.variance_t

    def bayes(x_t, t):  # the "grad" objective x_t - E[x0 | x_t, y]
        mt, dt = m[t].view(-1, 1, 1, 1), d[t].view(-1, 1, 1, 1)
        gain = (1 - mt) * S**2 / ((1 - mt) ** 2 * S**2 + dt)
        return x_t - (MU + gain * (x_t - mt * yv - (1 - mt) * MU))

    y = torch.full(SHAPE, yv, dtype=torch.float64)
    info = {}
    x = samplers.bridge_stochastic(b, Counting(bayes), y, 1000, generator=gen(19), info=info)
    check_moments(x, mean_tol=0.02, std_tol=0.02)
    assert info == {"sampler": "bridge", "steps": 1000, "nfe": 1000}
    det = samplers.bridge_deterministic(b, bayes, y, 100)
    assert float((det - MU).abs().max()) < 0.03 and float(det.std()) < 1e-6


def test_samplers_refuse_the_wrong_process():
    with pytest.raises(TypeError, match="VESDE"):
        samplers.pc(GaussianDiffusion(), gaussian_score, (1, 1, 2, 2), steps=2)
    with pytest.raises(TypeError, match="GaussianDiffusion"):
        samplers.ddim(VESDE(), gaussian_score, (1, 1, 2, 2), 2)
    with pytest.raises(TypeError, match="BrownianBridge"):
        samplers.bridge(VESDE(), gaussian_score, torch.zeros(1, 1, 2, 2), 2)
    with pytest.raises(ValueError, match="snr"):
        samplers.pc(VESDE(), gaussian_score, (1, 1, 2, 2), steps=2, snr=0.0)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError):
            samplers.ode(VESDE(), gaussian_score, (1, 1, 2, 2), bad)

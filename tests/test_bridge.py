"""Brownian-bridge process and samplers against closed forms, Gaussian conditioning and Monte Carlo."""

import math

import numpy as np
import pytest
import torch

from petsynth.diffusion import BrownianBridge, bridge_step, samplers

OBJECTIVES = ("grad", "noise", "ysubx")


# -- independent references (numpy, written from the CPDM paper / public BBDM schedule) -------------------
def ref_m(T, mt_type="linear"):
    if mt_type == "linear":
        return np.linspace(0.001, 0.999, T)
    u = np.arange(T) / T
    u[0] = 0.0005
    return 0.5 * np.sin(np.pi * (u - 0.5)) + 0.5


def ref_delta(m, s):
    return 2.0 * s * (m - m**2)


def oracle(bridge, x0, y, objective, T=None, mt_type="linear", s=1.0):
    """model_fn returning the exact objective for the known x0, whatever x_t it is given."""
    m = torch.as_tensor(ref_m(T or bridge.num_timesteps, mt_type), dtype=torch.float64)
    d = ref_delta(m, s)

    def fn(x_t, t):
        assert t.dtype == torch.long and t.shape == (x_t.shape[0],)
        mt = m[t].to(x_t.dtype).view(-1, 1, 1, 1)
        dt = d[t].to(x_t.dtype).view(-1, 1, 1, 1)
        if objective == "grad":
            return x_t - x0  # m_t (y - x0) + sqrt(delta_t) eps with eps implied by x_t
        if objective == "noise":
            return (x_t - (1 - mt) * x0 - mt * y) / dt.sqrt()
        return y - x0

    return fn


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- schedule -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mt_type", ["linear", "sin"])
@pytest.mark.parametrize("T", [2, 10, 1000])
def test_schedule_matches_reference(mt_type, T):
    b = BrownianBridge(T, mt_type=mt_type, max_var=0.7)
    m = b.m_t.numpy()
    assert b.m_t.shape == (T,) and b.variance_t.shape == (T,)
    np.testing.assert_allclose(m, ref_m(T, mt_type), rtol=1e-12, atol=1e-15)
    assert np.all(np.diff(m) > 0) and m[0] > 0 and m[-1] < 1
    np.testing.assert_allclose(b.variance_t.numpy(), 2 * 0.7 * (m - m**2), rtol=1e-12)


def test_schedule_endpoints():
    lin = BrownianBridge(1000).m_t
    assert float(lin[0]) == pytest.approx(0.001) and float(lin[-1]) == pytest.approx(0.999)
    sin = BrownianBridge(1000, mt_type="sin").m_t
    # 0.5 sin(pi (u - 1/2)) + 0.5 = 0.5 - 0.5 cos(pi u): u0 = 0.0005, u_{T-1} = 1 - 1/T
    assert float(sin[0]) == pytest.approx(0.5 - 0.5 * math.cos(math.pi * 0.0005), rel=1e-9)
    assert float(sin[-1]) == pytest.approx(0.5 + 0.5 * math.cos(math.pi / 1000), rel=1e-12)


@pytest.mark.parametrize("s", [0.25, 1.0, 2.0])
def test_variance_peaks_at_half(s):
    b = BrownianBridge(1001, max_var=s)  # linspace(0.001, 0.999, 1001) contains m = 0.5 at index 500
    v = b.variance_t
    assert int(v.argmax()) == 500 and float(b.m_t[500]) == pytest.approx(0.5)
    assert float(v.max()) == pytest.approx(s / 2, rel=1e-12)
    assert float(v[0]) == pytest.approx(2 * s * 0.001 * 0.999)


# -- forward process ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_q_sample_given_noise_and_predict_x0(objective):
    b = BrownianBridge(100, mt_type="sin", max_var=0.5, objective=objective)
    x0, y, eps = rand(3, 2, 4, 4, seed=1), rand(3, 2, 4, 4, seed=2), rand(3, 2, 4, 4, seed=3)
    t = torch.tensor([0, 37, 99])
    x_t, target = b.q_sample(x0, t, noise=eps, y=y)
    m = torch.as_tensor(ref_m(100, "sin"))[t].view(-1, 1, 1, 1)
    d = ref_delta(m, 0.5)
    torch.testing.assert_close(x_t, (1 - m) * x0 + m * y + d.sqrt() * eps)
    expected = {"grad": m * (y - x0) + d.sqrt() * eps, "noise": eps, "ysubx": y - x0}[objective]
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(b.predict_x0(x_t, t, target, y=y), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(b.predict_noise(x_t, t, x0, y=y), eps)
    # per-sample t: the same as doing each sample alone with an int t
    for i in range(3):
        xi, _ = b.q_sample(x0[i:i + 1], int(t[i]), noise=eps[i:i + 1], y=y[i:i + 1])
        torch.testing.assert_close(xi, x_t[i:i + 1])


def test_q_sample_moments():
    b = BrownianBridge(1000, max_var=1.3)
    x0, y = rand(4, 1, 3, 3, seed=4), rand(4, 1, 3, 3, seed=5)
    t = torch.tensor([0, 250, 500, 999])
    n = 20000
    g = torch.Generator().manual_seed(6)
    x_t, _ = b.q_sample(x0.repeat(n, 1, 1, 1), t.repeat(n), y=y.repeat(n, 1, 1, 1), generator=g)
    x_t = x_t.view(n, 4, 1, 3, 3)
    m = torch.as_tensor(ref_m(1000))[t].view(-1, 1, 1, 1)
    d = ref_delta(m, 1.3)
    se = (d / n).sqrt()
    assert ((x_t.mean(0) - ((1 - m) * x0 + m * y)).abs() < 5 * se).all()
    rel = x_t.var(0) / d - 1
    assert (rel.abs() < 5 * math.sqrt(2 / n)).all()


def test_dtype_and_shape_preserved():
    b = BrownianBridge(50)
    x0, y = torch.zeros(2, 3, 5, 5), torch.ones(2, 3, 5, 5)
    x_t, target = b.q_sample(x0, torch.tensor([3, 40]), y=y)
    assert x_t.dtype == torch.float32 and x_t.shape == x0.shape and target.shape == x0.shape
    with pytest.raises(ValueError):
        b.q_sample(x0, torch.tensor([3, 50]), y=y)
    with pytest.raises(ValueError):
        b.q_sample(x0, torch.tensor([3, 4, 5]), y=y)


# -- posterior ----------------------------------------------------------------------------------------------
def conditioned(m_t, m_s, d_t_paper, s):
    """Posterior of x_s given x_t from the paper's transition (eq. 2) and Bayes' rule.

    x_s ~ N(mu_s, delta_s); x_t | x_s ~ N(a x_s + (m_t - a m_s) y, delta_{t|s}), a = (1-m_t)/(1-m_s),
    delta_{t|s} = delta_t - delta_s a^2. Returns (k, var, var_t) with E[x_s | x_t] = mu_s + k (x_t - E x_t).
    """
    d_s = ref_delta(m_s, s)
    a = (1 - m_t) / (1 - m_s)
    d_ts = d_t_paper - d_s * a**2
    var_t = a**2 * d_s + d_ts
    cov = a * d_s
    return cov / var_t, d_s - cov**2 / var_t, var_t


@pytest.mark.parametrize("mt_type", ["linear", "sin"])
@pytest.mark.parametrize("pairs", ["adjacent", "skip"])
def test_posterior_is_gaussian_conditioning(mt_type, pairs):
    T, s = 1000, 0.8
    b = BrownianBridge(T, mt_type=mt_type, max_var=s)
    t = torch.tensor([1, 2, 10, 300, 500, 998, 999])
    sv = t - 1 if pairs == "adjacent" else torch.tensor([0, 0, 3, 100, 499, 1, 500])
    m = ref_m(T, mt_type)
    m_t, m_s = m[t.numpy()], m[sv.numpy()]
    k, var, var_t = conditioned(m_t, m_s, ref_delta(m_t, s), s)
    np.testing.assert_allclose(var_t, ref_delta(m_t, s), rtol=1e-9)  # the transition keeps the marginals

    x0, y, x_t = rand(7, 2, 3, 3, seed=7), rand(7, 2, 3, 3, seed=8), rand(7, 2, 3, 3, seed=9)
    mean, v = b.q_posterior(x_t, x0, y, t, sv)
    sh = (-1, 1, 1, 1)
    mt, ms, kk = (torch.as_tensor(z).view(sh) for z in (m_t, m_s, k))
    expected = (1 - ms) * x0 + ms * y + kk * (x_t - ((1 - mt) * x0 + mt * y))
    torch.testing.assert_close(mean, expected, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(v.flatten(), torch.as_tensor(var), rtol=1e-6, atol=1e-15)


def test_posterior_coefficients_paper_and_closed_form():
    s = 1.5
    b = BrownianBridge(1000, max_var=s)
    t = torch.arange(1, 1000)
    c = b.posterior_coefficients(t, t - 1)
    m = ref_m(1000)
    m_t, m_p = m[1:], m[:-1]
    d_t, d_p = ref_delta(m_t, s), ref_delta(m_p, s)
    d_tp = d_t - d_p * (1 - m_t) ** 2 / (1 - m_p) ** 2
    # the paper's eq. 3 typed in literally
    paper = dict(
        c_xt=d_p / d_t * (1 - m_t) / (1 - m_p) + d_tp / d_t * (1 - m_p),
        c_yt=m_p - m_t * (1 - m_t) / (1 - m_p) * d_p / d_t,
        c_eps=(1 - m_p) * d_tp / d_t,
        variance=d_tp * d_p / d_t,
    )
    for name, val in paper.items():
        np.testing.assert_allclose(getattr(c, name).numpy(), val, rtol=1e-6, atol=1e-9, err_msg=name)
    # Brownian bridge in the clock m from x0 (m = 0) to x_t: c_xt = 1, c_yt = 0
    np.testing.assert_allclose(c.c_xt.numpy(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(c.c_yt.numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(c.c_eps.numpy(), (m_t - m_p) / m_t, rtol=1e-9)
    np.testing.assert_allclose(c.variance.numpy(), 2 * s * m_p * (m_t - m_p) / m_t, rtol=1e-9)
    with pytest.raises(ValueError):
        b.posterior_coefficients(5, 5)
    with pytest.raises(ValueError):
        b.posterior_coefficients(1000, 3)


def test_eta1_step_is_the_posterior():
    b = BrownianBridge(1000, max_var=0.6)
    x0, y, x_t = rand(2, 1, 8, 8, seed=10), rand(2, 1, 8, 8, seed=11), rand(2, 1, 8, 8, seed=12)
    mean, var = b.q_posterior(x_t, x0, y, torch.tensor([700, 700]), torch.tensor([650, 650]))
    step = bridge_step(b, x_t, y, x0, 700, 650, eta=1.0, generator=torch.Generator().manual_seed(3))
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(3), dtype=x_t.dtype)
    torch.testing.assert_close(step, mean + var.sqrt() * z)


# -- timesteps ----------------------------------------------------------------------------------------------
def test_sample_steps_properties():
    for T in (2, 3, 7, 64, 1000):
        b = BrownianBridge(T)
        for n in range(1, T + 1) if T < 100 else (1, 2, 3, 4, 5, 50, 199, 200, 333, 999, 1000):
            st = b.sample_steps(n)
            assert len(st) == n and len(set(st)) == n and st == sorted(st, reverse=True)
            assert st[0] == T - 1 and (n == 1 or st[-1] == 0)
            if n >= 3:
                gaps = np.diff(st[:-1])  # T-1 ... 1: as even as integers allow
                assert st[-2] == 1 and gaps.max() - gaps.min() <= 1
    b = BrownianBridge(1000)
    assert b.sample_steps(1000) == list(range(999, -1, -1))
    assert b.sample_steps(3) == [999, 1, 0]
    assert b.sample_steps(2) == [999, 0] and b.sample_steps(1) == [999]


def test_sample_steps_public_rule():
    # the public code: arange(T-1, 1, -((T-1)//(n-2))) then [1, 0]
    st = BrownianBridge(1000).sample_steps(200, rule="bbdm")
    assert len(st) == 202 and st[:3] == [999, 994, 989] and st[-3:] == [4, 1, 0]
    assert BrownianBridge(1000).sample_steps(1000, rule="bbdm") == list(range(999, -1, -1))


@pytest.mark.parametrize("n", [0, -1, 1001, 2.5, True])
def test_sample_steps_errors(n):
    with pytest.raises(ValueError):
        BrownianBridge(1000).sample_steps(n)


# -- samplers -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("mt_type", ["linear", "sin"])
def test_deterministic_sampler_recovers_x0_and_stays_on_path(objective, mt_type):
    T, s = 1000, 1.0
    b = BrownianBridge(T, mt_type=mt_type, objective=objective, max_var=s)
    x0, y = rand(2, 3, 4, 4, seed=13), rand(2, 3, 4, 4, seed=14)
    fn = oracle(b, x0, y, objective, mt_type=mt_type, s=s)
    m = ref_m(T, mt_type)
    d = ref_delta(m, s)
    eps0 = (1 - m[-1]) * (y - x0) / math.sqrt(d[-1])  # the noise implied by the start x = y at t = T-1
    for n in (1, 2, 5, 50, 200):
        seen = []
        out = samplers.bridge(b, fn, y, n, eta=0.0, callback=seen.append)
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-8)
        assert [c["t"] for c in seen] == b.sample_steps(n)
        # consistency: every visited state is x0's forward path with one fixed eps
        for c in seen:
            expected = (1 - m[c["t"]]) * x0 + m[c["t"]] * y + math.sqrt(d[c["t"]]) * eps0
            torch.testing.assert_close(c["x"], expected, rtol=0, atol=1e-8)
    # float32 too
    x32, y32 = x0.float(), y.float()
    out32 = samplers.bridge_deterministic(b, oracle(b, x32, y32, objective, mt_type=mt_type, s=s), y32, b.sample_steps(50))
    assert out32.dtype == torch.float32
    tol = 1e-4 if (objective == "noise" and mt_type == "sin") else 1e-5  # sin: 1 - m_{T-1} ~ 2.5e-6
    torch.testing.assert_close(out32, x32, rtol=0, atol=tol * 50)


def test_stochastic_sampler_with_oracle_follows_the_bridge():
    """With the exact x0, the eta=1 chain from x = y at t = T-1 is a Brownian bridge in the clock m
    between x0 (m = 0) and y (m = m_{T-1}): mean x0 + (m/m_{T-1})(y - x0), variance 2 s m (m_{T-1} - m)/m_{T-1}."""
    T, s = 1000, 0.7
    b = BrownianBridge(T, max_var=s)
    x0, y = rand(1, 1, 150, 150, seed=15), rand(1, 1, 150, 150, seed=16)
    seen = []
    out = samplers.bridge_stochastic(b, oracle(b, x0, y, "grad", s=s), y, b.sample_steps(6),
                            generator=torch.Generator().manual_seed(17), callback=seen.append)
    torch.testing.assert_close(out, x0)
    m = ref_m(T)
    m_end = m[-1]
    n = x0.numel()
    for c in seen[1:]:
        mt = m[c["t"]]
        mean = x0 + mt / m_end * (y - x0)
        var = 2 * s * mt * (m_end - mt) / m_end
        z = (c["x"] - mean) / math.sqrt(var)
        assert abs(float(z.mean())) < 5 / math.sqrt(n)
        assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)


def test_stochastic_sampler_mean_with_bayes_denoiser():
    """x0 ~ N(mu0, v0) independently per pixel; the Bayes denoiser E[x0 | x_t, y] makes every step's mean
    exact, so the sample mean is mu0 (up to the x_T = y start, an O(1e-3) effect)."""
    T, s, mu0, v0, yv = 1000, 1.0, 0.3, 0.04, -0.5
    b = BrownianBridge(T, max_var=s, objective="grad")
    m, d = torch.as_tensor(ref_m(T)), torch.as_tensor(ref_delta(ref_m(T), s))

    def bayes(x_t, t):
        mt, dt = m[t].view(-1, 1, 1, 1), d[t].view(-1, 1, 1, 1)
        gain = (1 - mt) * v0 / ((1 - mt) ** 2 * v0 + dt)
        x0_mean = mu0 + gain * (x_t - mt * yv - (1 - mt) * mu0)
        return x_t - x0_mean

    y = torch.full((4, 1, 64, 64), yv, dtype=torch.float64)
    out = samplers.bridge(b, bayes, y, 20, eta=1.0, generator=torch.Generator().manual_seed(18))
    assert abs(float(out.mean()) - mu0) < 0.01
    det = samplers.bridge(b, bayes, y, 20, eta=0.0)
    assert abs(float(det.mean()) - mu0) < 0.01


def test_generator_reproducibility():
    b = BrownianBridge(100, objective="noise")
    y = rand(2, 1, 6, 6, seed=20)

    def rough(x_t, t):  # an imperfect model, so that the noise matters
        return 0.5 * x_t

    a1 = samplers.bridge(b, rough, y, 10, eta=1.0, generator=torch.Generator().manual_seed(1))
    a2 = samplers.bridge(b, rough, y, 10, eta=1.0, generator=torch.Generator().manual_seed(1))
    a3 = samplers.bridge(b, rough, y, 10, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a1, a2) and not torch.allclose(a1, a3)
    d1 = samplers.bridge(b, rough, y, 10, eta=0.0, generator=torch.Generator().manual_seed(1))
    d2 = samplers.bridge(b, rough, y, b.sample_steps(10), eta=0.0)
    assert torch.equal(d1, d2)
    h = samplers.bridge(b, rough, y, [99, 50, 0], eta=0.5, generator=torch.Generator().manual_seed(1))
    assert h.shape == y.shape and torch.isfinite(h).all()


def test_sampler_argument_errors():
    b = BrownianBridge(100)
    y = torch.zeros(1, 1, 2, 2)

    def fn(x, t):
        return torch.zeros_like(x)

    for bad in ([50, 50, 0], [10, 20], [100, 0], []):
        with pytest.raises(ValueError):
            samplers.bridge(b, fn, y, bad)
    for eta in (-0.1, 1.5):
        with pytest.raises(ValueError):
            samplers.bridge(b, fn, y, 5, eta=eta)
    with pytest.raises(ValueError):
        samplers.bridge(b, fn, y, 0)
    clipped = samplers.bridge(b, lambda x, t: x - 5.0, y, 3, clip_x0=(-1.0, 1.0))  # x0_hat = 5, clamped
    assert torch.equal(clipped, torch.ones_like(y))


@pytest.mark.parametrize(
    "kwargs",
    [dict(mt_type="cosine"), dict(objective="eps"), dict(num_timesteps=1), dict(num_timesteps=0),
     dict(num_timesteps=10.0), dict(max_var=0.0), dict(max_var=-1.0), dict(max_var=float("nan"))],
)
def test_constructor_errors(kwargs):
    with pytest.raises(ValueError):
        BrownianBridge(**kwargs)

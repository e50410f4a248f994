"""Samplers: small pure functions with one signature (k-diffusion style)::

    sampler(process, model_fn, start, steps, *, generator=None, callback=None, info=None, **options) -> x0

- ``process``: the noise process (:mod:`petsynth.diffusion`) the sampler supports; a wrong one is a TypeError.
- ``model_fn(x, time)``: the network's output for ``process.prediction`` (the bridge's objective, the noise
  eps of the Gaussian process, the score of the VE-SDE), with ``time = process.model_time(t)`` of shape (B,):
  integer steps for the bridge and the Gaussian process, the noise level sigma for the VE-SDE (there
  ``model_fn`` is the ``score_fn(x, sigma)`` of the score-SDE papers).
- ``start``: a shape (a tuple: the sampler draws the process's prior with ``generator``) or a tensor, the
  state to start from (the bridge: its end point y, the condition).
- ``steps``: the number of steps on the process's time grid (the bridge also takes explicit timesteps).
- ``callback(state)`` after each network call, with keys "i", "t", "x" (and "x0_hat" where defined).
- ``info``: a dict the sampler fills with "sampler", "steps" and "nfe", the number of network evaluations
  it made (counted, not computed).

Samplers: :func:`bridge` (its two settings :func:`bridge_stochastic`, CPDM's Algorithm 2, and
:func:`bridge_deterministic`), :func:`ddim`, and for the VE-SDE :func:`pc` (predictor-corrector, JDAM's
Algorithm 2), :func:`reverse_diffusion` (the predictor alone), :func:`langevin` (annealed Langevin dynamics,
the corrector alone) and :func:`ode` (the probability-flow ODE with Heun's method, for few steps). The
predictor and corrector moves are the pure step functions :func:`reverse_diffusion_step` and
:func:`langevin_step`. :data:`SAMPLERS` names them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from petsynth.diffusion.bridge import BrownianBridge, bridge_step, check_timesteps
from petsynth.diffusion.gaussian import GaussianDiffusion
from petsynth.diffusion.ve_sde import VESDE

__all__ = ["SAMPLERS", "bridge", "bridge_deterministic", "bridge_stochastic", "ddim", "karras_sigmas",
           "langevin", "langevin_step", "ode", "pc", "reverse_diffusion", "reverse_diffusion_step"]

ModelFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict[str, Any]], None]
Start = Tensor | tuple[int, ...] | Sequence[int]


class _Counted:
    """``model_fn`` wrapped to count its calls."""

    def __init__(self, fn: ModelFn):
        self.fn, self.nfe = fn, 0

    def __call__(self, x: Tensor, time: Tensor) -> Tensor:
        self.nfe += 1
        return self.fn(x, time)


def _need(process: Any, kind: type, sampler: str) -> None:
    if not isinstance(process, kind):
        raise TypeError(f"sampler {sampler!r} needs a {kind.__name__} process, got {type(process).__name__}")


def _start(process: Any, start: Start, generator: torch.Generator | None) -> Tensor:
    if isinstance(start, Tensor):
        return start
    return process.prior_sample(tuple(int(v) for v in start), generator=generator)


def _report(info: dict | None, name: str, steps: int, model: _Counted) -> None:
    if info is not None:
        info.update(sampler=name, steps=int(steps), nfe=model.nfe)


def _times(value: float | Tensor, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=x.dtype)


# --- Brownian bridge ---------------------------------------------------------------------------------------
@torch.no_grad()
def bridge(process: BrownianBridge, model_fn: ModelFn, start: Tensor, steps: int | Sequence[int] | Tensor = 200,
           *, eta: float = 1.0, clip_x0: tuple[float, float] | None = None, generator: torch.Generator | None = None,
           callback: Callback | None = None, info: dict | None = None) -> Tensor:
    """The reverse bridge from x_T = y (``start``, the condition, (B, C, H, W)) to an x0 estimate like it.

    ``steps``: a number n (timesteps ``process.sample_steps(n)``) or explicit strictly descending timesteps.
    At each t: x0_hat = ``process.predict_x0`` of model_fn(x, t) (clamped to ``clip_x0``; the public
    pixel-space BBDM clamps to [-1, 1], its latent model does not); at the last timestep return x0_hat, else
    move to the next timestep with :func:`~petsynth.diffusion.bridge.bridge_step`. eta = 1: CPDM's
    Algorithm 2 (the posterior at each skip); eta = 0: the consistent deterministic sampler; between:
    interpolated noise. NFE = the number of timesteps.
    """
    _need(process, BrownianBridge, "bridge")
    if not isinstance(start, Tensor):
        raise TypeError("the bridge starts at its end point y: pass the condition tensor as start")
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    if isinstance(steps, (Tensor, Sequence)) and not (isinstance(steps, Tensor) and steps.ndim == 0):
        ts = check_timesteps(process, steps)
    else:
        ts = process.sample_steps(steps)
    model = _Counted(model_fn)
    y = start
    x = process.prior_sample(y=y)
    for i, t in enumerate(ts):
        t_vec = torch.full((y.shape[0],), t, dtype=torch.long, device=y.device)
        x0_hat = process.predict_x0(x, t_vec, model(x, t_vec), y=y)
        if clip_x0 is not None:
            x0_hat = x0_hat.clamp(*clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0_hat": x0_hat})
        if i == len(ts) - 1:
            break
        x = bridge_step(process, x, y, x0_hat, t, ts[i + 1], eta=eta, generator=generator)
    _report(info, "bridge", len(ts), model)
    return x0_hat


def bridge_stochastic(process: BrownianBridge, model_fn: ModelFn, start: Tensor, steps: int | Sequence[int] = 200,
                      **kwargs: Any) -> Tensor:
    """CPDM's Algorithm 2 (BBDM ancestral sampling): :func:`bridge` with eta = 1."""
    return bridge(process, model_fn, start, steps, eta=1.0, **kwargs)


def bridge_deterministic(process: BrownianBridge, model_fn: ModelFn, start: Tensor,
                         steps: int | Sequence[int] = 200, **kwargs: Any) -> Tensor:
    """The deterministic, consistent bridge sampler: :func:`bridge` with eta = 0 (no noise drawn)."""
    return bridge(process, model_fn, start, steps, eta=0.0, **kwargs)


# --- Gaussian diffusion ------------------------------------------------------------------------------------
@torch.no_grad()
def ddim(process: GaussianDiffusion, model_fn: ModelFn, start: Start, steps: int = 50, *, eta: float = 0.0,
         clip_x0: tuple[float, float] | None = None, generator: torch.Generator | None = None,
         callback: Callback | None = None, info: dict | None = None) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021) on the process's uniform grid, ``model_fn(x_t, t) -> eps`` (t long (B,)).

    From t to s = t - c (abar_s = 1 after t = 0): x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    (clamped to ``clip_x0``), sigma = eta sqrt((1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s)),
    x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps + sigma z. eta = 0 is deterministic, eta = 1
    DDPM-like. Float32 arithmetic in the order of MONAI's ``DDIMScheduler.step``, so results match it.
    """
    _need(process, GaussianDiffusion, "ddim")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta}")
    ts = process.timesteps(steps).tolist()
    gap = process.num_timesteps // steps
    abar = process.alphas_cumprod
    one = torch.tensor(1.0)
    model = _Counted(model_fn)
    x = _start(process, start, generator)
    for i, t in enumerate(ts):
        eps = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        a_t = abar[t]
        a_s = abar[t - gap] if t - gap >= 0 else one
        x0_hat = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        if clip_x0 is not None:
            x0_hat = x0_hat.clamp(*clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0_hat": x0_hat})
        variance = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        sigma = eta * variance**0.5
        x = a_s**0.5 * x0_hat + (1 - a_s - sigma**2) ** 0.5 * eps
        if eta > 0:
            z = torch.randn(eps.shape, dtype=eps.dtype, generator=generator, device=eps.device)
            x = x + variance**0.5 * eta * z
    _report(info, "ddim", len(ts), model)
    return x


# --- VE-SDE: predictor, corrector, PC loop, probability-flow ODE --------------------------------------------
def reverse_diffusion_step(x: Tensor, score: Tensor, sigma: float, sigma_next: float,
                           generator: torch.Generator | None = None, noise: bool = True) -> tuple[Tensor, Tensor]:
    """Reverse-diffusion predictor of the VE-SDE from noise level sigma to sigma_next < sigma:
    x_mean = x + (sigma^2 - sigma_next^2) score, x = x_mean + sqrt(sigma^2 - sigma_next^2) z.
    Returns (x, x_mean); ``noise=False`` returns x_mean twice (the final denoising step)."""
    g2 = sigma**2 - sigma_next**2
    x_mean = x + g2 * score
    if not noise:
        return x_mean, x_mean
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x_mean + math.sqrt(g2) * z, x_mean


def langevin_step(x: Tensor, score: Tensor, snr: float, generator: torch.Generator | None = None
                  ) -> tuple[Tensor, Tensor]:
    """One Langevin corrector step: eps = 2 (snr ||z|| / ||score||)^2, x_mean = x + eps score,
    x = x_mean + sqrt(2 eps) z. The norms are per sample (score_sde averages them over the batch, which makes
    one slice's result depend on the others in its batch); a sample whose score is exactly 0 (an untrained
    network) is left as it is (eps = 0) rather than given an infinite step. Returns (x, x_mean)."""
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    dims = tuple(range(1, x.ndim))
    z_norm = torch.linalg.vector_norm(z, dim=dims, keepdim=True)
    s_norm = torch.linalg.vector_norm(score, dim=dims, keepdim=True)
    eps = torch.where(s_norm > 0, 2 * (snr * z_norm / s_norm.clamp_min(torch.finfo(x.dtype).tiny)) ** 2, 0.0)
    x_mean = x + eps * score
    return x_mean + (2 * eps).sqrt() * z, x_mean


def _sigma_grid(sde: VESDE, steps: int) -> list[float]:
    """The noise levels sigma(t) of ``sde.timesteps(steps)`` (descending), then 0."""
    return [float(s) for s in sde.sigma(sde.timesteps(steps))] + [0.0]


def _check_snr(snr: float, corrector_steps: int) -> None:
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an int >= 0, got {corrector_steps!r}")


@torch.no_grad()
def pc(sde: VESDE, score_fn: ModelFn, start: Start, steps: int | None = None, *, snr: float = 0.16,
       corrector_steps: int = 1, generator: torch.Generator | None = None, callback: Callback | None = None,
       info: dict | None = None) -> Tensor:
    """Predictor-corrector sampling (JDAM's Algorithm 2; Song et al. 2021) with ``score_fn(x, sigma)``.

    Noise levels sigma_0 > ... > sigma_{n-1} from ``sde.timesteps(steps)`` (default ``num_scales``), then 0.
    From the prior x ~ N(0, sigma_max^2), for each i: the reverse-diffusion predictor from sigma_i to
    sigma_{i+1}, then ``corrector_steps`` Langevin steps at sigma_{i+1} with signal-to-noise ratio ``snr``.
    The last predictor step (to 0) adds no noise and no corrector follows: it returns the denoised mean.
    NFE = steps + corrector_steps (steps - 1).
    """
    _need(sde, VESDE, "pc")
    _check_snr(snr, corrector_steps)
    steps = sde.num_scales if steps is None else steps
    sigmas = _sigma_grid(sde, steps)
    model = _Counted(score_fn)
    x = _start(sde, start, generator)
    for i in range(steps):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        score = model(x, _times(sigma, x))
        if callback is not None:
            callback({"i": i, "t": sigma, "x": x, "x0_hat": x + sigma**2 * score})
        x, x_mean = reverse_diffusion_step(x, score, sigma, nxt, generator, noise=nxt > 0)
        if nxt > 0:
            for _ in range(corrector_steps):
                x, x_mean = langevin_step(x, model(x, _times(nxt, x)), snr, generator)
    _report(info, "pc", steps, model)
    return x_mean


def reverse_diffusion(sde: VESDE, score_fn: ModelFn, start: Start, steps: int | None = None,
                      **kwargs: Any) -> Tensor:
    """The reverse-diffusion predictor alone: :func:`pc` with no corrector steps (NFE = steps)."""
    out = pc(sde, score_fn, start, steps, corrector_steps=0, **kwargs)
    if kwargs.get("info") is not None:
        kwargs["info"]["sampler"] = "reverse_diffusion"
    return out


@torch.no_grad()
def langevin(sde: VESDE, score_fn: ModelFn, start: Start, steps: int | None = None, *, snr: float = 0.16,
             corrector_steps: int = 1, generator: torch.Generator | None = None, callback: Callback | None = None,
             info: dict | None = None) -> Tensor:
    """Annealed Langevin dynamics (the corrector alone, NCSN): ``corrector_steps`` Langevin steps at each noise
    level sigma_0 > ... > sigma_{n-1} of ``sde.timesteps(steps)``, then one denoising step
    x + sigma_{n-1}^2 score. NFE = steps x corrector_steps + 1."""
    _need(sde, VESDE, "langevin")
    _check_snr(snr, corrector_steps)
    if corrector_steps < 1:
        raise ValueError("annealed Langevin needs corrector_steps >= 1")
    steps = sde.num_scales if steps is None else steps
    sigmas = _sigma_grid(sde, steps)[:-1]
    model = _Counted(score_fn)
    x = _start(sde, start, generator)
    for i, sigma in enumerate(sigmas):
        for _ in range(corrector_steps):
            x, _ = langevin_step(x, model(x, _times(sigma, x)), snr, generator)
        if callback is not None:
            callback({"i": i, "t": sigma, "x": x})
    x = x + sigmas[-1] ** 2 * model(x, _times(sigmas[-1], x))
    _report(info, "langevin", steps, model)
    return x


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> list[float]:
    """Karras et al. (2022) noise levels, descending: (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho
    for i = 0..n-1 (n = 1: [s_max])."""
    if n == 1:
        return [float(sigma_max)]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [float((a + i / (n - 1) * (b - a)) ** rho) for i in range(n)]


@torch.no_grad()
def ode(sde: VESDE, score_fn: ModelFn, start: Start, steps: int = 50, *, rho: float | None = 7.0,
        generator: torch.Generator | None = None, callback: Callback | None = None,
        info: dict | None = None) -> Tensor:
    """The probability-flow ODE dx/dsigma = -sigma score(x, sigma), by Heun's method (Karras et al. 2022).

    Noise levels: ``steps`` levels from sigma_max to sigma(eps), spaced by Karras' ``rho`` (7; None: the
    process's geometric grid), then 0; each interval is a Heun step except the last (to 0), an Euler step.
    Deterministic given the start (``generator`` only draws the prior). NFE = 2 steps - 1.
    """
    _need(sde, VESDE, "ode")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if rho is None:
        sigmas = _sigma_grid(sde, steps)
    else:
        sigmas = karras_sigmas(float(sde.sigma(sde.eps)), sde.sigma_max, steps, rho) + [0.0]
    model = _Counted(score_fn)
    x = _start(sde, start, generator)
    for i in range(steps):
        sigma, nxt = sigmas[i], sigmas[i + 1]
        d = -sigma * model(x, _times(sigma, x))  # dx/dsigma = (x - x0_hat) / sigma
        if callback is not None:
            callback({"i": i, "t": sigma, "x": x, "x0_hat": x - sigma * d})
        x_next = x + (nxt - sigma) * d
        if nxt > 0:
            d_next = -nxt * model(x_next, _times(nxt, x_next))
            x_next = x + (nxt - sigma) * 0.5 * (d + d_next)
        x = x_next
    _report(info, "ode", steps, model)
    return x


#: Every sampler by name (the ``sampler`` option of the methods).
SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "bridge": bridge, "bridge_stochastic": bridge_stochastic, "bridge_deterministic": bridge_deterministic,
    "ddim": ddim, "pc": pc, "reverse_diffusion": reverse_diffusion, "langevin": langevin, "ode": ode,
}

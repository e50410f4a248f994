"""Variance-exploding SDE (Song et al. 2021, "Score-based generative modeling through SDEs"), as JDAM uses it.

Continuous time t in [eps, 1]::

    sigma(t) = sigma_min (sigma_max / sigma_min)^t
    dx = g(t) dw,  g(t) = sigma(t) sqrt(2 ln(sigma_max / sigma_min))
    x_t | x0 ~ N(x0, sigma(t)^2 I)               (the marginal; sigma(0) = sigma_min is taken as data)
    prior: x_1 ~ N(0, sigma_max^2 I)

(the public JDAM code draws its prior from N(0, 1): with sigma_max = 348 that starts the sampler far inside
the noise it was trained to remove.) The discrete noise scales ``discrete_sigmas`` are geometric from
sigma_min to sigma_max over ``num_scales`` (sigma_i = sigma(i / (N - 1))). The network predicts the score;
trained by denoising score matching with lambda(t) = sigma(t)^2 (JDAM's Algorithm 1)::

    loss = mean || sigma s_theta(x0 + sigma z, sigma) + z ||^2,   z ~ N(0, I)

i.e. ``q_sample`` returns the target -z / sigma, matched with weight sigma^2. The network's time input is
the noise level sigma itself (:meth:`VESDE.model_time`); a method may embed it (e.g. log sigma).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from petsynth.diffusion.base import as_batch_times, expand_like

__all__ = ["VESDE"]


class VESDE:
    """Variance-exploding SDE (see the module docstring).

    Args:
        sigma_min, sigma_max: the smallest and largest noise levels (0 < sigma_min < sigma_max).
        num_scales: N, the number of discrete noise scales (the default number of sampler steps).
        eps: the smallest time samplers and training visit (t in [eps, 1]).
    """

    prediction = "score"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 348.0, num_scales: int = 1000,
                 eps: float = 1e-5) -> None:
        sigma_min, sigma_max, eps = float(sigma_min), float(sigma_max), float(eps)
        if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 2:
            raise ValueError(f"num_scales must be an int >= 2, got {num_scales!r}")
        if not 0 <= eps < 1:
            raise ValueError(f"eps must lie in [0, 1), got {eps}")
        self.sigma_min, self.sigma_max, self.num_scales, self.eps = sigma_min, sigma_max, num_scales, eps
        self.log_ratio = math.log(sigma_max / sigma_min)

    def __repr__(self) -> str:
        return (f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, num_scales={self.num_scales}, "
                f"eps={self.eps})")

    @property
    def discrete_sigmas(self) -> Tensor:
        """(num_scales,) float64, ascending and geometric: sigma_min .. sigma_max."""
        return torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.num_scales,
                                        dtype=torch.float64))

    def sigma(self, t: Tensor | float) -> Tensor:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t, elementwise (a tensor like t)."""
        t = torch.as_tensor(t, dtype=torch.float64 if not isinstance(t, Tensor) else None)
        return self.sigma_min * torch.exp(t * self.log_ratio)

    def diffusion(self, t: Tensor | float) -> Tensor:
        """g(t) = sigma(t) sqrt(2 ln(sigma_max / sigma_min)); the drift is 0."""
        return self.sigma(t) * math.sqrt(2 * self.log_ratio)

    # -- the protocol -------------------------------------------------------------------------------------
    def timesteps(self, n: int) -> Tensor:
        """linspace(1, eps, n), float64 (n >= 1): sigma(t) of these is geometric from sigma_max down to
        sigma(eps); with n = num_scales and eps = 0 they are ``discrete_sigmas`` reversed."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sampling steps must be an int >= 1, got {n!r}")
        return torch.linspace(1.0, self.eps, n, dtype=torch.float64)

    def prior_sample(self, shape: tuple[int, ...], *, y: Tensor | None = None,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """x ~ N(0, sigma_max^2 I)."""
        if device is None and generator is not None:
            device = generator.device
        return torch.randn(shape, generator=generator, device=device, dtype=dtype) * self.sigma_max

    def q_sample(self, x0: Tensor, t: Tensor | float, noise: Tensor | None = None, *, y: Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(x_t, target): x_t = x0 + sigma(t) z and the score of the perturbation kernel, -z / sigma(t)."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        sigma = expand_like(self.sigma(as_batch_times(t, x0.shape[0], dtype=torch.float64, device=x0.device)), x0)
        return x0 + sigma * noise, -noise / sigma

    def training_times(self, batch: int, device: torch.device | str | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """t ~ U(eps, 1), float32 (batch,)."""
        u = torch.rand(batch, device=device, generator=generator)
        return u * (1.0 - self.eps) + self.eps

    def model_time(self, t: Tensor) -> Tensor:
        """The network's time input: the noise level sigma(t)."""
        return self.sigma(t)

    def predict_x0(self, x_t: Tensor, t: Tensor, output: Tensor, *, y: Tensor | None = None) -> Tensor:
        """Tweedie: E[x0 | x_t] = x_t + sigma(t)^2 score."""
        sigma = expand_like(self.sigma(as_batch_times(t, x_t.shape[0], dtype=torch.float64, device=x_t.device)), x_t)
        return x_t + sigma**2 * output

    def score(self, x_t: Tensor, t: Tensor, output: Tensor, *, y: Tensor | None = None) -> Tensor:
        return output

"""Gaussian diffusion (DDPM, Ho et al. 2020) with the LDM beta schedules; sampled by DDIM (Song et al. 2021).

Discrete time t = 0..T-1, variance-preserving marginal::

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,   abar_t = prod_{s <= t} (1 - beta_s),   eps ~ N(0, I).

The network predicts eps ("epsilon"); x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) and the score
is -eps_hat / sqrt(1 - abar_t). Schedules (beta in float32, as MONAI's schedulers compute them, so that a
model trained with those samples identically here):

- ``scaled_linear_beta`` (LDM's "linear"): beta = linspace(beta_start^(1/2), beta_end^(1/2), T)^2;
- ``linear_beta`` (DDPM): beta = linspace(beta_start, beta_end, T);
- ``cosine`` (Nichol & Dhariwal 2021, s = 0.008): abar(u) = cos^2((u + s) / (1 + s) pi / 2) on u = t / T,
  betas clipped to [0, 0.999].

The DDIM grid for n steps is the DDIM paper's uniform one: (n - 1) c, ..., c, 0 with c = T // n; the step
from t goes to t - c (to abar = 1 after t = 0, "set_alpha_to_one").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from petsynth.diffusion.base import expand_like

__all__ = ["SCHEDULES", "GaussianDiffusion", "beta_schedule"]

SCHEDULES = ("scaled_linear_beta", "linear_beta", "cosine")


def beta_schedule(name: str, num_timesteps: int, beta_start: float = 0.0015, beta_end: float = 0.0195
                  ) -> tuple[Tensor, Tensor]:
    """(betas, alphas_cumprod), float32 tensors of shape (T,), for a schedule of :data:`SCHEDULES`."""
    T = num_timesteps
    if name == "scaled_linear_beta":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    elif name == "linear_beta":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    elif name == "cosine":
        s = 8e-3
        u = torch.linspace(0, T, T + 1)
        abar = torch.cos((u / T + s) / (1 + s) * math.pi * 0.5) ** 2
        abar /= abar[0].item()
        betas = torch.clip(1.0 - abar[1:] / abar[:-1], 0.0, 0.999)
    else:
        raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
    return betas, torch.cumprod(1.0 - betas, dim=0)


class GaussianDiffusion:
    """DDPM noise process (see the module docstring).

    Args:
        num_timesteps: T (>= 2).
        schedule: one of :data:`SCHEDULES`; beta_start and beta_end are not used by "cosine".

    Attributes:
        betas, alphas_cumprod: float32 (T,) on the CPU.
    """

    prediction = "epsilon"

    def __init__(self, num_timesteps: int = 1000, schedule: str = "scaled_linear_beta",
                 beta_start: float = 0.0015, beta_end: float = 0.0195) -> None:
        if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 2:
            raise ValueError(f"num_timesteps must be an int >= 2, got {num_timesteps!r}")
        self.num_timesteps = num_timesteps
        self.schedule = schedule
        self.betas, self.alphas_cumprod = beta_schedule(schedule, num_timesteps, beta_start, beta_end)

    def __repr__(self) -> str:
        return f"GaussianDiffusion(num_timesteps={self.num_timesteps}, schedule={self.schedule!r})"

    def _abar(self, t: Tensor, like: Tensor) -> Tensor:
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"timesteps must be integers, got dtype {t.dtype}")
        if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps - 1}]")
        abar = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)[t.to(like.device)]
        return expand_like(abar.reshape(-1).expand(like.shape[0]) if abar.ndim == 0 else abar, like)

    # -- the protocol -------------------------------------------------------------------------------------
    def timesteps(self, n: int) -> Tensor:
        """The DDIM grid, descending: (n - 1) c, ..., c, 0 with c = T // n (1 <= n <= T)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.num_timesteps:
            raise ValueError(f"sampling steps must be an int in 1..{self.num_timesteps}, got {n!r}")
        return torch.arange(n - 1, -1, -1) * (self.num_timesteps // n)

    def prior_sample(self, shape: tuple[int, ...], *, y: Tensor | None = None,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """x_T ~ N(0, I) (the marginal at T up to sqrt(abar_T) x0, about 0.07 x0 for the LDM schedule)."""
        if device is None and generator is not None:
            device = generator.device
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None, *, y: Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(x_t, eps): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; t a LongTensor (B,)."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        abar = self._abar(t, x0)
        return abar**0.5 * x0 + (1 - abar) ** 0.5 * noise, noise

    def model_time(self, t: Tensor) -> Tensor:
        return t

    def predict_x0(self, x_t: Tensor, t: Tensor, output: Tensor, *, y: Tensor | None = None) -> Tensor:
        abar = self._abar(t, x_t)
        return (x_t - (1 - abar) ** 0.5 * output) / abar**0.5

    def score(self, x_t: Tensor, t: Tensor, output: Tensor, *, y: Tensor | None = None) -> Tensor:
        return -output / (1 - self._abar(t, x_t)) ** 0.5

    def training_times(self, batch: int, device: torch.device | str | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """t ~ U{0, ..., T-1}, a LongTensor (batch,)."""
        return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)

"""Brownian-bridge diffusion (BBDM, Li et al. CVPR 2023; CPDM section 4.3): noise process and samplers.

Pure maths with torch, no networks. The bridge runs from the data ``x0`` (t = 0) to the condition ``y``
(t = T-1), indexed t = 0..T-1 as in the public BBDM code::

    x_t = (1 - m_t) x0 + m_t y + sqrt(delta_t) eps,   delta_t = 2 s (m_t - m_t^2),   s = max_var.

Because delta_t = 2 s m_t (1 - m_t), this is a standard Brownian bridge with diffusion 2 s run in the clock
m: given x_t, the earlier state x_s only depends on x0 and x_t (a bridge from x0 at m = 0 to x_t at m_t).
That makes every posterior below closed-form for any pair s < t, so skip-step samplers need no extra
approximation.

The process implements :class:`petsynth.diffusion.base.NoiseProcess` with the condition ``y`` as its end
point; :func:`bridge_step` is its one reverse move, and the samplers that loop over it are
:func:`petsynth.diffusion.samplers.bridge` (:func:`~petsynth.diffusion.samplers.bridge_stochastic`,
:func:`~petsynth.diffusion.samplers.bridge_deterministic`). ``model_fn(x_t, t)`` predicts the objective,
with ``t`` a LongTensor of shape (B,).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["MT_TYPES", "OBJECTIVES", "BrownianBridge", "PosteriorCoefficients", "bridge_step", "check_timesteps"]

MT_TYPES = ("linear", "sin")
OBJECTIVES = ("grad", "noise", "ysubx")


class PosteriorCoefficients(NamedTuple):
    """Coefficients of q(x_s | x_t, x0, y) = N(c_xt x_t + c_yt y - c_eps (x_t - x0), variance).

    ``x_t - x0`` is the "grad" objective m_t (y - x0) + sqrt(delta_t) eps (the paper's eps_theta target).
    Each field is a tensor shaped like the broadcast of (t, s).
    """

    c_xt: Tensor
    c_yt: Tensor
    c_eps: Tensor
    variance: Tensor


def _as_timesteps(t: Tensor | int, device: torch.device | None = None) -> Tensor:
    if isinstance(t, Tensor):
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"timesteps must be integers, got dtype {t.dtype}")
        return t.long() if device is None else t.long().to(device)
    return torch.as_tensor(int(t), dtype=torch.long, device=device)


class BrownianBridge:
    """Brownian-bridge noise process of BBDM / CPDM.

    Args:
        num_timesteps: T, the number of discrete steps (>= 2); t runs over 0..T-1.
        mt_type: "linear": m_t = linspace(0.001, 0.999, T) (the CPDM setting). "sin", as in the public BBDM
            code: u = arange(T) / T with u[0] replaced by 0.0005, then m_t = 0.5 sin(pi (u - 0.5)) + 0.5
            (so m_0 ~ 6.2e-7 and m_{T-1} = 0.5 + 0.5 cos(pi / T)).
        max_var: s > 0 in delta_t = 2 s (m_t - m_t^2); delta peaks at m = 0.5 with value s / 2.
        objective: what the network predicts: "grad" m_t (y - x0) + sqrt(delta_t) eps (= x_t - x0),
            "noise" eps, or "ysubx" y - x0.

    Attributes:
        m_t, variance_t: float64 tensors of shape (T,), on the CPU (gathered onto the inputs' device and
            dtype when used).
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        mt_type: str = "linear",
        max_var: float = 1.0,
        objective: str = "grad",
    ) -> None:
        if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int):
            raise ValueError(f"num_timesteps must be an int, got {num_timesteps!r}")
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
        if mt_type not in MT_TYPES:
            raise ValueError(f"unknown mt_type {mt_type!r}; choose one of {MT_TYPES}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        max_var = float(max_var)
        if not (max_var > 0 and math.isfinite(max_var)):
            raise ValueError(f"max_var must be a finite number > 0, got {max_var}")
        self.num_timesteps = num_timesteps
        self.mt_type = mt_type
        self.max_var = max_var
        self.objective = objective
        self.prediction = objective

        T = num_timesteps
        if mt_type == "linear":
            m = torch.linspace(0.001, 0.999, T, dtype=torch.float64)
        else:  # "sin"
            u = torch.arange(T, dtype=torch.float64) / T
            u[0] = 0.0005
            m = 0.5 * torch.sin(math.pi * (u - 0.5)) + 0.5
        self.m_t: Tensor = m
        self.variance_t: Tensor = 2.0 * (m - m**2) * max_var
        self._cache: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    def __repr__(self) -> str:
        return (f"BrownianBridge(num_timesteps={self.num_timesteps}, mt_type={self.mt_type!r}, "
                f"max_var={self.max_var}, objective={self.objective!r})")

    # -- schedule look-ups ---------------------------------------------------------------------------
    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (name, device, dtype)
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(dtype).to(device)
        return self._cache[key]

    def _gather(self, name: str, t: Tensor | int, like: Tensor) -> Tensor:
        """Schedule values at t (shape (B,) or scalar), shaped to broadcast against ``like`` (B, ...)."""
        t = _as_timesteps(t, like.device)
        # range check only on the CPU: on an accelerator it would force a synchronisation every call
        if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps - 1}]")
        v = self._table(name, like.device, like.dtype)[t]
        if v.ndim == 1:
            if like.ndim == 0 or v.shape[0] != like.shape[0]:
                raise ValueError(f"t has shape {tuple(t.shape)} but the batch is {tuple(like.shape)}")
            v = v.view(-1, *([1] * (like.ndim - 1)))
        elif v.ndim != 0:
            raise ValueError(f"t must be a scalar or of shape (B,), got {tuple(t.shape)}")
        return v

    # -- forward process (the NoiseProcess protocol) -------------------------------------------------------
    def q_sample(
        self, x0: Tensor, t: Tensor | int, noise: Tensor | None = None, *, y: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw x_t ~ q(x_t | x0, y) and the matching objective target.

        Args:
            x0, y: (B, C, H, W) (any shape with the batch first).
            t: LongTensor (B,) (or an int for the whole batch).
            noise: eps, like x0; drawn with ``generator`` when None.

        Returns:
            (x_t, target), both like x0: x_t = (1 - m_t) x0 + m_t y + sqrt(delta_t) eps; target as set by
            ``objective``.
        """
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        m = self._gather("m_t", t, x0)
        sd = self._gather("variance_t", t, x0).sqrt()
        x_t = (1.0 - m) * x0 + m * y + sd * noise
        if self.objective == "grad":
            target = m * (y - x0) + sd * noise
        elif self.objective == "noise":
            target = noise
        else:
            target = y - x0
        return x_t, target

    def predict_x0(self, x_t: Tensor, t: Tensor | int, output: Tensor, *, y: Tensor) -> Tensor:
        """Recover x0 from a predicted objective (inverse of ``q_sample``'s target); all tensors alike.

        grad: x0 = x_t - out;  noise: x0 = (x_t - m_t y - sqrt(delta_t) out) / (1 - m_t);  ysubx: x0 = y - out.
        """
        if self.objective == "grad":
            return x_t - output
        if self.objective == "ysubx":
            return y - output
        m = self._gather("m_t", t, x_t)
        sd = self._gather("variance_t", t, x_t).sqrt()
        return (x_t - m * y - sd * output) / (1.0 - m)

    def predict_noise(self, x_t: Tensor, t: Tensor | int, x0: Tensor, *, y: Tensor) -> Tensor:
        """eps_hat = (x_t - (1 - m_t) x0 - m_t y) / sqrt(delta_t), the noise implied by x_t, x0 and y."""
        m = self._gather("m_t", t, x_t)
        sd = self._gather("variance_t", t, x_t).sqrt()
        return (x_t - (1.0 - m) * x0 - m * y) / sd

    def score(self, x_t: Tensor, t: Tensor | int, output: Tensor, *, y: Tensor) -> Tensor:
        """The score of q(x_t | x0_hat, y): -eps_hat / sqrt(delta_t), with x0_hat from ``output``."""
        x0 = self.predict_x0(x_t, t, output, y=y)
        return -self.predict_noise(x_t, t, x0, y=y) / self._gather("variance_t", t, x_t).sqrt()

    def timesteps(self, n: int) -> Tensor:
        """The descending timesteps of an n-step sampler (:meth:`sample_steps`, rule "linear") as a LongTensor."""
        return torch.tensor(self.sample_steps(n), dtype=torch.long)

    def prior_sample(self, shape: tuple[int, ...] | None = None, *, y: Tensor | None = None,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> Tensor:
        """The bridge starts at its end point: x_T = y (no noise; m_{T-1} = 0.999 ~ 1)."""
        if y is None:
            raise ValueError("the bridge starts at its end point y: give y")
        return y

    def training_times(self, batch: int, device: torch.device | str | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """t ~ U{0, ..., T-1}, a LongTensor (batch,)."""
        return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)

    def model_time(self, t: Tensor) -> Tensor:
        return t

    # -- posterior ----------------------------------------------------------------------------------
    def posterior_coefficients(
        self, t: Tensor | int, s: Tensor | int, dtype: torch.dtype = torch.float64
    ) -> PosteriorCoefficients:
        """Coefficients of q(x_s | x_t, x0, y) for any s < t (adjacent steps s = t-1 give the paper's eq. 3).

        With a = (1 - m_t) / (1 - m_s) and the transition variance of eq. 2,
        delta_{t|s} = delta_t - delta_s a^2 (computed as 2 s (1 - m_t)(m_t - m_s) / (1 - m_s), the same
        value without cancellation), the paper's coefficients with s in place of t-1 are::

            c_xt  = (delta_s / delta_t) a + (delta_{t|s} / delta_t) (1 - m_s)
            c_yt  = m_s - m_t a delta_s / delta_t
            c_eps = (1 - m_s) delta_{t|s} / delta_t
            delta_tilde = delta_{t|s} delta_s / delta_t

        and the posterior is N(c_xt x_t + c_yt y - c_eps (x_t - x0), delta_tilde). For this variance
        schedule they reduce to c_xt = 1, c_yt = 0, c_eps = (m_t - m_s) / m_t and
        delta_tilde = 2 s m_s (m_t - m_s) / m_t: a Brownian bridge between x0 (m = 0) and x_t (m = m_t).

        Args:
            t, s: LongTensors of one shape (e.g. (B,)) or ints, 0 <= s < t <= T-1.
            dtype: dtype of the returned tensors (computed in float64 first).
        """
        t = _as_timesteps(t)
        s = _as_timesteps(s, t.device)
        T = self.num_timesteps
        if t.numel() and (bool((s < 0).any()) or bool((t >= T).any()) or bool((s >= t).any())):
            raise ValueError(f"need 0 <= s < t <= {T - 1}")
        m = self.m_t.to(t.device)
        m_t, m_s = m[t], m[s]
        d_t, d_s = 2 * self.max_var * m_t * (1 - m_t), 2 * self.max_var * m_s * (1 - m_s)
        a = (1 - m_t) / (1 - m_s)
        d_ts = 2 * self.max_var * (1 - m_t) * (m_t - m_s) / (1 - m_s)
        c_xt = d_s / d_t * a + d_ts / d_t * (1 - m_s)
        c_yt = m_s - m_t * a * d_s / d_t
        c_eps = (1 - m_s) * d_ts / d_t
        var = d_ts * d_s / d_t
        return PosteriorCoefficients(*(v.to(dtype) for v in (c_xt, c_yt, c_eps, var)))

    def q_posterior(
        self, x_t: Tensor, x0: Tensor, y: Tensor, t: Tensor | int, s: Tensor | int
    ) -> tuple[Tensor, Tensor]:
        """Mean (like x_t) and variance (broadcastable, shape (B, 1, ..., 1)) of q(x_s | x_t, x0, y), s < t."""
        c = self.posterior_coefficients(t, s, dtype=x_t.dtype)
        shape = (-1, *([1] * (x_t.ndim - 1))) if c.c_xt.ndim == 1 else ()
        c_xt, c_yt, c_eps, var = (v.to(x_t.device).reshape(shape) for v in c)
        return c_xt * x_t + c_yt * y - c_eps * (x_t - x0), var

    # -- sampling -----------------------------------------------------------------------------------
    def sample_steps(self, n: int, rule: str = "linear") -> list[int]:
        """Descending timesteps visited by an n-step sampler (one model call each).

        rule "linear" (default): round-half-up of linspace(T-1, 1, n-1), then 0; exactly n distinct steps,
            1 <= n <= T (n = 1: [T-1]; n = 2: [T-1, 0]; n = T: every step). It keeps the public code's
            end points (T-1, ..., 1, 0).
        rule "bbdm": the public BBDM code's "linear" skip list, verbatim: arange(T-1, 1, -((T-1) // (n-2)))
            followed by 1, 0. It does not have n entries in general (n = 200, T = 1000 gives 202) and needs
            3 <= n <= T. Use it only to reproduce published numbers.
        """
        T = self.num_timesteps
        if isinstance(n, Tensor) and n.ndim == 0 and not (n.dtype.is_floating_point or n.dtype == torch.bool):
            n = int(n.item())
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise ValueError(f"the number of sampling steps must be an int, got {n!r}")
        n = operator.index(n)
        if rule == "bbdm":
            if not 3 <= n <= T:
                raise ValueError(f"rule 'bbdm' needs 3 <= n <= num_timesteps={T}, got {n}")
            stride = (T - 1) // (n - 2)
            return list(range(T - 1, 1, -stride)) + [1, 0]
        if rule != "linear":
            raise ValueError(f"unknown rule {rule!r}; choose 'linear' or 'bbdm'")
        if not 1 <= n <= T:
            raise ValueError(f"the number of sampling steps must satisfy 1 <= n <= num_timesteps={T}, got {n}")
        if n == 1:
            return [T - 1]
        k = n - 2  # number of intervals of linspace(T-1, 1, n-1)
        # value_i = 1 + (T-2)(k-i)/k; floor(value_i + 1/2) in exact integer arithmetic (no float ties)
        mid = [1 + (2 * (T - 2) * (k - i) + k) // (2 * k) for i in range(k + 1)] if k > 0 else [T - 1]
        return mid + [0]

# -- the reverse move -------------------------------------------------------------------------------------
def bridge_step(
    bridge: BrownianBridge, x_t: Tensor, y: Tensor, x0_hat: Tensor, t: int, s: int, eta: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One move x_t -> x_s (s < t) given an x0 estimate; all tensors (B, C, H, W).

    x_s = (1 - m_s) x0_hat + m_s y + sqrt(delta_s - sigma^2) eps_hat + sigma z, with
    eps_hat = (x_t - (1 - m_t) x0_hat - m_t y) / sqrt(delta_t), sigma^2 = eta^2 delta_tilde(t, s) and
    z ~ N(0, I). eta = 1 is exactly the posterior q(x_s | x_t, x0_hat, y) (Algorithm 2, with skips);
    eta = 0 keeps eps_hat fixed (DDIM-like): x_s stays on the forward path of x0_hat.
    delta_s - sigma^2 uses delta_s - delta_tilde = 2 s m_s^2 (1 - m_t) / m_t (no cancellation).

    The public BBDM code instead keeps the eta = 1 mean and only scales the noise by eta, so its eta = 0
    is not consistent: the state shrinks towards the posterior mean and loses the eps_hat component.
    """
    m = bridge.m_t
    m_t, m_s, sv = float(m[t]), float(m[s]), bridge.max_var
    d_t = 2 * sv * m_t * (1 - m_t)
    d_tilde = 2 * sv * m_s * (m_t - m_s) / m_t
    sigma2 = eta**2 * d_tilde
    keep = 2 * sv * m_s**2 * (1 - m_t) / m_t + (1 - eta**2) * d_tilde  # = delta_s - sigma^2
    eps_hat = (x_t - (1 - m_t) * x0_hat - m_t * y) / math.sqrt(d_t)
    x_s = (1 - m_s) * x0_hat + m_s * y + math.sqrt(max(keep, 0.0)) * eps_hat
    if sigma2 > 0:
        z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
        x_s = x_s + math.sqrt(sigma2) * z
    return x_s


def check_timesteps(bridge: BrownianBridge, timesteps: Sequence[int] | Tensor) -> list[int]:
    """``timesteps`` as a list of ints, checked: non-empty, within [0, T-1], strictly descending."""
    ts = [int(v) for v in (timesteps.tolist() if isinstance(timesteps, Tensor) else timesteps)]
    if not ts:
        raise ValueError("need at least one timestep")
    if any(v < 0 or v >= bridge.num_timesteps for v in ts):
        raise ValueError(f"timesteps must lie in [0, {bridge.num_timesteps - 1}]")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError("timesteps must be strictly descending")
    return ts

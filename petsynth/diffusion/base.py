"""The protocol every noise process implements, and the helpers the processes share.

A noise process is pure maths (no networks). It says how data ``x0`` is noised for training, where a sampler
starts, which times an n-step sampler visits, what the network is trained to predict, and how to turn that
prediction into an estimate of ``x0`` or into the score of the noised data. Samplers
(:mod:`petsynth.diffusion.samplers`) only use this interface, so a new process (``poisson``, uPETe's) is one
more module implementing it.

Conventions (shapes (B, C, H, W) or any shape with the batch first):

- ``t``: the process's own time. Discrete processes (bridge, gaussian) use integer steps 0..T-1 as a
  LongTensor (B,); continuous ones (ve_sde) use float t in (0, 1]. The network sees the process's
  :meth:`NoiseProcess.model_time` of t (the step itself, or the noise level sigma for the VE-SDE).
- ``y``: a condition the process itself depends on (the bridge's end point); None for processes whose
  forward noising ignores conditions (gaussian, ve_sde), where a method concatenates conditions to the
  network input instead.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["NoiseProcess", "as_batch_times", "expand_like"]


@runtime_checkable
class NoiseProcess(Protocol):
    """What every process provides (see the module docstring for ``t`` and ``y``)."""

    #: what the network predicts: "grad" / "noise" / "ysubx" (bridge), "epsilon" (gaussian), "score" (ve_sde)
    prediction: str

    def timesteps(self, n: int) -> Tensor:
        """The strictly descending times an n-step sampler visits (one network call each), shape (n,)."""
        ...

    def prior_sample(self, shape: tuple[int, ...], *, y: Tensor | None = None,
                     generator: torch.Generator | None = None, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """A draw from where the reverse process starts (the bridge: y itself)."""
        ...

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor | None = None, *, y: Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(x_t, training target): a draw of the noised data at t and what the network should predict."""
        ...

    def training_times(self, batch: int, device: torch.device | str | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """Times drawn for a training batch, shape (batch,) (uniform over the process's time range)."""
        ...

    def model_time(self, t: Tensor) -> Tensor:
        """What the network is given as its time input for process time t, shape (B,)."""
        ...

    def predict_x0(self, x_t: Tensor, t: Tensor, output: Tensor, *, y: Tensor | None = None) -> Tensor:
        """The estimate of x0 implied by the network's ``output`` at (x_t, t)."""
        ...

    def score(self, x_t: Tensor, t: Tensor, output: Tensor, *, y: Tensor | None = None) -> Tensor:
        """The score grad log p_t(x_t) (given y where the process depends on it) implied by ``output``."""
        ...


def as_batch_times(t: Tensor | float | int, batch: int, *, dtype: torch.dtype, device: torch.device | str | None
                   ) -> Tensor:
    """``t`` as a (batch,) tensor: a scalar is repeated, a (batch,) tensor is moved to ``device``/``dtype``."""
    t = torch.as_tensor(t, dtype=dtype, device=device)
    if t.ndim == 0:
        return t.expand(batch).clone()
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or of shape ({batch},), got {tuple(t.shape)}")
    return t


def expand_like(v: Tensor, like: Tensor) -> Tensor:
    """(B,) values shaped (B, 1, ..., 1) to broadcast against ``like`` (B, ...), on its device and dtype."""
    return v.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))

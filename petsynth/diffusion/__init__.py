"""Noise processes and samplers: pure maths with torch, no networks.

One module per process, each implementing :class:`~petsynth.diffusion.base.NoiseProcess`:
:mod:`~petsynth.diffusion.bridge` (Brownian bridge, CPDM/BBDM), :mod:`~petsynth.diffusion.gaussian` (DDPM
with the LDM schedules), :mod:`~petsynth.diffusion.ve_sde` (variance-exploding SDE, JDAM). Samplers are small
pure functions with one signature in :mod:`~petsynth.diffusion.samplers`. :mod:`~petsynth.diffusion.poisson`
(uPETe) is a degradation in image space, not a score process: a re-acquisition at a lower dose.
"""

from petsynth.diffusion import samplers
from petsynth.diffusion.base import NoiseProcess
from petsynth.diffusion.bridge import BrownianBridge, PosteriorCoefficients, bridge_step
from petsynth.diffusion.gaussian import GaussianDiffusion
from petsynth.diffusion.poisson import PoissonDiffusion
from petsynth.diffusion.ve_sde import VESDE

__all__ = ["BrownianBridge", "GaussianDiffusion", "NoiseProcess", "PoissonDiffusion", "PosteriorCoefficients", "VESDE",
           "bridge_step", "samplers"]

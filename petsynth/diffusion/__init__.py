"""Noise processes and samplers: pure maths with torch, no networks."""

from petsynth.diffusion.bridge import (
    BrownianBridge,
    PosteriorCoefficients,
    bridge_step,
    sample_bridge,
    sample_deterministic,
    sample_stochastic,
)

__all__ = [
    "BrownianBridge",
    "PosteriorCoefficients",
    "bridge_step",
    "sample_bridge",
    "sample_deterministic",
    "sample_stochastic",
]

"""Physics: HU -> mu at 511 keV, attenuation maps, projection and Poisson counts. Constants live in
:mod:`petsynth.physics.constants`."""

from petsynth.physics.attenuation import METHODS, attenuation_map, hu_to_mu
from petsynth.physics.projection import ParallelProjector, fbp, mlem, poisson_counts

__all__ = ["METHODS", "ParallelProjector", "attenuation_map", "fbp", "hu_to_mu", "mlem", "poisson_counts"]

"""uPETe's Poisson diffusion (Jiang et al., MICCAI 2023): the forward process re-acquires the image at less dose.

The paper perturbs z_{t-1} into z_t "by imposing a Poisson noise with an expectation of lambda_t, linearly
interpolated from [0, 1] and incremented with t", by "applying Poisson deviates on the projected sinograms"
(its Eq. 1; the noise model of its reference [20]). Here that is defined in image space, as an acquisition:

    x_t = FBP( Poisson( d(t) c exp(-P mu) P x0 ) / (d(t) c exp(-P mu)) ),

with ``x0`` the standard-dose image (SUV, square slices (B, 1, N, N)), ``P`` the parallel-beam projector of
:mod:`petsynth.physics.projection` (line integrals in pixels; ``P mu`` times the pixel size in cm), ``mu`` an
optional attenuation map at 511 keV (cm^-1, from the CT) and ``c = counts_per_suv_ml * voxel_ml / views`` the
expected counts per detector bin and view for a line of one SUV pixel at standard dose (``voxel_ml`` =
pixel_mm^2 x slice_mm / 1000) (the phantom simulator's count level,
:data:`~petsynth.physics.constants.STANDARD_COUNTS_PER_SUV_ML`). FBP (Hann window) reconstructs, so the result
is unbiased (its mean is that of ``x0`` as FBP sees it) and its noise variance is proportional to 1 / d(t).
Independent draws at each t are the marginals q(x_t | x0) of the paper's chain (a thinned Poisson process
is a Poisson process), so training needs no chain.

The schedule (the paper's lambda_t, rising linearly over [0, 1] in T steps):

    lambda_t = t / (T - 1),   d(t) = min_dose ** lambda_t,   t = 0 .. T - 1,

a dose fraction falling from 1 (t = 0, the standard dose) to ``min_dose`` (t = T - 1; 1/100 by default, the
lowest dose of the ultra-low-dose PET challenge's set), evenly in log dose, so that the noise standard
deviation grows as d(t)^(-1/2) = min_dose^(-lambda_t / 2). :meth:`PoissonDiffusion.timestep_for_dose` inverts it.

:meth:`PoissonDiffusion.estimate_dose_fraction` reads a low-dose image's dose fraction off its noise, in this
process's own terms (the dose at which the process's draws are as noisy): the entry step when no header says it.

This is a degradation, not a Gaussian score process: a uPETe denoiser is trained to recover (the latent of)
``x0`` from (the latent of) ``x_t``, and enhancing a low-dose image enters at the step of its own dose.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from petsynth.physics.constants import STANDARD_COUNTS_PER_SUV_ML
from petsynth.physics.projection import FilterName, ParallelProjector, fbp, poisson_counts

__all__ = ["PoissonDiffusion"]


@functools.lru_cache(maxsize=8)
def _projector(size: int, num_angles: int, device: str) -> ParallelProjector:
    return ParallelProjector(size, num_angles, device=device)


class PoissonDiffusion:
    """Poisson diffusion of SUV images (see the module docstring).

    Args:
        num_timesteps: T (>= 2); the paper uses 400.
        min_dose: dose fraction at t = T - 1, in (0, 1).
        counts_per_suv_ml: expected counts per ml of tissue at SUV 1 over the standard acquisition.
        pixel_mm, slice_mm: the slices' pixel size and thickness; with ``counts_per_suv_ml`` they set the
            standard dose's noise level (smaller voxels, fewer counts each, more noise).
        num_angles: projection views (default: the slice size N).
        filter: FBP window ("hann", "shepp-logan" or "ramp").

    Attributes:
        lambdas: (T,) lambda_t = t / (T - 1). dose_fractions: (T,) d(t), float64.
    """

    def __init__(self, num_timesteps: int = 400, min_dose: float = 0.01,
                 counts_per_suv_ml: float = STANDARD_COUNTS_PER_SUV_ML, pixel_mm: float = 4.0,
                 slice_mm: float = 4.0, num_angles: int | None = None, filter: FilterName = "hann"):
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}")
        if not 0 < min_dose < 1:
            raise ValueError(f"min_dose must be in (0, 1), got {min_dose}")
        if min(counts_per_suv_ml, pixel_mm, slice_mm) <= 0:
            raise ValueError("counts_per_suv_ml, pixel_mm and slice_mm must be positive")
        self.num_timesteps = int(num_timesteps)
        self.min_dose = float(min_dose)
        self.counts_per_suv_ml, self.pixel_mm = float(counts_per_suv_ml), float(pixel_mm)
        self.voxel_ml = pixel_mm * pixel_mm * slice_mm / 1000.0
        self.num_angles, self.filter = num_angles, filter
        self.lambdas = torch.arange(self.num_timesteps, dtype=torch.float64) / (self.num_timesteps - 1)
        self.dose_fractions = self.min_dose ** self.lambdas

    def dose_fraction(self, t: Tensor | int) -> Tensor:
        """d(t): 1 at t = 0, ``min_dose`` at t = T - 1 (float64, the shape of ``t``)."""
        t = torch.as_tensor(t, dtype=torch.long)
        if (t < 0).any() or (t >= self.num_timesteps).any():
            raise ValueError(f"t must lie in 0..{self.num_timesteps - 1}")
        return self.dose_fractions[t]

    def timestep_for_dose(self, fraction: float) -> int:
        """The step whose dose fraction is nearest ``fraction`` (in log dose), clamped to 0..T-1; a fraction
        below ``min_dose`` maps to T - 1."""
        fraction = float(fraction)
        if not 0 < fraction <= 1 or not math.isfinite(fraction):
            raise ValueError(f"a dose fraction must be in (0, 1], got {fraction}")
        t = round(math.log(fraction) / math.log(self.min_dose) * (self.num_timesteps - 1))
        return min(max(t, 0), self.num_timesteps - 1)

    def counts_per_bin(self, views: int) -> float:
        """c: expected counts per detector bin and view for a line of one SUV pixel, at standard dose."""
        return self.counts_per_suv_ml * self.voxel_ml / views

    def q_sample(self, x0: Tensor, t: Tensor | int, generator: torch.Generator | None = None,
                 mu: Tensor | None = None) -> Tensor:
        """A draw of x_t: ``x0`` (B, 1, N, N) SUV re-acquired at dose fraction d(t) and reconstructed, in SUV.

        Args:
            x0: standard-dose SUV images, square; what lies outside the slice's inscribed circle (the
                scanner's field of view) is not measured and comes back as it was.
            t: (B,) steps or one step for all.
            generator: for the Poisson deviates (on ``x0``'s device).
            mu: optional (B, 1, N, N) attenuation at 511 keV (cm^-1) on the same pixels: fewer counts survive
                through dense tissue, so the noise follows the anatomy as in a real scan.
        """
        if x0.ndim != 4 or x0.shape[1] != 1 or x0.shape[2] != x0.shape[3]:
            raise ValueError(f"x0 must be (B, 1, N, N) square SUV slices, got {tuple(x0.shape)}")
        batch, _, n, _ = x0.shape
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1).expand(batch) if torch.as_tensor(t).ndim == 0 \
            else torch.as_tensor(t, dtype=torch.long)
        dose = self.dose_fraction(t.cpu()).to(device=x0.device, dtype=torch.float32)  # (B,)
        proj = _projector(n, self.num_angles or n, str(x0.device))
        fov = proj.fov_mask().to(x0.dtype)
        image = x0[:, 0].float().clamp_min(0.0) * fov  # activity is never negative
        survival = torch.ones((batch, proj.num_angles, n), device=x0.device) if mu is None \
            else torch.exp(-proj.forward(mu[:, 0].float() * fov) * (self.pixel_mm / 10.0))
        sensitivity = dose[:, None, None] * self.counts_per_bin(proj.num_angles) * survival
        counts = poisson_counts(sensitivity * proj.forward(image).clamp_min(0.0), generator=generator)
        noisy = fbp(proj, counts / sensitivity, filter=self.filter)
        return (noisy * fov + x0[:, 0].float() * (1 - fov))[:, None].to(x0.dtype)

    @torch.no_grad()
    def estimate_dose_fraction(self, images: Tensor, mu: Tensor | None = None,
                               generator: torch.Generator | None = None) -> float:
        """The dose fraction whose draws of this process are as noisy as ``images`` (B, 1, N, N) SUV (a few
        slices of one study; ``mu`` their attenuation at 511 keV, cm^-1, as for :meth:`q_sample`).

        The noise measure (:func:`noise_index`) is the median absolute deviation of the image's fine detail
        (it minus its Gaussian blur of 1 pixel), relative to sqrt(local SUV), in the flattest 30 % of the body
        (least relative gradient of the image blurred by 2 pixels), where there is least anatomy to mistake
        for noise. The blurred image is re-acquired at d = 1, 1/10 and ``min_dose``, measured the same way on
        the same pixels, a line fitted to log(measure) against log(d), and the image's measure read off it.
        Structure left in the flat regions reads as noise, so nearly noiseless images come out at too low a
        dose (README: measured on phantoms).
        """
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, N, N) SUV slices, got {tuple(images.shape)}")
        x = images.detach().float().cpu().numpy()[:, 0]
        smooth = np.clip(_blur(x, 2.0), 0.0, None)
        mask = _flat_body(smooth)
        if mask.sum() < 50:
            raise ValueError("too little of the image holds activity to estimate its dose from its noise")
        measured = noise_index(x, smooth, mask)
        steps = [0, (self.num_timesteps - 1) // 2, self.num_timesteps - 1]
        reference = torch.from_numpy(smooth)[:, None].to(images.device)
        measures = [noise_index(self.q_sample(reference, t, generator=generator, mu=mu)[:, 0].cpu().numpy(),
                                smooth, mask) for t in steps]
        slope, intercept = np.polyfit(np.log(self.dose_fraction(torch.tensor(steps)).numpy()), np.log(measures), 1)
        if not slope < 0 or measured <= 0:
            raise ValueError("the image's noise does not tell its dose (no noise measured, or none that falls "
                             "with dose)")
        return float(min(1.0, max(self.min_dose, math.exp((math.log(measured) - intercept) / slope))))


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Slices (B, N, N) blurred in-plane by a Gaussian of ``sigma`` pixels (borders replicated)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(0.0, sigma, sigma), mode="nearest", truncate=3.0)


def _flat_body(smooth: np.ndarray, fraction: float = 0.3) -> np.ndarray:
    """Pixels above 10 % of their slice's maximum (the body's activity) whose relative gradient is among the
    lowest ``fraction`` of those: (B, N, N) bool."""
    gy, gx = np.gradient(smooth, axis=(1, 2))
    relative = np.hypot(gy, gx) / np.maximum(smooth, 1e-3)
    body = smooth > 0.1 * smooth.max(axis=(1, 2), keepdims=True)
    if not body.any():
        return body
    return body & (relative < np.quantile(relative[body], fraction))


def noise_index(x: np.ndarray, smooth: np.ndarray, mask: np.ndarray) -> float:
    """Median absolute deviation of (x - blur(x, 1 px)) / sqrt(smooth) over ``mask``: a Poisson image's
    noise, about proportional to 1 / sqrt(dose). x, smooth (B, N, N) SUV; mask (B, N, N) bool."""
    detail = ((x - _blur(x, 1.0)) / np.sqrt(np.maximum(smooth, 1e-3)))[mask]
    return float(np.median(np.abs(detail - np.median(detail))))

"""Classical low-dose PET denoisers, methods that need no training: ``gaussian-filter``, ``nlm``, and
``low-dose`` (the low-dose PET itself, the row every enhancement is compared with).

The baselines uPETe and every low-dose -> standard-dose method is compared with (issue: uPETe): what a
scanner's post-filter does, and non-local means. Each works slice by slice in SUV on the low-dose PET (the
source), at the slices' own pixel spacing (``batch["spacing_mm"]``), and ignores the CT. They are used by name
wherever a model is (``petsynth translate gaussian-filter ...``, ``petsynth evaluate nlm ...``); training one
is an error that says so. Settings by ``--sampler`` options (``fwhm_mm``; ``strength``, ``patch_mm``,
``search_mm``) or defaults.

- ``gaussian-filter``: SUV convolved with a Gaussian of ``fwhm_mm`` (scipy.ndimage; sigma = FWHM / 2.355 in
  pixels; mirrored at the borders, so SUV is conserved).
- ``nlm``: scikit-image's non-local means (Buades et al. 2005, fast mode) with the filter strength h =
  ``strength`` x the slice's noise standard deviation (scikit-image's wavelet estimate), patches of
  ``patch_mm`` and a search window of ``search_mm``, converted to pixels. Reconstructed PET noise is
  spatially correlated, and the wavelet estimate (finest scale) sees only part of it, hence the default
  strength of 2 (on an FBP phantom slice at 10 % dose, 4 mm pixels: noise down to 0.74 of itself at 1.5,
  0.45 at 3; the mean kept within 1 %).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from petsynth.config import Config
from petsynth.methods.base import Method, MethodError, register

#: FWHM of a Gaussian in units of its standard deviation, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


class GaussianFilterOptions(Config):
    fwhm_mm: float | None = Field(None, gt=0, description="FWHM of the Gaussian (default: the config's)")


class GaussianFilterConfig(Config):
    fwhm_mm: float = Field(6.0, gt=0, description="FWHM of the Gaussian, mm")


class NLMOptions(Config):
    strength: float | None = Field(None, gt=0, description="h in units of the slice's noise sigma")
    patch_mm: float | None = Field(None, gt=0, description="patch side, mm")
    search_mm: float | None = Field(None, gt=0, description="search distance, mm")


class NLMConfig(Config):
    strength: float = Field(2.0, gt=0, description="h in units of the slice's noise sigma")
    patch_mm: float = Field(12.0, gt=0, description="patch side, mm")
    search_mm: float = Field(30.0, gt=0, description="search distance, mm")


class _TrainingFree(Method):
    """A denoiser of the low-dose PET with no weights: translate only."""

    tasks: ClassVar[tuple[str, ...]] = ("lpet2spet",)
    needs_training: ClassVar[bool] = False

    def optimizer_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {}

    def losses(self, batch: Mapping[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        raise MethodError(f"{self.name} needs no training: use it by name in translate and evaluate")

    @torch.no_grad()
    def translate(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                  **options: Any) -> torch.Tensor:
        """The denoised source, (B, 1, H, W) SUV; the batch must say its pixel spacing ("spacing_mm")."""
        settings = self.config.model_copy(update=self.sampler_options(options).model_dump(exclude_none=True))
        source = batch["source"]
        spacings = batch.get("spacing_mm")
        if spacings is None:
            raise MethodError(f"{self.name} needs the slices' pixel spacing (batch['spacing_mm'])")
        out = np.empty(source.shape, dtype=np.float32)
        for b, image in enumerate(source[:, 0].detach().cpu().numpy().astype(np.float64)):
            dy, dx = (float(v) for v in spacings[b])
            out[b, 0] = self._denoise(image, (dy, dx), settings)
        return torch.from_numpy(out).to(source.device)

    def _denoise(self, image: np.ndarray, spacing_mm: tuple[float, float], settings: Config) -> np.ndarray:
        raise NotImplementedError


@register
class GaussianFilter(_TrainingFree):
    name = "gaussian-filter"
    summary = "low-dose PET smoothed by a Gaussian of fwhm_mm (no training; lpet2spet baseline)"
    config_class = GaussianFilterConfig
    sampler_options_class = GaussianFilterOptions

    def _denoise(self, image, spacing_mm, settings):
        from scipy.ndimage import gaussian_filter

        sigma = [settings.fwhm_mm / FWHM_PER_SIGMA / s for s in spacing_mm]
        return gaussian_filter(image, sigma=sigma, mode="mirror")


@register
class NonLocalMeans(_TrainingFree):
    name = "nlm"
    summary = "low-dose PET denoised by non-local means, h from its noise (no training; lpet2spet baseline)"
    config_class = NLMConfig
    sampler_options_class = NLMOptions

    def _denoise(self, image, spacing_mm, settings):
        from skimage.restoration import denoise_nl_means, estimate_sigma

        pixel = min(spacing_mm)
        sigma = float(estimate_sigma(image))
        if sigma <= 0:  # a noise-free (e.g. constant) slice: nothing to remove
            return image
        patch = max(3, int(round(settings.patch_mm / pixel)) | 1)
        search = max(1, int(round(settings.search_mm / pixel)))
        return denoise_nl_means(image, patch_size=patch, patch_distance=search, h=settings.strength * sigma,
                                sigma=sigma, fast_mode=True, preserve_range=True)


@register
class LowDose(_TrainingFree):
    name = "low-dose"
    summary = "the low-dose PET itself, not enhanced: the reference row of a comparison (lpet2spet)"
    config_class = Config

    def _denoise(self, image, spacing_mm, settings):
        return image

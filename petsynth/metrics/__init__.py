"""Image metrics and SUV metrics, each with an explicit data range and one value per image.

Image metrics take (B, 1, H, W) ``pred`` and ``target`` and a required keyword ``data_range``;
they return float64 tensors of shape (B,):

    mae, psnr, ssim (convention "gaussian" | "cpdm"), ms_ssim, vif, lpips

SUV metrics (``suv_mae``, ``suv_bias``, ``high_uptake_mask``) take SUV tensors of shape (B, ...).
CPDM paper mode: ``to_cpdm_scale(stored_pet)`` then ``data_range=1.0`` (see :mod:`.image`).
LPIPS needs user-supplied weight files (:func:`lpips_available`, :class:`LPIPSUnavailable`).
"""

from petsynth.metrics.image import (
    CPDM_PET_SCALE,
    MS_SSIM_MIN_SIZE,
    VIF_MIN_SIZE,
    mae,
    ms_ssim,
    nrmse,
    psnr,
    ssim,
    to_cpdm_scale,
    vif,
)
from petsynth.metrics.perceptual import LPIPS, LPIPSUnavailable, find_weights, lpips, lpips_available
from petsynth.metrics.suv import (
    DEFAULT_SUV_THRESHOLD,
    EANM_FRACTION_OF_MAX,
    SUVBias,
    high_uptake_mask,
    suv_bias,
    suv_mae,
)

__all__ = [
    "CPDM_PET_SCALE",
    "DEFAULT_SUV_THRESHOLD",
    "EANM_FRACTION_OF_MAX",
    "LPIPS",
    "LPIPSUnavailable",
    "MS_SSIM_MIN_SIZE",
    "SUVBias",
    "VIF_MIN_SIZE",
    "find_weights",
    "high_uptake_mask",
    "lpips",
    "lpips_available",
    "mae",
    "ms_ssim",
    "nrmse",
    "psnr",
    "ssim",
    "suv_bias",
    "suv_mae",
    "to_cpdm_scale",
    "vif",
]

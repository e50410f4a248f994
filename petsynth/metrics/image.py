"""Full-reference image metrics: MAE, PSNR, SSIM, MS-SSIM and pixel-domain VIF.

Every function takes ``pred`` and ``target`` of shape (B, 1, H, W) (any real dtype), a REQUIRED
keyword ``data_range`` (the width of the intensity range, in the images' units: a float, or a
tensor of shape (B,) for one range per image) and returns a float64 tensor of shape (B,), one value
per image. Computation is in float64. Arguments are ``(pred, target)``: the target is the reference.

SSIM and MS-SSIM match scikit-image ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`` and ``pytorch_msssim`` (valid region only, no padding). torchmetrics
pads borders and differs (~0.01 on noisy images): do not compare numbers across the two.

To compare with the CPDM paper, map stored PET values with :func:`to_cpdm_scale` and call
``ssim(..., data_range=1.0, convention="cpdm")`` (scikit-image defaults, see :func:`ssim`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from petsynth.data.intensity import CPDM_PET_MAX_STORED

__all__ = [
    "CPDM_PET_SCALE",
    "MS_SSIM_MIN_SIZE",
    "VIF_MIN_SIZE",
    "mae",
    "ms_ssim",
    "psnr",
    "ssim",
    "to_cpdm_scale",
    "vif",
]

# --- SSIM: Wang Z, Bovik AC, Sheikh HR, Simoncelli EP (2004). Image quality assessment: from error
# visibility to structural similarity. IEEE Trans Image Process 13(4):600-612.
#: Stabilising constants C1 = (K1 L)^2, C2 = (K2 L)^2, L = data range (Wang et al. 2004, eq. 7, 9).
SSIM_K1: float = 0.01
SSIM_K2: float = 0.03
#: 11x11 circular-symmetric Gaussian window, sigma 1.5 (Wang et al. 2004, sec. III-C). scikit-image's
#: gaussian_weights with truncate=3.5 gives the same width: 2*int(3.5*1.5 + 0.5) + 1 = 11.
SSIM_GAUSSIAN_WINDOW: int = 11
SSIM_GAUSSIAN_SIGMA: float = 1.5
#: scikit-image ``structural_similarity`` defaults, which the CPDM evaluation uses: a 7x7 uniform
#: window and the unbiased (sample) covariance, i.e. variances scaled by N/(N-1), N = 49.
CPDM_SSIM_WINDOW: int = 7

# --- MS-SSIM: Wang Z, Simoncelli EP, Bovik AC (2003). Multiscale structural similarity for image
# quality assessment. Asilomar Conf. Signals, Systems and Computers, 1398-1402.
#: Per-scale exponents, finest scale first (Wang et al. 2003, sec. 3.1).
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Smallest side for 5 scales with 2x2 pooling and an 11-pixel window at the coarsest scale:
#: (11 - 1) * 2**4 + 1 (the same bound pytorch_msssim asserts).
MS_SSIM_MIN_SIZE: int = (SSIM_GAUSSIAN_WINDOW - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1

# --- VIF, pixel domain: Sheikh HR, Bovik AC (2006). Image information and visual quality.
# IEEE Trans Image Process 15(2):430-444; the multiscale pixel-domain form of LIVE's vifp_mscale.m.
#: Variance of the visual (HVS) noise, defined for images on a 0..255 scale (vifp_mscale.m).
VIF_SIGMA_NSQ: float = 2.0
#: Intensity scale on which VIF_SIGMA_NSQ is defined: inputs are rescaled so data_range maps to it.
VIF_REFERENCE_RANGE: float = 255.0
#: Variance floor below which a local patch counts as flat (vifp_mscale.m).
VIF_EPS: float = 1e-10
#: Number of scales; scale s (1..4) uses an N x N Gaussian, N = 2**(5 - s) + 1, sigma N / 5.
VIF_SCALES: int = 4

# --- CPDM paper mode.
#: CPDM's public code divides stored PET values (16-bit signed DICOM pixel values, max 2**15 - 1)
#: by 2**15 - 1 before evaluation, and evaluates SSIM with data range 1 (the CPDM paper's convention, see petsynth.evaluate).
#: Defined once, with the intensity transforms.
CPDM_PET_SCALE: int = CPDM_PET_MAX_STORED

SSIMConvention = Literal["gaussian", "cpdm"]


def to_cpdm_scale(stored_pet: Tensor) -> Tensor:
    """Map stored PET values (DICOM pixel units) to the CPDM paper's scale: ``value / (2**15 - 1)``."""
    return stored_pet / CPDM_PET_SCALE


# ----------------------------------------------------------------------------------------------------
# helpers


def _check_pair(pred: Tensor, target: Tensor, *, min_size: int = 1, what: str = "metric") -> None:
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"{what}: pred and target must be torch tensors")
    if pred.shape != target.shape:
        raise ValueError(
            f"{what}: pred and target must have the same shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    if pred.ndim != 4 or pred.shape[1] != 1:
        raise ValueError(f"{what}: expected (B, 1, H, W) tensors, got shape {tuple(pred.shape)}")
    h, w = pred.shape[-2:]
    if min(h, w) < min_size:
        raise ValueError(
            f"{what} needs images of at least {min_size}x{min_size} pixels, got {h}x{w}"
        )


def _range(data_range: float | Tensor, batch: int, device: torch.device) -> Tensor:
    """Data range as a float64 tensor of shape (B, 1, 1, 1); must be positive and finite."""
    r = torch.as_tensor(data_range, dtype=torch.float64, device=device)
    if r.ndim == 0:
        r = r.expand(batch)
    elif r.shape != (batch,):
        raise ValueError(f"data_range must be a number or a tensor of shape ({batch},), got {tuple(r.shape)}")
    if not bool(torch.all(torch.isfinite(r) & (r > 0))):
        raise ValueError(f"data_range must be positive and finite, got {data_range}")
    return r.reshape(batch, 1, 1, 1)


def _f64(x: Tensor) -> Tensor:
    return x.to(torch.float64)


def _gaussian_1d(size: int, sigma: float) -> Tensor:
    """Normalised 1-D Gaussian of ``size`` taps centred on the middle tap (float64)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _uniform_1d(size: int) -> Tensor:
    return torch.full((size,), 1.0 / size, dtype=torch.float64)


def _filter_valid(x: Tensor, kernel: Tensor) -> Tensor:
    """Separable filtering of (..., H, W) with a 1-D kernel along H then W, valid region only.

    Written as a sum of shifted slices: in float64 on CPU this is ~4x faster than conv2d.
    """
    taps = kernel.tolist()
    for dim in (-2, -1):
        size = x.shape[dim] - len(taps) + 1
        acc = x.narrow(dim, 0, size) * taps[0]
        for k in range(1, len(taps)):
            acc = torch.add(acc, x.narrow(dim, k, size), alpha=taps[k])
        x = acc
    return x


def _ssim_maps(
    x: Tensor, y: Tensor, kernel: Tensor, c1: Tensor, c2: Tensor, cov_norm: float = 1.0
) -> tuple[Tensor, Tensor]:
    """SSIM and contrast-structure maps over the valid region, each (B, 1, H', W')."""
    stats = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), kernel)
    mu_x, mu_y, m_xx, m_yy, m_xy = stats.split(1, dim=1)
    var_x = cov_norm * (m_xx - mu_x * mu_x)
    var_y = cov_norm * (m_yy - mu_y * mu_y)
    cov = cov_norm * (m_xy - mu_x * mu_y)
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return luminance * cs, cs


def _per_image_mean(x: Tensor) -> Tensor:
    return x.mean(dim=(1, 2, 3))


# ----------------------------------------------------------------------------------------------------
# metrics


def mae(pred: Tensor, target: Tensor, *, data_range: float | Tensor, normalize: bool = False) -> Tensor:
    """Mean absolute error per image, (B,).

    In the images' units (e.g. SUV, or stored PET units in CPDM paper mode). ``data_range`` is
    required for a uniform signature across metrics; it is used only with ``normalize=True``, which
    returns MAE / data_range (a fraction of the range).
    """
    _check_pair(pred, target, what="MAE")
    r = _range(data_range, pred.shape[0], pred.device)
    err = _per_image_mean((_f64(pred) - _f64(target)).abs())
    return err / r.flatten() if normalize else err


def psnr(pred: Tensor, target: Tensor, *, data_range: float | Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, (B,): ``10 log10(data_range**2 / MSE)``.

    Identical images give +inf (as scikit-image's ``peak_signal_noise_ratio``).
    """
    _check_pair(pred, target, what="PSNR")
    r = _range(data_range, pred.shape[0], pred.device).flatten()
    mse = _per_image_mean((_f64(pred) - _f64(target)) ** 2)
    return 10 * torch.log10(r**2 / mse)


def nrmse(pred: Tensor, target: Tensor, *, data_range: float | Tensor | None = None) -> Tensor:
    """Normalised root-mean-square error per image, (B,): ``||pred - target||_2 / ||target||_2`` (scikit-image's
    ``normalized_root_mse`` with its default "euclidean" normalisation).
    ``data_range`` is accepted for a uniform signature and not used. A zero target gives +inf."""
    _check_pair(pred, target, what="NRMSE")
    err = _per_image_mean((_f64(pred) - _f64(target)) ** 2)
    return torch.sqrt(err / _per_image_mean(_f64(target) ** 2))


def ssim(
    pred: Tensor,
    target: Tensor,
    *,
    data_range: float | Tensor,
    convention: SSIMConvention = "gaussian",
) -> Tensor:
    """Structural similarity per image, (B,): the mean of the SSIM map over the valid region.

    The valid region is where the whole window fits inside the image (no padding), as in Wang et al.
    2004; K1 = 0.01, K2 = 0.03, C1 = (K1 data_range)^2, C2 = (K2 data_range)^2.

    convention:
        ``"gaussian"`` (default, Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, population
        (biased) local variances. Equals ``skimage.metrics.structural_similarity(gaussian_weights=True,
        sigma=1.5, use_sample_covariance=False, data_range=...)`` and ``pytorch_msssim.ssim``.
        Images need at least 11x11 pixels.
        ``"cpdm"`` (the CPDM paper's evaluation): scikit-image's defaults, a 7x7 uniform window and
        sample (unbiased, N/(N-1)) local variances. Equals ``structural_similarity(a, b,
        data_range=...)`` with no other options. The paper applied it to ``to_cpdm_scale(stored)``
        with ``data_range=1.0``. Images need at least 7x7 pixels.
    """
    if convention == "gaussian":
        kernel, cov_norm = _gaussian_1d(SSIM_GAUSSIAN_WINDOW, SSIM_GAUSSIAN_SIGMA), 1.0
    elif convention == "cpdm":
        n = CPDM_SSIM_WINDOW**2
        kernel, cov_norm = _uniform_1d(CPDM_SSIM_WINDOW), n / (n - 1)
    else:
        raise ValueError(f"unknown SSIM convention {convention!r}; use 'gaussian' or 'cpdm'")
    _check_pair(pred, target, min_size=kernel.numel(), what=f"SSIM ({convention} window {kernel.numel()})")
    r = _range(data_range, pred.shape[0], pred.device)
    s, _ = _ssim_maps(_f64(pred), _f64(target), kernel, (SSIM_K1 * r) ** 2, (SSIM_K2 * r) ** 2, cov_norm)
    return _per_image_mean(s)


def ms_ssim(pred: Tensor, target: Tensor, *, data_range: float | Tensor) -> Tensor:
    """Multi-scale SSIM per image, (B,), as ``pytorch_msssim.ms_ssim`` computes it.

    Five scales with exponents :data:`MS_SSIM_WEIGHTS`; the 11x11 Gaussian window (sigma 1.5) and
    valid-region means at every scale; between scales 2x2 average pooling with stride 2. As in
    pytorch_msssim, a side of odd length is zero-padded by one pixel on each side before pooling and
    the padding counts in the average. The contrast-structure terms (scales 1-4) and the SSIM of the
    coarsest scale are clamped at 0 before the exponents (so the result lies in [0, 1]).
    Images need at least :data:`MS_SSIM_MIN_SIZE` (161) pixels on each side.
    """
    _check_pair(pred, target, min_size=MS_SSIM_MIN_SIZE, what="MS-SSIM (5 scales, window 11)")
    r = _range(data_range, pred.shape[0], pred.device)
    c1, c2 = (SSIM_K1 * r) ** 2, (SSIM_K2 * r) ** 2
    kernel = _gaussian_1d(SSIM_GAUSSIAN_WINDOW, SSIM_GAUSSIAN_SIGMA)
    x, y = _f64(pred), _f64(target)
    terms = []
    for scale in range(len(MS_SSIM_WEIGHTS)):
        s_map, cs_map = _ssim_maps(x, y, kernel, c1, c2)
        if scale < len(MS_SSIM_WEIGHTS) - 1:
            terms.append(_per_image_mean(cs_map).clamp_min(0))
            pad = (x.shape[-2] % 2, x.shape[-1] % 2)
            x = F.avg_pool2d(x, kernel_size=2, padding=pad)
            y = F.avg_pool2d(y, kernel_size=2, padding=pad)
    terms.append(_per_image_mean(s_map).clamp_min(0))
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=torch.float64, device=x.device)
    return torch.prod(torch.stack(terms) ** weights[:, None], dim=0)


def _vif_windows() -> list[int]:
    return [2 ** (VIF_SCALES - s) + 1 for s in range(VIF_SCALES)]  # 17, 9, 5, 3


def _vif_min_size() -> int:
    """Smallest side for which every VIF scale still has a valid region."""
    for size in range(1, 10_000):
        side, ok = size, True
        for s, n in enumerate(_vif_windows()):
            if s > 0:
                side = math.ceil((side - n + 1) / 2) if side >= n else 0
            if side < n:
                ok = False
                break
        if ok:
            return size
    raise AssertionError("unreachable")


#: Smallest image side for the 4-scale pixel-domain VIF (41 pixels).
VIF_MIN_SIZE: int = _vif_min_size()


def vif(pred: Tensor, target: Tensor, *, data_range: float | Tensor) -> Tensor:
    """Pixel-domain visual information fidelity per image, (B,) (Sheikh & Bovik 2006, vifp_mscale).

    ``target`` is the reference, ``pred`` the distorted image; VIF is not symmetric. Images are first
    rescaled so that ``data_range`` spans 255, the scale on which the HVS noise variance
    sigma_nsq = 2 is defined. Four scales, N x N Gaussian windows N = 17, 9, 5, 3 with sigma N/5,
    valid filtering, then (from scale 2) filtering and keeping every second pixel. VIF = sum of
    information kept / sum of reference information over all scales and positions. 1 for identical
    images, < 1 for distortions, > 1 possible for contrast enhancement; NaN for a flat reference
    (no information). Images need at least :data:`VIF_MIN_SIZE` (41) pixels on each side.
    """
    _check_pair(pred, target, min_size=VIF_MIN_SIZE, what="VIF (4 scales)")
    gain = VIF_REFERENCE_RANGE / _range(data_range, pred.shape[0], pred.device)
    ref, dist = _f64(target) * gain, _f64(pred) * gain
    num = torch.zeros(pred.shape[0], dtype=torch.float64, device=pred.device)
    den = torch.zeros_like(num)
    for s, n in enumerate(_vif_windows()):
        kernel = _gaussian_1d(n, n / 5)
        if s > 0:
            ref, dist = _filter_valid(torch.cat([ref, dist], dim=1), kernel)[..., ::2, ::2].split(1, dim=1)
        stats = _filter_valid(torch.cat([ref, dist, ref * ref, dist * dist, ref * dist], dim=1), kernel)
        mu_r, mu_d, m_rr, m_dd, m_rd = stats.split(1, dim=1)
        var_r = (m_rr - mu_r * mu_r).clamp_min(0)
        var_d = (m_dd - mu_d * mu_d).clamp_min(0)
        cov = m_rd - mu_r * mu_d
        g = cov / (var_r + VIF_EPS)  # gain of the distortion channel d = g r + v
        sv = var_d - g * cov  # variance of the additive distortion noise v
        # Degenerate patches, in vifp_mscale.m's order: flat reference, flat distorted, negative gain.
        flat_r = var_r < VIF_EPS
        g = torch.where(flat_r, 0.0, g)
        sv = torch.where(flat_r, var_d, sv)
        var_r = torch.where(flat_r, 0.0, var_r)
        flat_d = var_d < VIF_EPS
        g = torch.where(flat_d, 0.0, g)
        sv = torch.where(flat_d, 0.0, sv)
        sv = torch.where(g < 0, var_d, sv)
        g = g.clamp_min(0)
        sv = sv.clamp_min(VIF_EPS)
        num += torch.log10(1 + g * g * var_r / (sv + VIF_SIGMA_NSQ)).sum(dim=(1, 2, 3))
        den += torch.log10(1 + var_r / VIF_SIGMA_NSQ).sum(dim=(1, 2, 3))
    return num / den

"""SUV-domain metrics: MAE in SUV and SUVmean / SUVmax bias in high-uptake regions of the reference.

Inputs are SUVbw (unitless, g/mL) tensors of shape (B, ...) — e.g. (B, 1, H, W) slices or
(B, 1, D, H, W) volumes — reduced over everything but the batch axis. Outputs are float64 (B,).

Regions are defined on the REFERENCE (``target``) and both images are measured inside them. A
region is, per image, exactly one of:

- ``threshold``: voxels with target >= threshold SUV (default :data:`DEFAULT_SUV_THRESHOLD` = 2.5);
- ``fraction_of_max``: voxels with target >= fraction * max(target) of that image (e.g.
  :data:`EANM_FRACTION_OF_MAX` = 0.41); empty when the image maximum is <= 0;
- ``mask``: a user label mask of the same shape (nonzero = inside).

An image whose region is empty gets NaN for every region statistic ("no such region in this
image", not zero error); ``n_voxels`` is then 0. Aggregate with ``torch.nanmean``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_SUV_THRESHOLD",
    "EANM_FRACTION_OF_MAX",
    "SUVBias",
    "high_uptake_mask",
    "suv_bias",
    "suv_mae",
]

#: Fixed SUVbw cut-off for FDG-avid (high-uptake) tissue, the long-standing clinical convention
#: (e.g. Lowe VJ et al. 1998, J Clin Oncol 16(3):1075-1084: SUV 2.5 separating malignant nodules).
DEFAULT_SUV_THRESHOLD: float = 2.5
#: Relative threshold for tumour volumes: 41% of SUVmax (EANM FDG PET/CT guideline v2.0,
#: Boellaard R et al. 2015, Eur J Nucl Med Mol Imaging 42:328-354).
EANM_FRACTION_OF_MAX: float = 0.41


@dataclass(frozen=True)
class SUVBias:
    """Region statistics per image, each a (B,) tensor; NaN where the region is empty.

    ``*_bias`` = pred - ref in SUV; ``*_rel_bias`` = (pred - ref) / ref, a fraction (0.1 = +10%).
    SUVmax of ``pred`` is its maximum inside the reference region.
    """

    n_voxels: Tensor
    suvmean_ref: Tensor
    suvmean_pred: Tensor
    suvmean_bias: Tensor
    suvmean_rel_bias: Tensor
    suvmax_ref: Tensor
    suvmax_pred: Tensor
    suvmax_bias: Tensor
    suvmax_rel_bias: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        return asdict(self)


def _check(pred: Tensor, target: Tensor, mask: Tensor | None, what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{what}: pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if target.ndim < 2:
        raise ValueError(f"{what}: expected (B, ...) tensors with at least 2 dimensions, got {tuple(pred.shape)}")
    if mask is not None and mask.shape != target.shape:
        raise ValueError(f"{what}: mask must have the images' shape {tuple(target.shape)}, not {tuple(mask.shape)}")


def _dims(x: Tensor) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def high_uptake_mask(
    target: Tensor, *, threshold: float | None = None, fraction_of_max: float | None = None
) -> Tensor:
    """Boolean mask of high-uptake voxels of the reference, same shape as ``target`` (SUV).

    Give at most one of ``threshold`` (SUV) and ``fraction_of_max`` (0..1 of each image's maximum);
    with neither, ``threshold = DEFAULT_SUV_THRESHOLD`` (2.5 SUV). Voxels at the cut-off are inside.
    """
    if threshold is not None and fraction_of_max is not None:
        raise ValueError("give either threshold or fraction_of_max, not both")
    if target.ndim < 2:
        raise ValueError(f"expected a (B, ...) tensor with at least 2 dimensions, got {tuple(target.shape)}")
    if fraction_of_max is not None:
        if not 0 < fraction_of_max <= 1:
            raise ValueError(f"fraction_of_max must be in (0, 1], got {fraction_of_max}")
        peak = target.amax(dim=_dims(target), keepdim=True)
        return (target >= fraction_of_max * peak) & (peak > 0)
    cut = DEFAULT_SUV_THRESHOLD if threshold is None else threshold
    return target >= cut


def suv_mae(pred: Tensor, target: Tensor, *, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error in SUV per image, (B,), over the whole image or inside ``mask``.

    NaN for an image whose mask is empty.
    """
    _check(pred, target, mask, "suv_mae")
    err = (pred.to(torch.float64) - target.to(torch.float64)).abs()
    if mask is None:
        return err.mean(dim=_dims(err))
    inside = mask.to(torch.bool)
    n = inside.sum(dim=_dims(err))
    total = torch.where(inside, err, 0.0).sum(dim=_dims(err))
    return torch.where(n > 0, total / n.clamp_min(1), torch.nan)


def suv_bias(
    pred: Tensor,
    target: Tensor,
    *,
    threshold: float | None = None,
    fraction_of_max: float | None = None,
    mask: Tensor | None = None,
) -> SUVBias:
    """SUVmean and SUVmax of pred and reference inside the reference's high-uptake region, and their bias.

    The region is ``mask`` when given, else :func:`high_uptake_mask` of ``target`` with ``threshold``
    (SUV, default 2.5) or ``fraction_of_max``; give at most one of the three. Returns
    :class:`SUVBias` of (B,) tensors, NaN where an image's region is empty.
    """
    _check(pred, target, mask, "suv_bias")
    if mask is not None:
        if threshold is not None or fraction_of_max is not None:
            raise ValueError("give a mask, or threshold / fraction_of_max, not both")
        region = mask.to(torch.bool)
    else:
        region = high_uptake_mask(target, threshold=threshold, fraction_of_max=fraction_of_max)
    p, t = pred.to(torch.float64), target.to(torch.float64)
    dims = _dims(t)
    n = region.sum(dim=dims)
    empty = n == 0

    def region_mean(x: Tensor) -> Tensor:
        return torch.where(empty, torch.nan, torch.where(region, x, 0.0).sum(dim=dims) / n.clamp_min(1))

    def region_max(x: Tensor) -> Tensor:
        return torch.where(empty, torch.nan, torch.where(region, x, -torch.inf).amax(dim=dims))

    mean_ref, mean_pred = region_mean(t), region_mean(p)
    max_ref, max_pred = region_max(t), region_max(p)
    return SUVBias(
        n_voxels=n,
        suvmean_ref=mean_ref,
        suvmean_pred=mean_pred,
        suvmean_bias=mean_pred - mean_ref,
        suvmean_rel_bias=(mean_pred - mean_ref) / mean_ref,
        suvmax_ref=max_ref,
        suvmax_pred=max_pred,
        suvmax_bias=max_pred - max_ref,
        suvmax_rel_bias=(max_pred - max_ref) / max_ref,
    )

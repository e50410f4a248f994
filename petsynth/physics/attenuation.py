"""CT numbers (HU) -> linear attenuation coefficient mu at 511 keV, and CPDM's Attenuation map.

Two published piecewise-linear scalings, with their tables in :mod:`petsynth.physics.constants`:

- ``"bilinear"``: Carney et al. 2006 (kVp 80, 100, 110, 120, 130, 140).
- ``"trilinear"``: Abella et al. 2012 (kVp 80, 100, 120, 140), the one CPDM cites.

Between tabulated tube voltages, mu is interpolated linearly in kVp between the two neighbouring
tabulated curves; outside 80..140 kVp a ValueError is raised. mu is clipped at 0 (air and below).
Both functions take numpy arrays or torch tensors and return the same kind (float32 unless the
input is float64); ``kvp`` may be a scalar or an array/tensor broadcastable against ``hu``
(for example shape (B, 1, 1, 1) for one kVp per image of a batch).
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
import torch

from petsynth.physics import constants as C

ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor)
Method = Literal["bilinear", "trilinear"]
METHODS: tuple[str, ...] = ("bilinear", "trilinear")


def _carney_curve(hu: torch.Tensor, kvp: int) -> torch.Tensor:
    a, b, break_hu = C.CARNEY_2006_TABLE[kvp]
    shifted = hu - C.HU_AIR
    soft = C.CARNEY_SOFT_TISSUE_SLOPE * shifted
    bone = a * shifted + b
    return torch.where(hu <= break_hu, soft, bone)


def _abella_curve(hu: torch.Tensor, kvp: int) -> torch.Tensor:
    mid, high = C.ABELLA_MID_SLOPE[kvp], C.ABELLA_HIGH_SLOPE[kvp]
    water, brk = C.ABELLA_WATER_MU, C.ABELLA_BONE_BREAK_HU
    low_part = water + C.ABELLA_LOW_SLOPE * hu
    mid_part = water + mid * hu
    high_part = water + mid * brk + high * (hu - brk)
    return torch.where(hu <= 0, low_part, torch.where(hu <= brk, mid_part, high_part))


_CURVES = {"bilinear": (_carney_curve, tuple(sorted(C.CARNEY_2006_TABLE))),
           "trilinear": (_abella_curve, tuple(sorted(C.ABELLA_MID_SLOPE)))}


def _check_method(method: str) -> None:
    if method not in _CURVES:
        raise ValueError(f"unknown HU->mu method {method!r}; choose one of {METHODS}")


def _to_torch(x, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if dtype is not None:
        return t.to(dtype)
    return t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)


def _check_kvp(kvp: torch.Tensor) -> None:
    lo, hi = C.KVP_RANGE
    if not torch.isfinite(kvp).all() or (kvp < lo).any() or (kvp > hi).any():
        bad = kvp[~((kvp >= lo) & (kvp <= hi))].flatten()[:3].tolist()
        raise ValueError(f"tube voltage {bad} kVp is outside the tabulated range {lo:g}..{hi:g} kVp "
                         "of the HU->mu tables; pass the CT's KVP (0018,0060)")


def _hu_to_mu_torch(hu: torch.Tensor, kvp: torch.Tensor, method: str) -> torch.Tensor:
    curve, table_kvps = _CURVES[method]
    _check_kvp(kvp)
    knots = torch.tensor(table_kvps, dtype=hu.dtype, device=hu.device)
    kvp = kvp.to(device=hu.device, dtype=hu.dtype)
    # hat-function weights: mu = sum_k w_k(kVp) * curve_k(HU), exact at the tabulated kVp
    mu = torch.zeros(torch.broadcast_shapes(hu.shape, kvp.shape), dtype=hu.dtype, device=hu.device)
    for i, k in enumerate(table_kvps):
        left = knots[i - 1] if i > 0 else None
        right = knots[i + 1] if i + 1 < len(table_kvps) else None
        w = torch.zeros_like(kvp)
        if left is not None:
            w = torch.where((kvp >= left) & (kvp <= knots[i]), (kvp - left) / (knots[i] - left), w)
        if right is not None:
            w = torch.where((kvp >= knots[i]) & (kvp <= right), (right - kvp) / (right - knots[i]), w)
        w = torch.where(kvp == knots[i], torch.ones_like(w), w)
        if bool((w > 0).any()):
            mu = mu + w * curve(hu, k)
    return mu.clamp_min(0.0)


def hu_to_mu(hu: ArrayLike, kvp, method: Method = "bilinear") -> ArrayLike:
    """Linear attenuation coefficient at 511 keV in cm^-1 from CT numbers in HU.

    Args:
        hu: CT in Hounsfield units, any shape (numpy array or torch tensor).
        kvp: tube voltage in kVp (0018,0060), 80..140; scalar or broadcastable against ``hu``.
        method: ``"bilinear"`` (Carney 2006) or ``"trilinear"`` (Abella 2012).

    Returns:
        mu in cm^-1, clipped at 0, same kind (numpy/torch) and shape as the broadcast inputs.
    """
    _check_method(method)
    is_numpy = not isinstance(hu, torch.Tensor)
    hu_t = _to_torch(hu)
    kvp_t = _to_torch(kvp, dtype=hu_t.dtype)
    mu = _hu_to_mu_torch(hu_t, kvp_t, method)
    return mu.numpy() if is_numpy else mu


def attenuation_map(hu: ArrayLike, kvp, method: Method = "bilinear",
                    path_length_cm: float | ArrayLike = 1.0) -> ArrayLike:
    """CPDM's Attenuation map M_mu = exp(-mu * L), values in (0, 1].

    Args:
        hu, kvp, method: as :func:`hu_to_mu`.
        path_length_cm: L in cm. CPDM uses L = 1 cm (then M_mu spans only about 0.86..1 in tissue);
            passing the pixel size in cm gives the attenuation across one pixel instead.
    """
    if isinstance(path_length_cm, (int, float)) and not path_length_cm > 0:
        raise ValueError(f"path_length_cm must be positive, got {path_length_cm}")
    mu = hu_to_mu(hu, kvp, method)
    if isinstance(mu, torch.Tensor):
        return torch.exp(-mu * _to_torch(path_length_cm, dtype=mu.dtype).to(mu.device))
    return np.exp(-mu * np.asarray(path_length_cm, dtype=mu.dtype))

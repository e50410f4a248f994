"""Lesion metrics in SUV: SUVmax recovery per lesion and per lesion class, and false-positive hot spots.

Inputs are numpy arrays of one study: SUVbw volumes ``(D, H, W)`` (D consecutive slices; D = 1 for a single
slice), integer label volumes of the same shape, and the study's label table (rows ``{"label", "name", "kind"}``,
lesion rows optionally with ``"class"`` in :data:`~petsynth.data.store.LESION_CLASSES`).

- **Recovery** of a lesion: SUVmax of the prediction / SUVmax of the reference, both over the lesion's voxels
  (1.0 = perfect; NaN when the reference SUVmax is not > 0). Per class: the number of lesions, the mean recovery
  and the fraction with |recovery - 1| <= :data:`RECOVERY_TOLERANCE` (0.3) (:func:`class_summary`).
- **Labelled uptake** (:func:`uptake_labels`, :func:`labelled_uptake`) for a hot-spot threshold T (SUV): the
  voxels where the reference is >= T/2, dilated by one voxel (a 3x3x3 cube, 3x3 in-plane for one slice), OR
  whose label is an avid lesion (class ct_visible, ct_occult or none) OR an organ whose reference SUVmean over
  the study's evaluated voxels is > T/2; minus the voxels of benign lesions (class "benign" is never uptake).
- **False-positive hot spot** (:func:`false_positive_hot_spots`): a connected component of prediction > T
  (26- or 6-connectivity in 3-D; on one slice that is 8- or 4-connectivity) with no voxel in labelled uptake.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from petsynth.data.store import LESION_CLASSES

__all__ = [
    "AVID_CLASSES",
    "CLASS_ORDER",
    "DEFAULT_HOT_SPOT_SUV",
    "RECOVERY_TOLERANCE",
    "UNCLASSIFIED",
    "class_summary",
    "false_positive_hot_spots",
    "labelled_uptake",
    "lesion_class",
    "recovery",
    "uptake_labels",
]

#: The class of a lesion row without one (label tables written before lesions had classes).
UNCLASSIFIED = "unclassified"
#: Classes in report order.
CLASS_ORDER: tuple[str, ...] = (*LESION_CLASSES, UNCLASSIFIED)
#: Classes whose lesions take up tracer (labelled uptake); "benign" lesions do not.
AVID_CLASSES: tuple[str, ...] = ("ct_visible", "ct_occult", UNCLASSIFIED)
#: A recovery within 1 +- this fraction counts as recovered.
RECOVERY_TOLERANCE: float = 0.3
#: Default hot-spot threshold in SUV (well above normal soft tissue, below most avid lesions and organs).
DEFAULT_HOT_SPOT_SUV: float = 4.0


def lesion_class(row: Mapping[str, Any]) -> str:
    """A label-table lesion row's class, or :data:`UNCLASSIFIED` when it has none."""
    return str(row.get("class") or UNCLASSIFIED)


def recovery(suvmax_pred: float, suvmax_ref: float) -> float:
    """SUVmax recovery pred / ref (unitless); NaN when ``suvmax_ref`` is not > 0 or either is not finite."""
    if not (math.isfinite(suvmax_pred) and math.isfinite(suvmax_ref)) or suvmax_ref <= 0:
        return math.nan
    return float(suvmax_pred / suvmax_ref)


def class_summary(lesions: Iterable[Mapping[str, Any]],
                  tolerance: float = RECOVERY_TOLERANCE) -> dict[str, dict[str, float]]:
    """Per class of the lesions (dicts with "class" and "recovery"), in :data:`CLASS_ORDER`: ``count`` (lesions
    with a finite recovery), ``mean_recovery``, ``std_recovery`` (population) and ``within_tolerance`` (fraction with |recovery - 1| <=
    ``tolerance``); classes without such a lesion are left out."""
    by_class: dict[str, list[float]] = {}
    for les in lesions:
        if math.isfinite(les["recovery"]):
            by_class.setdefault(str(les["class"]), []).append(float(les["recovery"]))
    order = [c for c in CLASS_ORDER if c in by_class] + sorted(c for c in by_class if c not in CLASS_ORDER)
    out = {}
    for c in order:
        r = np.asarray(by_class[c], dtype=np.float64)
        out[c] = {"count": int(r.size), "mean_recovery": float(r.mean()), "std_recovery": float(r.std()),
                  "within_tolerance": float(np.mean(np.abs(r - 1.0) <= tolerance + 1e-12))}
    return out


def uptake_labels(reference: np.ndarray, labels: np.ndarray | None, table: Sequence[Mapping[str, Any]],
                  threshold: float) -> tuple[set[int], set[int]]:
    """(uptake labels, benign labels) of one study: the avid lesions' labels and the organs' whose reference
    SUVmean over ``labels`` (same shape as ``reference``, SUV) is > ``threshold`` / 2; and the benign lesions'."""
    uptake, benign = set(), set()
    if labels is None:
        return uptake, benign
    for row in table:
        label = int(row["label"])
        if row["kind"] == "lesion":
            (benign if lesion_class(row) == "benign" else uptake).add(label)
            continue
        inside = labels == label
        if inside.any() and float(reference[inside].mean()) > threshold / 2:
            uptake.add(label)
    return uptake, benign


def labelled_uptake(reference: np.ndarray, labels: np.ndarray | None, uptake: Iterable[int],
                    benign: Iterable[int], threshold: float) -> np.ndarray:
    """Boolean labelled-uptake mask (D, H, W) of D consecutive slices: reference >= ``threshold`` / 2 (SUV)
    dilated by one voxel (3x3x3 cube), or a label in ``uptake``; never a label in ``benign``."""
    from scipy.ndimage import binary_dilation

    mask = binary_dilation(reference >= threshold / 2, structure=np.ones((3, 3, 3), bool))
    if labels is not None:
        uptake, benign = list(uptake), list(benign)
        if uptake:
            mask |= np.isin(labels, uptake)
        if benign:
            mask &= ~np.isin(labels, benign)
    return mask


def false_positive_hot_spots(pred: np.ndarray, uptake: np.ndarray, threshold: float, *, connectivity: int = 26,
                             voxel_ml: float | None = None) -> list[dict[str, Any]]:
    """The connected components of ``pred`` > ``threshold`` (SUV; (D, H, W), D consecutive slices) with no voxel
    in ``uptake`` (:func:`labelled_uptake`), largest first: ``voxels``, ``volume_ml`` (voxels x ``voxel_ml``;
    NaN when unknown), ``suvmax`` (the prediction's maximum in it) and ``peak`` (its (d, h, w) index)."""
    from scipy.ndimage import generate_binary_structure, label

    if connectivity not in (6, 26):
        raise ValueError(f"connectivity must be 6 or 26, got {connectivity}")
    if pred.shape != uptake.shape or pred.ndim != 3:
        raise ValueError(f"pred and uptake must be (D, H, W) of one shape, got {pred.shape} and {uptake.shape}")
    components, n = label(pred > threshold, structure=generate_binary_structure(3, 1 if connectivity == 6 else 3))
    if n == 0:
        return []
    ids = components.ravel()
    touching = np.zeros(n + 1, bool)
    touching[np.unique(ids[uptake.ravel() & (ids > 0)])] = True
    sizes = np.bincount(ids, minlength=n + 1)
    spots = []
    for k in np.flatnonzero(~touching[1:]) + 1:
        where = np.flatnonzero(ids == k)
        best = where[np.argmax(pred.ravel()[where])]
        spots.append({"voxels": int(sizes[k]), "volume_ml": float(sizes[k] * voxel_ml) if voxel_ml else math.nan,
                      "suvmax": float(pred.ravel()[best]),
                      "peak": tuple(int(i) for i in np.unravel_index(best, pred.shape))})
    return sorted(spots, key=lambda s: (-s["voxels"], -s["suvmax"]))

"""Regional measures of brain FDG PET: SUVR to a reference region, grey/white matter, hypometabolic contrast.

Inputs are region SUVmeans (of a synthetic PET and of its reference, over the same voxels), by the region names of
the label tables ``prepare`` stores (the brain phantom's: grey_matter, white_matter, grey_matter_hypometabolic,
cerebellar_grey_matter, brainstem, ...). Definitions (each for the synthetic PET and the reference alike):

- SUVR of a region = SUVmean(region) / SUVmean(reference region); the reference is the cerebellar grey matter
  ("cerebellum", the usual FDG reference) or the brainstem ("pons"). SUVR bias = SUVR_pred / SUVR_ref - 1.
- Grey/white matter: SUVmean relative bias of each, and the GM/WM ratio.
- Hypometabolic contrast = 1 - SUVmean(hypometabolic grey matter) / SUVmean(grey matter): 0 when the region
  looks normal, 0.2-0.5 in the phantom's truth. Contrast recovery = contrast_pred / contrast_ref (1: the model
  shows the deficit in full; 0: it erases it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

#: Reference regions for SUVR, by the name users give, and the label-table regions that make them.
REFERENCE_REGIONS: dict[str, tuple[str, ...]] = {
    "cerebellum": ("cerebellar_grey_matter",),
    "pons": ("brainstem",),
}
GREY, WHITE, HYPO = "grey_matter", "white_matter", "grey_matter_hypometabolic"
#: Measures :func:`brain_measures` returns, in table order.
MEASURES = ("suvr_grey_pred", "suvr_grey_ref", "suvr_grey_bias", "suvr_white_bias", "grey_bias", "white_bias",
            "gm_wm_ratio_pred", "gm_wm_ratio_ref", "hypo_contrast_pred", "hypo_contrast_ref", "hypo_recovery")


def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def brain_measures(pred: Mapping[str, float], ref: Mapping[str, float], reference: str = "cerebellum"
                   ) -> dict[str, float]:
    """The measures of :data:`MEASURES` from region SUVmeans (region name -> SUV) of the synthetic PET (``pred``)
    and its reference (``ref``); NaN where a region is missing. ``reference``: a key of
    :data:`REFERENCE_REGIONS`."""
    if reference not in REFERENCE_REGIONS:
        raise ValueError(f"unknown reference region {reference!r}; choose one of {', '.join(REFERENCE_REGIONS)}")
    (ref_name,) = REFERENCE_REGIONS[reference]

    def suvr(values: Mapping[str, float], region: str) -> float:
        return _ratio(values.get(region), values.get(ref_name))

    def contrast(values: Mapping[str, float]) -> float:
        r = _ratio(values.get(HYPO), values.get(GREY))
        return 1.0 - r if not math.isnan(r) else math.nan

    out = {
        "suvr_grey_pred": suvr(pred, GREY), "suvr_grey_ref": suvr(ref, GREY),
        "grey_bias": _ratio(pred.get(GREY), ref.get(GREY)) - 1.0,
        "white_bias": _ratio(pred.get(WHITE), ref.get(WHITE)) - 1.0,
        "gm_wm_ratio_pred": _ratio(pred.get(GREY), pred.get(WHITE)),
        "gm_wm_ratio_ref": _ratio(ref.get(GREY), ref.get(WHITE)),
        "hypo_contrast_pred": contrast(pred), "hypo_contrast_ref": contrast(ref),
    }
    out["suvr_grey_bias"] = _ratio(out["suvr_grey_pred"], out["suvr_grey_ref"]) - 1.0
    out["suvr_white_bias"] = _ratio(suvr(pred, WHITE), suvr(ref, WHITE)) - 1.0
    out["hypo_recovery"] = _ratio(out["hypo_contrast_pred"], out["hypo_contrast_ref"])
    return {k: out[k] for k in MEASURES}

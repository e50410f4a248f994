"""Evaluate trained models on a prepared dataset split: the CPDM paper's Table 4 and Figure 3, in SUV.

:func:`evaluate` runs each model over the split's slices (all, or ``max_slices`` evenly spaced ones, the same
for every model) and scores each prediction against the references the dataset has:

- ``real``: the dataset's target, the reconstructed PET (always);
- ``truth``: the noise-free phantom SUV (phantom datasets only).

Image metrics, per slice, in two intensity conventions (:func:`metric_specs`):

- ``suv``: the images in SUVbw as stored, not clipped, with the fixed data range L = 20 SUV (the PET
  window 0..20 SUV, :data:`SUV_WINDOW`, the methods' default target window; the same for every model so
  numbers compare): MAE in SUV, PSNR = 10 log10(L^2 / MSE), SSIM (Gaussian 11x11, sigma 1.5, Wang 2004),
  MS-SSIM (5 scales; slices of at least 161 px), VIF (pixel domain; at least 41 px), LPIPS (only when the
  user supplied its weight files; never downloaded).
- ``cpdm``: the CPDM paper's convention, stored int16 PET values divided by 2^15 - 1, data range 1, SSIM
  with scikit-image's defaults (7x7 uniform window, sample covariance) and MAE in stored units. Datasets hold
  SUV, not the paper's stored values, so SUV is mapped to a stored-value equivalent through the fixed
  window: ``stored = 32767 * (clip(SUV, 0, 20) - 0) / 20`` (:func:`suv_to_cpdm_stored`): an int16 full
  scale of 20 SUV, values above 20 saturating as an int16 would. This APPROXIMATES the paper's convention:
  its stored values were DICOM pixel values with a per-slice rescale slope, so its numbers compare with
  ours in kind, not in absolute value.

Region metrics (SUV, against each reference): SUVmean and SUVmax of prediction and reference, their bias
(pred - ref, SUV) and relative bias ((pred - ref) / ref), inside regions named by each study's label table
(:meth:`petsynth.data.store.PreparedDataset.label_table`, written at prepare time; :func:`label_regions`):
one per organ row found in the evaluated slices, by name, and "lesions", every lesion row together; and in
the reference's high-uptake region (SUV >= 2.5, :func:`petsynth.metrics.high_uptake_mask`). Studies with
different tables are matched by region name. Voxels are pooled over a study's evaluated slices; "overall" is
the mean (and population std) over the studies that have the region.

Aggregation: per study and "overall" are the mean and population standard deviation of the per-slice
values over the slices (non-finite per-slice values, e.g. the PSNR of identical slices or the VIF of a flat
reference, are left out; ``n`` counts the values used).

Outputs in ``out`` (each written atomically):

- ``metrics.csv``: model, reference, study (or "overall"), convention, region ("" for image metrics), metric,
  unit, data_range, mean, std, n. Image metrics: mean / std over slices, n = slices. Region rows (metric =
  a :data:`BIAS_FIELDS` name, unit SUV or fraction): per study n = voxels, overall n = studies.
- ``per_slice.csv``: model, reference, study, slice (the store's slice index), z_mm, one column per metric key.
- ``table.md``: the CPDM paper's Table 4 layout per reference and convention (methods x metrics with ↑/↓,
  best in bold, a "Diff." row with the relative gap of the best to the second best), the region biases, and
  the data ranges and conventions stated under them.
- ``figure.png``: its Figure 3 layout: CT | real PET | each model's PET | each model's absolute error
  against the real PET, for a few slices, on shared colour scales.
- ``evaluation.json``: settings, models (name, method, task, step), split, slice counts, versions.
- ``report.html``: the tables, the figure, the notes and the models' facts in one page that opens from disk
  (:mod:`petsynth.report`).
- ``lesions.csv`` (labelled lesions only): per model, reference, study and lesion row of the label table found in
  the study's evaluated slices, its class and lesion_kind, voxels, SUVmax of reference and prediction and the
  recovery (pred / ref); per class (:mod:`petsynth.metrics.lesions`) in metrics.csv (region "lesions:<class>"),
  table.md and evaluation.json. With a truth, the real PET is scored against it too, as the model
  :data:`SCANNER`.
- ``hot_spots.csv``: the false-positive hot spots per model and study (components of prediction > ``hot_spot_suv``
  outside labelled uptake of the truth, else the real PET; :func:`_hot_spots`), with their voxels, volume (mL),
  peak SUV and position; counts in metrics.csv (region "false_positive_hot_spots"), table.md and evaluation.json.

Nothing written names a file path: models by name, studies by their pseudonyms.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import petsynth
from petsynth.data.store import SPLITS, PreparedDataset, open_dataset
from petsynth.data.batch import CONTEXT_KEY, Collate
from petsynth.inference import (BUNDLED_MODELS_DIR, PHANTOMS_ONLY_NOTICE, ModelScale, PredictOptions,
                                bundled_models, cached_model, load_model, model_name, model_scales,
                                model_spacing_mm, predict_items)
from petsynth.parallel import run_each
from petsynth.physics.constants import HU_AIR
from petsynth.methods.base import Method
from petsynth.metrics import (
    CPDM_PET_SCALE,
    MS_SSIM_MIN_SIZE,
    VIF_MIN_SIZE,
    high_uptake_mask,
    lpips,
    lpips_available,
    mae,
    ms_ssim,
    nrmse,
    psnr,
    ssim,
    to_cpdm_scale,
    vif,
)
from petsynth.data.brain import PLANES
from petsynth.metrics.brain import GREY, MEASURES as BRAIN_MEASURES, REFERENCE_REGIONS, brain_measures
from petsynth.metrics.lesions import (CLASS_ORDER, DEFAULT_HOT_SPOT_SUV, RECOVERY_TOLERANCE, class_summary,
                                      false_positive_hot_spots, labelled_uptake, lesion_class, recovery,
                                      uptake_labels)
from petsynth.metrics.suv import DEFAULT_SUV_THRESHOLD
from petsynth.tasks import PET_WINDOW, get_task
from petsynth.utils.files import atomic_file, atomic_write_text

__all__ = [
    "BIAS_FIELDS",
    "EvaluationError",
    "EvaluationReport",
    "MetricSpec",
    "REFERENCES",
    "SUV_WINDOW",
    "evaluate",
    "label_regions",
    "lesion_regions",
    "metric_specs",
    "model_name",
    "relative_gap",
    "select_slices",
    "suv_to_cpdm_stored",
]

#: Fixed SUV window: its width is the data range of the SUV-convention metrics, and it maps SUV to the CPDM
#: paper's stored-value scale. The methods' default target window (0..20 SUV).
SUV_WINDOW: tuple[float, float] = (PET_WINDOW.low, PET_WINDOW.high)
#: Reference images: name -> (dataset key, description).
REFERENCES: dict[str, tuple[str, str]] = {
    "real": ("target", "the real (reconstructed) PET"),
    "truth": ("truth", "the noise-free phantom truth"),
}
#: Order of the regions in the outputs: "lesions", then these organs, then every other organ (table order).
MAIN_ORGANS: tuple[str, ...] = ("brain", "grey_matter", "white_matter", "myocardium", "blood_pool", "lung",
                                "liver", "spleen", "kidney", "bladder")
#: The region of every lesion row of a label table.
LESIONS = "lesions"
#: Region statistics per study (the fields of :class:`petsynth.metrics.SUVBias` but n_voxels).
BIAS_FIELDS: tuple[str, ...] = ("suvmean_ref", "suvmean_pred", "suvmean_bias", "suvmean_rel_bias",
                                "suvmax_ref", "suvmax_pred", "suvmax_bias", "suvmax_rel_bias")
HIGH_UPTAKE = "high_uptake"
#: metrics.csv region of the false-positive hot spots, and the metric of the lesions recovered within 30 %.
FALSE_POSITIVES = "false_positive_hot_spots"
RECOVERED = "recovery_within_30pct"
#: The "model" name of the real (scanner) PET scored against the phantom truth like a model (lesion recovery and
#: hot spots), for comparison.
SCANNER = "(real PET)"
#: Connectivity of the hot-spot components (3-D; 8-connected in-plane on a lone slice).
HOT_SPOT_CONNECTIVITY = 26
#: Slices shown in figure.png.
FIGURE_ROWS = 3
#: Display ranges of figure.png (shared by all its panels): CT in HU, PET in SUV, absolute error in SUV.
FIGURE_CT_WINDOW: tuple[float, float] = (-250.0, 350.0)
FIGURE_PET_WINDOW: tuple[float, float] = (0.0, 8.0)
FIGURE_ERROR_MAX_SUV: float = 3.0
#: LPIPS network (the lpips package's default, one of the two CPDM mentions).
LPIPS_NET = "alex"

Progress = Callable[[str, int, int], None]


class EvaluationError(ValueError):
    """The evaluation cannot run as asked (an empty split, no models, bad settings); the message says why."""


# --- metrics --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSpec:
    """One image metric in one convention."""

    key: str  # column of per_slice.csv, e.g. "mae_suv"
    name: str  # "MAE"
    convention: str  # "suv" | "cpdm"
    unit: str  # "SUV", "dB", "stored" or "" (unitless)
    data_range: float
    higher_is_better: bool
    digits: int  # decimals in table.md
    compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        unit = {"SUV": " [SUV]", "dB": " [dB]", "stored": " [stored]"}.get(self.unit, "")
        return f"{self.name}{unit} {'↑' if self.higher_is_better else '↓'}"


def suv_to_cpdm_stored(suv: torch.Tensor, window: tuple[float, float] = SUV_WINDOW) -> torch.Tensor:
    """SUV -> the CPDM paper's stored PET scale (int16 full scale 2^15 - 1 = the window's top), as float.

    ``stored = (2^15 - 1) * (clip(suv, low, high) - low) / (high - low)``; divide by 2^15 - 1
    (:func:`petsynth.metrics.to_cpdm_scale`) for the paper's [0, 1] evaluation scale. An approximation of
    the paper's stored values, which had a per-slice rescale slope (see the module docstring).
    """
    low, high = window
    return (suv.to(torch.float64).clamp(low, high) - low) / (high - low) * CPDM_PET_SCALE


def metric_specs(size: int, window: tuple[float, float] = SUV_WINDOW,
                 use_lpips: bool | None = None) -> tuple[list[MetricSpec], list[str]]:
    """The metrics that apply to ``size`` x ``size`` slices, and notes on those left out (and why).

    ``use_lpips``: None = when :func:`petsynth.metrics.lpips_available` finds the weight files.
    """
    low, high = window
    width = float(high - low)
    notes: list[str] = []
    lpips_ok = lpips_available(LPIPS_NET) if use_lpips is None else use_lpips
    if use_lpips is None and not lpips_ok:
        notes.append("LPIPS left out: its ImageNet weight files were not found (petsynth never downloads them; "
                     "see petsynth.metrics.find_weights).")
    if lpips_ok and size < 31:
        lpips_ok = False
        notes.append(f"LPIPS left out: AlexNet needs slices of at least 31 px, these are {size} px.")

    def paper(x: torch.Tensor) -> torch.Tensor:
        return to_cpdm_scale(suv_to_cpdm_stored(x, window))

    specs = [
        MetricSpec("mae_suv", "MAE", "suv", "SUV", width, False, 4, lambda p, r: mae(p, r, data_range=width)),
        MetricSpec("psnr_suv", "PSNR", "suv", "dB", width, True, 2, lambda p, r: psnr(p, r, data_range=width)),
        MetricSpec("ssim_suv", "SSIM", "suv", "", width, True, 4, lambda p, r: ssim(p, r, data_range=width)),
        MetricSpec("nrmse_suv", "NRMSE", "suv", "", width, False, 4, lambda p, r: nrmse(p, r)),
    ]
    if size >= MS_SSIM_MIN_SIZE:
        specs.append(MetricSpec("ms_ssim_suv", "MS-SSIM", "suv", "", width, True, 4,
                                lambda p, r: ms_ssim(p, r, data_range=width)))
    else:
        notes.append(f"MS-SSIM left out: 5 scales with an 11 px window need slices of at least "
                     f"{MS_SSIM_MIN_SIZE} px, these are {size} px.")
    if size >= VIF_MIN_SIZE:
        specs.append(MetricSpec("vif_suv", "VIF", "suv", "", width, True, 4,
                                lambda p, r: vif(p, r, data_range=width)))
    else:
        notes.append(f"VIF left out: its 4 scales need slices of at least {VIF_MIN_SIZE} px, these are {size} px.")
    if lpips_ok:
        specs.append(MetricSpec("lpips_suv", "LPIPS", "suv", "", width, False, 4,
                                lambda p, r: lpips(p - low, r - low, data_range=width, net=LPIPS_NET)))
        specs.append(MetricSpec("lpips_cpdm", "LPIPS", "cpdm", "", 1.0, False, 4,
                                lambda p, r: lpips(paper(p), paper(r), data_range=1.0, net=LPIPS_NET)))
    specs += [
        MetricSpec("mae_cpdm", "MAE", "cpdm", "stored", float(CPDM_PET_SCALE), False, 2,
                   lambda p, r: mae(suv_to_cpdm_stored(p, window), suv_to_cpdm_stored(r, window),
                                    data_range=CPDM_PET_SCALE)),
        MetricSpec("ssim_cpdm", "SSIM", "cpdm", "", 1.0, True, 4,
                   lambda p, r: ssim(paper(p), paper(r), data_range=1.0, convention="cpdm")),
        MetricSpec("psnr_cpdm", "PSNR", "cpdm", "dB", 1.0, True, 2,
                   lambda p, r: psnr(paper(p), paper(r), data_range=1.0)),
    ]
    return specs, notes


#: Column order of the tables: the SUV table, then the paper's Table 4 order (LPIPS, MAE, SSIM, PSNR).
_TABLE_ORDER = {"suv": ("MAE", "PSNR", "SSIM", "NRMSE", "MS-SSIM", "VIF", "LPIPS"), "cpdm": ("LPIPS", "MAE", "SSIM", "PSNR")}


def label_regions(table: Iterable[Mapping[str, Any]]) -> dict[str, list[int]]:
    """Regions (name -> label ids) of one study's label table: one per organ row, named as the row (an organ
    named "lesions" or "high_uptake" gets " (organ)" added), and "lesions", the labels of every lesion row.
    Label 0 (background) is never in a region."""
    regions: dict[str, list[int]] = {}
    for row in table:
        label, name = int(row["label"]), str(row["name"])
        if label == 0:
            continue
        if row["kind"] == "lesion":
            name = LESIONS
        elif name in (LESIONS, HIGH_UPTAKE):
            name += " (organ)"
        regions.setdefault(name, []).append(label)
    return regions


def _region_order(names: Iterable[str]) -> list[str]:
    """"lesions", then :data:`MAIN_ORGANS` in their order, then the other names as given."""
    names = list(dict.fromkeys(names))
    first = [n for n in (LESIONS, *MAIN_ORGANS) if n in names]
    return first + [n for n in names if n not in first]


# --- slices, models -------------------------------------------------------------------------------------
def select_slices(n: int, max_slices: int | None) -> list[int]:
    """All ``n`` slice indices, or ``max_slices`` of them evenly spaced (first and last included)."""
    if max_slices is not None and max_slices < 1:
        raise EvaluationError(f"max_slices must be at least 1, got {max_slices}")
    if max_slices is None or max_slices >= n:
        return list(range(n))
    if max_slices == 1:
        return [(n - 1) // 2]
    return sorted({int(math.floor(x + 0.5)) for x in np.linspace(0, n - 1, max_slices)})


def _named_models(models: Mapping[str, str | Path] | Sequence[str | Path]) -> dict[str, str | Path]:
    if isinstance(models, Mapping):
        named = {str(k): v for k, v in models.items()}
    else:
        if isinstance(models, (str, Path)):
            models = [models]
        named = {}
        for spec in models:
            base = name = model_name(spec)
            k = 2
            while name in named:
                name, k = f"{base}-{k}", k + 1
            named[name] = spec
    if not named:
        raise EvaluationError("no models to evaluate: give at least one (a run folder, a model folder or a "
                              "bundled model's name)")
    return named


def _model_info(name: str, method: Method) -> dict[str, Any]:
    card = getattr(method, "card", None)
    source = getattr(method, "source_path", None)
    target = method.intensity_transforms().get("target")
    data = dict(getattr(card, "data", {}) or {})
    return {"name": name, "method": method.name, "task": method.task, "step": getattr(card, "step", None),
            "bundled": bool(source is not None and Path(source).resolve().parent == BUNDLED_MODELS_DIR.resolve()),
            "trained_with_petsynth": getattr(card, "petsynth_version", None),
            "target_window": [target.low, target.high] if target is not None else None,
            "training_data": {k: data[k] for k in ("train_slices", "train_studies", "spacing_mm") if k in data}}


@dataclass(frozen=True)
class _PredictJob:
    """What a process needs to predict slices of one model: the model's spec, the dataset, the options, the
    per-study :class:`~petsynth.inference.ModelScale` (or None) and the device."""

    spec: str
    data: str
    split: str
    options: PredictOptions
    scale: Mapping[str, ModelScale] | None
    device: str


def _predict(method: Method, items: list[dict[str, Any]], job: _PredictJob, task: str,
             progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """``(batch, prediction in SUV)`` over ``items`` (the dataset's, in physical units), each shown to the model at
    its training scale when ``job.scale`` says so; the batch keeps the stored source."""
    if job.scale:
        items = [_at_model_scale(item, job.scale[item["study"]], task) for item in items]
    for batch, pred in predict_items(method, items, total=len(items), options=job.options, progress=progress):
        if job.scale:
            pred = torch.cat([job.scale[study].from_model(pred[b:b + 1]) for b, study in enumerate(batch["study"])])
            batch["source"] = torch.from_numpy(np.stack(batch["_source"]))[:, None]
        yield batch, pred


def _local_predictions(method: Method, dataset: PreparedDataset, indices: list[int], job: _PredictJob,
                       progress) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    dataset = dataset.with_context(method.context_slices)
    items = [{**dataset[i], "_position": pos} for pos, i in enumerate(indices)]
    yield from _predict(method, items, job, dataset.task, progress)


_DATASETS: dict[tuple[str, str], PreparedDataset] = {}  # opened once per worker process


def _predict_study(positions: list[int], indices: list[int], job: _PredictJob) -> np.ndarray:
    """On a worker: the predictions (n, 1, H, W) float32 in SUV for the dataset slices ``indices``."""
    key = (job.data, job.split)
    if key not in _DATASETS:
        _DATASETS[key] = _open(job.data, job.split)
    dataset = _DATASETS[key]
    method = cached_model(job.spec, job.device)
    dataset = dataset.with_context(method.context_slices)
    items = [{**dataset[indices[p]], "_position": p} for p in positions]
    return torch.cat([pred for _, pred in _predict(method, items, job, dataset.task)]).numpy()


def _remote_predictions(dataset: PreparedDataset, indices: list[int], job: _PredictJob, workers: int,
                        dask: str | None, progress) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """The predictions made in other processes (a local pool or a Dask cluster), one task per study, taken in
    the slices' order; the batches are rebuilt here from the dataset (the references never travel)."""
    by_study: dict[str, list[int]] = {}
    for pos, i in enumerate(indices):
        by_study.setdefault(dataset.slice_study(i), []).append(pos)
    jobs = list(by_study.values())
    collate = Collate(dataset.task)
    done = 0
    for n, preds in run_each(_predict_study, jobs, (indices, job), workers=workers, dask=dask, name="evaluate",
                             ordered=True):
        positions = jobs[n]
        for start in range(0, len(positions), job.options.batch_size):
            chunk = positions[start:start + job.options.batch_size]
            batch = collate([{**dataset[indices[p]], "_position": p} for p in chunk])
            yield batch, torch.from_numpy(preds[start:start + len(chunk)])
        done += len(positions)
        if progress is not None:
            progress(done, len(indices))


def _at_model_scale(item: dict[str, Any], scale: ModelScale, task: str) -> dict[str, Any]:
    """A dataset item with its inputs (source, guidance) resized to the model's training scale
    (:class:`~petsynth.inference.ModelScale`, air around them); the stored source stays as "_source"."""
    t = get_task(task)
    fills = {"source": HU_AIR if t.source_modality == "CT" else 0.0, "guidance": HU_AIR}
    out = {**item, "_source": item["source"]}
    for role, fill in fills.items():
        if role in item:
            out[role] = scale.to_model(item[role], fill)
    if CONTEXT_KEY in item:  # the neighbouring source slices, each as the source
        out[CONTEXT_KEY] = np.stack([scale.to_model(s, fills["source"]) for s in item[CONTEXT_KEY]])
    return out


def _scale_note(name: str, method: Method, spacings: Mapping[str, float], scale: Mapping[str, ModelScale]) -> str:
    data_mm = float(np.median(list(spacings.values())))
    one = next(iter(scale.values()))
    return (f"{name} was trained on pixels of {model_spacing_mm(method):.3g} mm and these slices have "
            f"{data_mm:.3g} mm: as translate does, each slice was shown to it at its training scale ({one.size} px "
            f"resized to about {one.scaled} px on a {one.canvas} px canvas of air) and its output resized back.")


# --- the report ------------------------------------------------------------------------------------------
@dataclass
class EvaluationReport:
    """What :func:`evaluate` measured and wrote.

    ``metrics``: the image metrics computed (:func:`metric_specs`); ``overall[model][reference][key]``: the
    mean over all evaluated slices of each (keys e.g. "mae_suv", "ssim_cpdm");
    ``regions[model][reference][region][field]``: the mean over studies of :data:`BIAS_FIELDS`; ``files``:
    name -> path written ("metrics", "per_slice", "table", "figure", "settings", "hot_spots", "lesions" with lesions,
    "brain", "report").
    """

    out: Path
    models: list[str]
    references: list[str]
    split: str
    slices: int
    studies: list[str]
    metrics: list[MetricSpec]
    overall: dict[str, dict[str, dict[str, float]]]
    regions: dict[str, dict[str, dict[str, dict[str, float]]]]
    notes: list[str]
    files: dict[str, Path]
    seconds: float
    #: model (and :data:`SCANNER` against the truth) -> reference -> lesion class -> count, mean_recovery,
    #: std_recovery, within_tolerance (:func:`petsynth.metrics.lesions.class_summary`)
    lesion_classes: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    #: threshold_suv, reference, connectivity, labelled_uptake (text), per_model: model -> total, per_study
    hot_spots: dict[str, Any] = field(default_factory=dict)


def relative_gap(values: Mapping[str, float], higher_is_better: bool) -> tuple[list[str], float | None]:
    """The best models (ties included) and the relative gap of the best to the second best value,
    ``(best - second) / |second|`` (the paper's "Diff." row; 0 for a tie); None with fewer than two finite
    values or a second best of 0. Non-finite values are not ranked."""
    finite = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
    if not finite:
        return [], None
    ordered = sorted(finite.values(), reverse=higher_is_better)
    winners = [k for k, v in finite.items() if v == ordered[0]]
    if len(ordered) < 2 or ordered[1] == 0:
        return winners, None
    return winners, (ordered[0] - ordered[1]) / abs(ordered[1])


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return math.nan, math.nan, 0
    return float(a.mean()), float(a.std()), int(a.size)


# --- the run ---------------------------------------------------------------------------------------------
def _open(data: str | Path, split: str) -> PreparedDataset:
    if split not in (*SPLITS, "all"):
        raise EvaluationError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)} or all")
    dataset = open_dataset(data, None if split == "all" else split)
    if len(dataset) == 0:
        have = sorted(set(dataset.splits.values()))
        raise EvaluationError(f"the {split!r} split of {data} has no slices (its splits: "
                              f"{', '.join(have) or 'none recorded'}); choose another with --split")
    if not dataset.has_source:
        raise EvaluationError(f"{data} holds only standard-dose PET (prepared with --standard-dose-only): there is "
                              "no low-dose input to enhance; evaluate on a dataset prepared with its low-dose series")
    return dataset


def _figure_candidates(dataset: PreparedDataset, indices: Sequence[int], rows: int) -> list[int]:
    """Positions (into ``indices``) of the slices to show: those with the most high-uptake voxels of the real
    PET, one per study first."""
    scores = []
    for pos, i in enumerate(indices):
        item = dataset[i]
        target = np.asarray(item["target"], dtype=np.float64)
        scores.append((float((target >= DEFAULT_SUV_THRESHOLD).sum()), float(target.mean()), -pos, item["study"]))
    order = sorted(range(len(indices)), key=lambda p: scores[p][:3], reverse=True)
    chosen, seen = [], set()
    for p in order:
        if scores[p][3] not in seen:
            chosen.append(p)
            seen.add(scores[p][3])
        if len(chosen) == rows:
            break
    for p in order:
        if len(chosen) == rows:
            break
        if p not in chosen:
            chosen.append(p)
    return sorted(chosen)


def evaluate(models: Mapping[str, str | Path] | Sequence[str | Path], data: str | Path, out: str | Path, *,
             split: str = "test", options: PredictOptions = PredictOptions(), max_slices: int | None = None,
             progress: Progress | None = None, device: str | torch.device | None = None,
             window: tuple[float, float] = SUV_WINDOW, figure_rows: int = FIGURE_ROWS, workers: int = 1,
             dask: str | None = None, brain_reference: str = "cerebellum",
             hot_spot_suv: float = DEFAULT_HOT_SPOT_SUV) -> EvaluationReport:
    """Evaluate models on a prepared dataset split and write the tables, the figure and the settings.

    Args:
        models: model specs (run folders, model/checkpoint folders or bundled names), named by
            :func:`model_name`; or a mapping name -> spec.
        data: a prepared dataset folder (``petsynth prepare``).
        out: folder for ``metrics.csv`` (model x reference x study|overall x metric, with convention, region,
            unit, data range, mean, std, n), ``per_slice.csv``, ``table.md`` (Table 4 style), ``figure.png``
            (Figure 3 style) and ``evaluation.json`` (settings, models, slice counts, versions).
        split: "train", "val", "test" or "all".
        options: sampling options (steps, eta, other sampler options, batch size, bf16, seed), the same for
            every model; each model gets the sampler options it has (a U-Net has none), and an option no
            model has is an error.
        max_slices: evaluate this many evenly spaced slices of the split (the same for every model).
        progress: ``progress(model_name, done, total)`` after each batch.
        device: where the models run (default: CUDA when available, else CPU).
        window: the SUV window (data range of the SUV metrics, and the map to the CPDM paper's scale).
        workers, dask: where the predictions are made (:func:`petsynth.parallel.run_each`): here (1 worker),
            in a pool of local processes, or on a Dask cluster; one task per study, each process loading the
            model once. The scores are the same (deterministic samplers; a stochastic one draws its noise per
            study there).
        brain_reference: mr2pet: the SUVR reference region of the brain measures ("cerebellum" or "pons",
            :mod:`petsynth.metrics.brain`), written to ``brain.csv`` and the table when the studies' labels have
            grey matter. Datasets with planes (mr2pet) also get the metrics per plane.
        hot_spot_suv: the SUV threshold of the false-positive hot spots (``hot_spots.csv``; components of
            prediction > this outside labelled uptake, :mod:`petsynth.metrics.lesions`).

    Raises:
        DatasetError: ``data`` is not a prepared dataset.
        EvaluationError: an empty split, no models, bad settings.
        MethodError / CheckpointError: a model for another task than the dataset's, or not a model.
    """
    start = time.perf_counter()
    named = _named_models(models)
    if not window[1] > window[0]:
        raise EvaluationError(f"the SUV window must have high > low, got {window}")
    if figure_rows < 1:
        raise EvaluationError(f"figure_rows must be at least 1, got {figure_rows}")
    if not (math.isfinite(hot_spot_suv) and hot_spot_suv > 0):
        raise EvaluationError(f"the hot-spot threshold must be a positive SUV, got {hot_spot_suv}")
    dataset = _open(data, split)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    methods = {name: load_model(spec, task=dataset.task, device=device) for name, spec in named.items()}
    try:
        given = set(options.translate_kwargs())
    except ValueError as err:
        raise EvaluationError(str(err)) from None
    unused = sorted(given - {k for m in methods.values() for k in m.sampler_option_names()})
    if unused:
        raise EvaluationError(f"no model takes the sampler option {', '.join(map(repr, unused))} (their options: "
                              + "; ".join(f"{n}: {', '.join(m.sampler_option_names()) or 'none'}"
                                          for n, m in methods.items()) + ")")
    volumetric = [n for n, m in methods.items() if m.slab_depth]
    if volumetric and max_slices is not None:
        raise EvaluationError(f"{', '.join(volumetric)} enhance whole studies (3D): evaluate them without "
                              "max_slices, which picks scattered slices")
    indices = select_slices(len(dataset), max_slices)
    first = dataset[indices[0]]
    size = int(np.asarray(first["target"]).shape[-1])
    references = [r for r, (key, _) in REFERENCES.items() if key in first]
    has_labels = "labels" in first
    has_planes = bool(first.get("plane"))
    if brain_reference not in REFERENCE_REGIONS:
        raise EvaluationError(f"unknown brain reference region {brain_reference!r}; choose one of "
                              f"{', '.join(REFERENCE_REGIONS)}")
    specs, notes = metric_specs(size, window)
    spacings = {st: float(np.mean(dataset.study_meta(st)["spacing_mm"])) for st in dataset.studies}
    scales = {name: model_scales(method, size, spacings) for name, method in methods.items()}
    notes += [_scale_note(name, methods[name], spacings, sc) for name, sc in scales.items() if sc]
    bundled = [name for name, spec in named.items() if str(spec) in bundled_models()]
    notes += [PHANTOMS_ONLY_NOTICE.format(name=name) for name in bundled]
    figure_pos = _figure_candidates(dataset, indices, figure_rows)
    figure_set = set(figure_pos)

    per_slice: list[dict[str, Any]] = []  # one row per model x reference x slice
    regions_acc: dict[tuple[str, str, str, str], list[float]] = {}  # (model, ref, study, region) -> n, sums, maxes
    plane_acc: dict[tuple[str, str, str, str], list[float]] = {}  # the same with "study|plane" for the study
    figure_preds: dict[str, dict[int, np.ndarray]] = {name: {} for name in methods}
    figure_items: dict[int, dict[str, np.ndarray]] = {}
    study_regions = {s: label_regions(dataset.label_table(s)) for s in dataset.studies}
    study_lesions = {s: lesion_regions(dataset.label_table(s)) for s in dataset.studies}
    lesion_acc: dict[tuple[str, str, str, str], list[float]] = {}  # (model, ref, study, lesion) -> as regions_acc
    hot_slices: dict[str, dict[int, np.ndarray]] = {}  # model -> position -> its slice (H, W) SUV, if > hot_spot_suv
    scanner_too = "truth" in references  # the real PET scored like a model against the truth, for comparison
    labels_seen: dict[str, set[int]] = {}  # study -> label values in its evaluated slices
    timings: dict[str, float] = {}
    for name, method in methods.items():
        t0 = time.perf_counter()
        report = (lambda done, total, _n=name: progress(_n, done, total)) if progress is not None else None
        job = _PredictJob(spec=str(named[name]), data=str(data), split=split, options=options.for_method(method),
                          scale=scales[name], device=str(device))
        batches = (_local_predictions(method, dataset, indices, job, report) if not (dask or workers > 1) else
                   _remote_predictions(dataset, indices, job, workers, dask, report))
        for batch, pred in batches:
            positions = batch["_position"]
            pred = pred.to(torch.float64)
            labels = batch["labels"].cpu().to(torch.int64) if has_labels else None
            if labels is not None and name == next(iter(methods)):
                for b, study in enumerate(batch["study"]):
                    labels_seen.setdefault(study, set()).update(int(v) for v in torch.unique(labels[b]))
            for ref_name in references:
                ref = batch[REFERENCES[ref_name][0]].cpu().to(torch.float64)
                values = {s.key: s.compute(pred, ref).cpu().numpy() for s in specs}
                planes = batch.get("plane") or [""] * len(positions)
                for b, pos in enumerate(positions):
                    row = {"model": name, "reference": ref_name, "study": batch["study"][b],
                           "slice": batch["index"][b], "z_mm": batch["z_mm"][b], "plane": planes[b], "position": pos}
                    row.update({k: float(v[b]) for k, v in values.items()})
                    per_slice.append(row)
                _accumulate_regions(regions_acc, name, ref_name, batch["study"], pred, ref, labels, study_regions)
                _accumulate_regions(lesion_acc, name, ref_name, batch["study"], pred, ref, labels, study_lesions,
                                    high_uptake=False)
                if has_planes and labels is not None:
                    keys = [f"{st}|{pl}" for st, pl in zip(batch["study"], planes)]
                    _accumulate_regions(plane_acc, name, ref_name, keys, pred, ref, labels,
                                        {k: study_regions[k.split("|")[0]] for k in keys})
            _keep_hot_slices(hot_slices.setdefault(name, {}), positions, pred, hot_spot_suv)
            if scanner_too and name == next(iter(methods)):
                real = batch["target"].cpu().to(torch.float64)
                _accumulate_regions(lesion_acc, SCANNER, "truth", batch["study"], real,
                                    batch["truth"].cpu().to(torch.float64), labels, study_lesions, high_uptake=False)
                _keep_hot_slices(hot_slices.setdefault(SCANNER, {}), positions, real, hot_spot_suv)
            for b, pos in enumerate(positions):
                if pos in figure_set:
                    figure_preds[name][pos] = pred[b, 0].numpy().astype(np.float32)
                    if pos not in figure_items:
                        figure_items[pos] = {k: batch[k][b, 0].cpu().numpy() for k in ("source", "target")}
                        figure_items[pos].update(study=batch["study"][b], slice=batch["index"][b])
        timings[name] = time.perf_counter() - t0

    studies = list(dict.fromkeys(row["study"] for row in per_slice))
    found: dict[str, set[int]] = {}  # region -> its labels found in the evaluated slices, over the studies
    for study, seen in labels_seen.items():
        for region, ids in study_regions[study].items():
            if hits := seen & set(ids):
                found.setdefault(region, set()).update(hits)
    regions = {r: sorted(found[r]) for r in _region_order(found)}
    region_names = [*regions, HIGH_UPTAKE]
    slices_per_study = {s: sum(1 for r in per_slice if r["study"] == s and r["model"] == next(iter(methods))
                               and r["reference"] == "real") for s in studies}
    if not has_labels:
        notes.append("The dataset has no organ/lesion labels: region biases are given for the high-uptake "
                     f"region only (reference SUV >= {DEFAULT_SUV_THRESHOLD:g}).")
    elif not regions:
        notes.append("No label in the evaluated slices is named by its study's label table (datasets prepared "
                     "before label tables were stored have none: prepare them again): region biases are given "
                     f"for the high-uptake region only (reference SUV >= {DEFAULT_SUV_THRESHOLD:g}).")

    metric_rows, overall = _image_rows(per_slice, specs, list(methods), references, studies)
    plane_names = [p for p in PLANES if any(r["plane"] == p for r in per_slice)] if has_planes else []
    plane_rows, plane_overall = _plane_rows(per_slice, specs, list(methods), references, plane_names)
    brain_rows = _brain_rows(plane_acc if has_planes else regions_acc, list(methods), references, brain_reference)
    region_rows, region_overall = _region_rows(regions_acc, list(methods), references, studies, region_names)
    scored = [*methods, SCANNER] if scanner_too else list(methods)
    lesion_rows = _lesion_rows(lesion_acc, scored, references, studies, {s: dataset.label_table(s) for s in studies})
    class_rows, class_overall = _lesion_class_rows(lesion_rows, scored, references, studies)
    hot_reference = "truth" if scanner_too else "real"
    spot_rows, spot_counts = _hot_spots(dataset, indices, {m: hot_slices.get(m, {}) for m in scored}, hot_spot_suv,
                                        by_slice=has_planes)
    hot_spots = {"threshold_suv": hot_spot_suv, "reference": hot_reference,
                 "connectivity": "per slice (2-D, 8-connected)" if has_planes else
                 f"{HOT_SPOT_CONNECTIVITY}-connected in 3-D over runs of consecutive evaluated slices (8-connected "
                 "in-plane on a lone slice)",
                 "labelled_uptake": _uptake_definition(hot_spot_suv, hot_reference),
                 "per_model": {m: {"total": sum(c.values()), "per_study": c} for m, c in spot_counts.items()}}

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out / "metrics.csv", "per_slice": out / "per_slice.csv", "table": out / "table.md",
             "figure": out / "figure.png", "settings": out / "evaluation.json"}
    plane_column = ["plane"] if has_planes else []
    _write_csv(files["metrics"], ["model", "reference", "study", *plane_column, "convention", "region", "metric",
                                  "unit", "data_range", "mean", "std", "n"],
               metric_rows + region_rows + class_rows + _hot_spot_rows(spot_counts, hot_reference) + plane_rows)
    if lesion_rows:
        files["lesions"] = out / "lesions.csv"
        _write_csv(files["lesions"], LESION_COLUMNS, lesion_rows)
    files["hot_spots"] = out / "hot_spots.csv"
    _write_csv(files["hot_spots"], HOT_SPOT_COLUMNS, spot_rows)
    _write_csv(files["per_slice"], ["model", "reference", "study", "slice", "z_mm", *plane_column,
                                    *[s.key for s in specs]], per_slice)
    if brain_rows:
        files["brain"] = out / "brain.csv"
        _write_csv(files["brain"], ["model", "reference", "study", "plane", "reference_region", "measure", "value"],
                   brain_rows)
    table = _table_markdown(dataset, split, len(indices), studies, list(methods), references, specs, overall,
                            region_names, region_overall, regions, notes, window)
    table += _plane_markdown(list(methods), references, specs, plane_names, plane_overall)
    table += _brain_markdown(list(methods), references, brain_rows, brain_reference)
    table += _organ_markdown(list(methods), references, region_names, region_overall)
    table += _lesion_markdown(scored, references, class_overall, has_labels)
    table += _hot_spot_markdown(scored, studies, spot_rows, hot_spots)
    atomic_write_text(files["table"], table)
    _write_figure(files["figure"], figure_pos, figure_items, figure_preds, dataset.task, split)
    settings = {
        "petsynth_evaluation": 1,
        "split": split,
        "task": dataset.task,
        "slice_size": size,
        "slices_in_split": len(dataset),
        "slices_evaluated": len(indices),
        "max_slices": max_slices,
        "studies": slices_per_study,
        "references": {r: REFERENCES[r][1] for r in references},
        "options": {"batch_size": options.batch_size, "bf16": options.bf16, "seed": options.seed,
                    "sampler": options.translate_kwargs(),
                    "sampler_per_model": {n: options.for_method(m).translate_kwargs() for n, m in methods.items()}},
        "device": device.type,
        "models": [_model_info(name, m) for name, m in methods.items()],
        "seconds_per_model": {k: round(v, 3) for k, v in timings.items()},
        "suv_window": list(window),
        "metrics": [{"key": s.key, "name": s.name, "convention": s.convention, "unit": s.unit,
                     "data_range": s.data_range, "higher_is_better": s.higher_is_better} for s in specs],
        "conventions": _conventions(window),
        "regions": {**regions, HIGH_UPTAKE: f"reference SUV >= {DEFAULT_SUV_THRESHOLD:g}"},
        "lesion_recovery": {"definition": "SUVmax(prediction) / SUVmax(reference) over each lesion's voxels in "
                                          "its study's evaluated slices; per class over the lesions of all studies",
                            "tolerance": RECOVERY_TOLERANCE, "classes": class_overall},
        "hot_spots": {**hot_spots, "components": spot_rows},
        "notes": notes,
        "figure": {"rows": [{"study": figure_items[p]["study"], "slice": figure_items[p]["slice"]}
                            for p in figure_pos],
                   "ct_window_hu": list(FIGURE_CT_WINDOW), "pet_window_suv": list(FIGURE_PET_WINDOW),
                   "error_max_suv": FIGURE_ERROR_MAX_SUV},
        "versions": {"petsynth": petsynth.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
    }
    atomic_write_text(files["settings"], json.dumps(settings, indent=1, default=_json_default))
    files["report"] = _write_report(out / "report.html", dataset.task, split, len(indices), studies, methods,
                                    references, specs, overall, region_names, region_overall, notes,
                                    files["figure"], _lesion_tables(scored, references, class_overall, hot_spots))
    return EvaluationReport(out=out, models=list(methods), references=references, split=split,
                            slices=len(indices), studies=studies, metrics=specs,
                            overall=overall, regions=region_overall, notes=notes, files=files,
                            seconds=time.perf_counter() - start, lesion_classes=class_overall, hot_spots=hot_spots)


def _write_report(path: Path, task: str, split: str, n_slices: int, studies: list[str], methods: Mapping[str, Method],
                  references: list[str], specs: list[MetricSpec], overall: Mapping, region_names: list[str],
                  region_overall: Mapping, notes: list[str], figure: Path, extra: Sequence[Any] = ()) -> Path:
    """``report.html`` (:mod:`petsynth.report`) of an evaluation: the models' facts, the metric and region
    tables, the figure and the notes; models by name, studies by pseudonym."""
    from petsynth.report import ReportContent, Table, training_summary, write_report

    facts = {"task": task, "split": split, "slices": n_slices, "studies": len(studies)}
    for name, method in methods.items():
        info = _model_info(name, method)
        facts[f"model {name}"] = (f"{info['method']}, step {info['step']}; trained on "
                                  f"{training_summary(info['training_data'])}")
    labels = [s.label + (" (paper)" if s.convention == "cpdm" else "") for s in specs]
    tables = [Table(f"Against the {ref} PET: means over slices", ["model", *labels],
                    [[name, *(overall[name][ref][s.key] for s in specs)] for name in methods], digits=4)
              for ref in references]
    for ref in references:
        rows = []
        for name in methods:
            for region in region_names:
                values = region_overall.get(name, {}).get(ref, {}).get(region)
                if values:
                    rows.append([name, region, values.get("suvmean_rel_bias", float("nan")) * 100,
                                 values.get("suvmax_rel_bias", float("nan")) * 100])
        if rows:
            tables.append(Table(f"Regions against the {ref} PET", ["model", "region", "SUVmean bias %",
                                                                    "SUVmax bias %"], rows, digits=1))
    tables += list(extra)
    content = ReportContent(title=f"petsynth evaluation: {task}, {split}", facts=facts, tables=tables,
                            figures=[("real PET | each model's PET | each model's error, a few slices",
                                      figure.read_bytes())], notes=notes)
    return write_report(path, content)


def _conventions(window: tuple[float, float]) -> dict[str, str]:
    low, high = window
    return {
        "suv": f"SUVbw as stored, unclipped; data range {high - low:g} SUV (window {low:g}..{high:g} SUV) for PSNR, "
               "SSIM (Gaussian 11x11, sigma 1.5, K1 0.01, K2 0.03, valid region), MS-SSIM, VIF, LPIPS; MAE in SUV",
        "cpdm": f"CPDM paper: stored = {CPDM_PET_SCALE} * (clip(SUV, {low:g}, {high:g}) - {low:g}) / {high - low:g} "
                f"(approximates the paper's int16 stored PET values), scale stored / {CPDM_PET_SCALE}, data range 1, "
                "SSIM with scikit-image defaults (7x7 uniform window, sample covariance); MAE in stored units",
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _accumulate_regions(acc: dict, model: str, ref_name: str, studies: Sequence[str], pred: torch.Tensor,
                        ref: torch.Tensor, labels: torch.Tensor | None,
                        study_regions: Mapping[str, Mapping[str, list[int]]], high_uptake: bool = True) -> None:
    """Add one batch's voxels to the per-study region sums and maxima: [n, sum_pred, sum_ref, max_pred, max_ref].
    ``study_regions``: study -> region -> label ids (:func:`label_regions` of its table, or :func:`lesion_regions`);
    ``high_uptake``: also the reference's high-uptake region (:data:`HIGH_UPTAKE`)."""
    high = high_uptake_mask(ref) if high_uptake else None
    for b, study in enumerate(studies):
        masks = {HIGH_UPTAKE: high[b]} if high is not None else {}
        if labels is not None:
            for region, ids in study_regions.get(study, {}).items():
                masks[region] = torch.isin(labels[b], torch.tensor(ids, dtype=labels.dtype))
        for region, m in masks.items():
            n = int(m.sum())
            if n == 0:
                continue
            p, r = pred[b][m], ref[b][m]
            a = acc.setdefault((model, ref_name, study, region), [0, 0.0, 0.0, -math.inf, -math.inf])
            a[0] += n
            a[1] += float(p.sum())
            a[2] += float(r.sum())
            a[3] = max(a[3], float(p.max()))
            a[4] = max(a[4], float(r.max()))


# --- lesions and false-positive hot spots ---------------------------------------------------------------
def lesion_regions(table: Iterable[Mapping[str, Any]]) -> dict[str, list[int]]:
    """One region per lesion row of a label table: its name -> [its label] (a repeated name gets " (label n)")."""
    regions: dict[str, list[int]] = {}
    for row in table:
        if row["kind"] == "lesion" and int(row["label"]) != 0:
            name = str(row["name"])
            regions[name if name not in regions else f"{name} (label {int(row['label'])})"] = [int(row["label"])]
    return regions


def _lesion_rows(acc: Mapping, models: Sequence[str], references: Sequence[str], studies: Sequence[str],
                 tables: Mapping[str, list[dict]]) -> list[dict]:
    """lesions.csv rows, one per model, reference, study and lesion found in the study's evaluated slices (``acc``
    from :func:`_accumulate_regions` over :func:`lesion_regions`): class, lesion_kind, voxels, SUVmax of reference
    and prediction (SUV) and their ratio, the recovery."""
    rows = []
    for model in models:
        for ref in references:
            for study in studies:
                table = {r["label"]: r for r in tables[study]}
                for name, (label,) in lesion_regions(tables[study]).items():
                    a = acc.get((model, ref, study, name))
                    if a is not None:
                        row = table[label]
                        rows.append({"model": model, "reference": ref, "study": study, "lesion": name, "label": label,
                                     "class": lesion_class(row), "lesion_kind": row.get("lesion_kind", ""),
                                     "voxels": a[0], "suvmax_ref": a[4], "suvmax_pred": a[3],
                                     "recovery": recovery(a[3], a[4])})
    return rows


def _lesion_class_rows(lesions: list[dict], models: Sequence[str], references: Sequence[str],
                       studies: Sequence[str]) -> tuple[list[dict], dict]:
    """metrics.csv rows of the lesion classes (region "lesions:<class>", metrics "suvmax_recovery" (mean, std,
    n = lesions) and "recovery_within_30pct" (fraction)) per study and "overall" (lesions of all studies pooled),
    and model -> reference -> class -> :func:`~petsynth.metrics.lesions.class_summary` overall."""
    rows, overall = [], {}
    for model in models:
        for ref in references:
            mine = [r for r in lesions if r["model"] == model and r["reference"] == ref]
            for study in [*studies, "overall"]:
                chosen = mine if study == "overall" else [r for r in mine if r["study"] == study]
                for cls, v in class_summary(chosen).items():
                    base = {"model": model, "reference": ref, "study": study, "convention": "suv",
                            "region": f"{LESIONS}:{cls}", "data_range": "", "n": v["count"]}
                    rows += [{**base, "metric": "suvmax_recovery", "unit": "ratio", "mean": v["mean_recovery"],
                              "std": v["std_recovery"]},
                             {**base, "metric": RECOVERED, "unit": "fraction", "mean": v["within_tolerance"],
                              "std": ""}]
                    if study == "overall":
                        overall.setdefault(model, {}).setdefault(ref, {})[cls] = v
    return rows, overall


def _keep_hot_slices(kept: dict[int, np.ndarray], positions: Sequence[int], pred: torch.Tensor,
                     threshold: float) -> None:
    """Keep (position -> (H, W) float32 SUV) the slices of ``pred`` (B, 1, H, W) with a voxel > ``threshold``."""
    hot = (pred > threshold).flatten(1).any(1)
    for b in torch.nonzero(hot).flatten().tolist():
        kept[positions[b]] = pred[b, 0].numpy().astype(np.float32)


def _runs(indices: Sequence[int], planes: Sequence[str], by_slice: bool) -> list[list[int]]:
    """Runs (lists of positions into ``indices``) of consecutive dataset indices in one plane; every slice alone
    when ``by_slice``."""
    runs: list[list[int]] = []
    for k, i in enumerate(indices):
        if runs and not by_slice and i == indices[k - 1] + 1 and planes[k] == planes[k - 1]:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _voxel_ml(dataset: PreparedDataset, study: str) -> float | None:
    """A voxel's volume in mL: the in-plane pixel spacing times the distance of the study's first two slices."""
    z = dataset.slice_z_mm(study)
    spacing = dataset.study_meta(study).get("spacing_mm")
    if len(z) < 2 or not spacing:
        return None
    dz = abs(z[1] - z[0])
    return float(np.prod(spacing[-2:])) * dz / 1000.0 if dz > 0 else None


def _hot_spots(dataset: PreparedDataset, indices: Sequence[int], kept: Mapping[str, Mapping[int, np.ndarray]],
               threshold: float, by_slice: bool) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """False-positive hot spots of each model in ``kept`` (:func:`_keep_hot_slices`), per study: the components
    of prediction > ``threshold`` (SUV) outside the labelled uptake of the reference (the truth when the dataset
    has it, else the real PET; :mod:`petsynth.metrics.lesions`), 26-connected in 3-D over runs of consecutive
    evaluated slices (2-D per slice when ``by_slice``). Returns hot_spots.csv rows and model -> study -> count."""
    by_study: dict[str, list[tuple[int, int]]] = {}
    for pos, i in enumerate(indices):
        by_study.setdefault(dataset.slice_study(i), []).append((pos, i))
    rows: list[dict] = []
    counts: dict[str, dict[str, int]] = {m: {} for m in kept}
    for study, members in by_study.items():
        items = [dataset[i] for _, i in members]
        key = "truth" if "truth" in items[0] else "target"
        reference = np.stack([it[key] for it in items]).astype(np.float64)
        labels = np.stack([it["labels"] for it in items]).astype(np.int64) if "labels" in items[0] else None
        uptake_ids, benign_ids = uptake_labels(reference, labels, dataset.label_table(study), threshold)
        voxel_ml = None if by_slice else _voxel_ml(dataset, study)
        found: dict[str, list[dict]] = {m: [] for m in kept}
        for run in _runs([i for _, i in members], [it.get("plane", "") for it in items], by_slice):
            part = slice(run[0], run[-1] + 1)
            uptake = labelled_uptake(reference[part], None if labels is None else labels[part], uptake_ids,
                                     benign_ids, threshold)
            for model, slices in kept.items():
                pred = np.stack([slices.get(members[k][0], np.zeros(reference.shape[1:], np.float32)) for k in run])
                for spot in false_positive_hot_spots(pred, uptake, threshold, connectivity=HOT_SPOT_CONNECTIVITY,
                                                     voxel_ml=voxel_ml):
                    d, row, col = spot["peak"]
                    found[model].append({"voxels": spot["voxels"], "volume_ml": spot["volume_ml"],
                                         "suvmax": spot["suvmax"], "slice": items[run[d]]["index"],
                                         "z_mm": items[run[d]]["z_mm"], "row": row, "col": col})
        for model, spots in found.items():
            counts[model][study] = len(spots)
            spots.sort(key=lambda x: (-x["voxels"], -x["suvmax"]))
            rows += [{"model": model, "reference": "truth" if key == "truth" else "real", "study": study,
                      "component": n + 1, **spot} for n, spot in enumerate(spots)]
    return rows, counts


def _hot_spot_rows(counts: Mapping[str, Mapping[str, int]], reference: str) -> list[dict]:
    """metrics.csv rows of the false-positive hot spots (region "false_positive_hot_spots"): per study "count";
    overall "count" (mean and std over the studies, n = studies) and "total"."""
    rows = []
    for model, per_study in counts.items():
        base = {"model": model, "reference": reference, "convention": "suv", "region": FALSE_POSITIVES,
                "unit": "components", "data_range": ""}
        rows += [{**base, "study": study, "metric": "count", "mean": n, "std": "", "n": 1}
                 for study, n in per_study.items()]
        mean, std, n = _stats(list(per_study.values()))
        rows += [{**base, "study": "overall", "metric": "count", "mean": mean, "std": std, "n": n},
                 {**base, "study": "overall", "metric": "total", "mean": sum(per_study.values()), "std": "", "n": n}]
    return rows


def _region_values(a: Sequence[float]) -> dict[str, float]:
    n, sum_p, sum_r, max_p, max_r = a
    mean_p, mean_r = sum_p / n, sum_r / n
    rel = lambda d, ref: d / ref if ref != 0 else math.nan  # noqa: E731
    return {"suvmean_ref": mean_r, "suvmean_pred": mean_p, "suvmean_bias": mean_p - mean_r,
            "suvmean_rel_bias": rel(mean_p - mean_r, mean_r), "suvmax_ref": max_r, "suvmax_pred": max_p,
            "suvmax_bias": max_p - max_r, "suvmax_rel_bias": rel(max_p - max_r, max_r)}


def _image_rows(per_slice: list[dict], specs: list[MetricSpec], models: list[str], references: list[str],
                studies: list[str]) -> tuple[list[dict], dict]:
    rows, overall = [], {}
    for model in models:
        for ref in references:
            mine = [r for r in per_slice if r["model"] == model and r["reference"] == ref]
            for study in [*studies, "overall"]:
                chosen = mine if study == "overall" else [r for r in mine if r["study"] == study]
                for s in specs:
                    mean, std, n = _stats([r[s.key] for r in chosen])
                    rows.append({"model": model, "reference": ref, "study": study, "convention": s.convention,
                                 "region": "", "metric": s.name, "unit": s.unit, "data_range": s.data_range,
                                 "mean": mean, "std": std, "n": n})
                    if study == "overall":
                        overall.setdefault(model, {}).setdefault(ref, {})[s.key] = mean
    return rows, overall


def _region_rows(acc: dict, models: list[str], references: list[str], studies: list[str],
                 region_names: list[str]) -> tuple[list[dict], dict]:
    rows, overall = [], {}
    unit = lambda f: "fraction" if f.endswith("rel_bias") else "SUV"  # noqa: E731
    for model in models:
        for ref in references:
            for region in region_names:
                per_study = {s: _region_values(acc[(model, ref, s, region)]) for s in studies
                             if (model, ref, s, region) in acc}
                for study, values in per_study.items():
                    for f in BIAS_FIELDS:
                        rows.append({"model": model, "reference": ref, "study": study, "convention": "suv",
                                     "region": region, "metric": f, "unit": unit(f), "data_range": "",
                                     "mean": values[f], "std": "", "n": acc[(model, ref, study, region)][0]})
                if not per_study:
                    continue
                for f in BIAS_FIELDS:
                    mean, std, n = _stats([v[f] for v in per_study.values()])
                    rows.append({"model": model, "reference": ref, "study": "overall", "convention": "suv",
                                 "region": region, "metric": f, "unit": unit(f), "data_range": "",
                                 "mean": mean, "std": std, "n": n})
                    overall.setdefault(model, {}).setdefault(ref, {}).setdefault(region, {})[f] = mean
    return rows, overall


def _plane_rows(per_slice: list[dict], specs: list[MetricSpec], models: list[str], references: list[str],
                planes: list[str]) -> tuple[list[dict], dict]:
    """metrics.csv rows of the image metrics per plane (:func:`_image_rows` of the plane's slices, study
    "overall"), and plane -> model -> ref -> key -> mean."""
    rows, overall = [], {}
    for plane in planes:
        mine, overall[plane] = _image_rows([r for r in per_slice if r["plane"] == plane], specs, models, references,
                                           [])
        rows += [{**row, "plane": plane} for row in mine]
    return rows, overall


def _brain_rows(acc: dict, models: list[str], references: list[str], reference_region: str) -> list[dict]:
    """brain.csv rows: :func:`~petsynth.metrics.brain.brain_measures` per model, reference and study (and plane,
    when ``acc`` is keyed "study|plane"), then their mean over the studies ("overall"); [] without grey matter."""
    means: dict[tuple[str, str, str], tuple[dict, dict]] = {}
    for (model, ref, key, region), a in acc.items():
        pred, real = means.setdefault((model, ref, key), ({}, {}))
        pred[region], real[region] = a[1] / a[0], a[2] / a[0]
    if not any(GREY in pred for pred, _ in means.values()):
        return []
    rows: list[dict] = []
    for model in models:
        for ref in references:
            keys = sorted(k for (m, r, k) in means if m == model and r == ref)
            per_plane: dict[str, list[dict]] = {}
            for key in keys:
                study, _, plane = key.partition("|")
                values = brain_measures(*means[(model, ref, key)], reference=reference_region)
                per_plane.setdefault(plane, []).append(values)
                rows += [{"model": model, "reference": ref, "study": study, "plane": plane,
                          "reference_region": reference_region, "measure": k, "value": v} for k, v in values.items()]
            for plane, items in per_plane.items():
                for k in BRAIN_MEASURES:
                    finite = [v[k] for v in items if math.isfinite(v[k])]
                    rows.append({"model": model, "reference": ref, "study": "overall", "plane": plane,
                                 "reference_region": reference_region, "measure": k,
                                 "value": float(np.mean(finite)) if finite else math.nan})
    return rows


#: Columns of the brain table: (measure, heading, shown in percent).
_BRAIN_COLUMNS = (("suvr_grey_bias", "GM SUVR bias", True), ("suvr_white_bias", "WM SUVR bias", True),
                  ("grey_bias", "GM SUVmean bias", True), ("white_bias", "WM SUVmean bias", True),
                  ("gm_wm_ratio_pred", "GM/WM", False), ("hypo_contrast_pred", "hypometabolic contrast", False),
                  ("hypo_recovery", "contrast recovery", False))


def _brain_markdown(models: list[str], references: list[str], rows: list[dict], reference_region: str) -> str:
    """The brain table of table.md: one row per model (and plane), then the reference's own ratios."""
    if not rows:
        return ""
    lines = [""]
    for ref in references:
        overall = [r for r in rows if r["reference"] == ref and r["study"] == "overall"]
        planes = list(dict.fromkeys(r["plane"] for r in overall))
        by_plane = any(planes)
        lines += [f"## Brain regions against {REFERENCES[ref][1]} (SUVR to the {reference_region})", "",
                  "| model | " + ("plane | " if by_plane else "") + " | ".join(c[1] for c in _BRAIN_COLUMNS) + " |",
                  "|---|" + ("---|" if by_plane else "") + "---:|" * len(_BRAIN_COLUMNS)]
        for plane in planes:
            for model in [*models, None]:
                got = {r["measure"]: r["value"] for r in overall
                       if r["model"] == (model or models[0]) and r["plane"] == plane}
                if model is None:  # the reference's own ratio and contrast
                    cells = [_fmt(got.get(k.replace("_pred", "_ref")), 3) if k.endswith("_pred") else ""
                             for k, _, _ in _BRAIN_COLUMNS]
                else:
                    cells = [(f"{100 * got[k]:+.1f} %" if math.isfinite(got[k]) else "–") if pct else _fmt(got[k], 3)
                             for k, _, pct in _BRAIN_COLUMNS]
                lines.append(f"| {model or '(reference)'} | " + (f"{plane} | " if by_plane else "")
                             + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Brain measures (petsynth.metrics.brain): SUVR = region SUVmean / reference-region SUVmean; bias = "
              "synthetic / reference − 1; hypometabolic contrast = 1 − SUVmean(hypometabolic GM) / SUVmean(GM); "
              "contrast recovery = synthetic contrast / reference contrast. Means over the studies (per study in "
              "brain.csv).", ""]
    return "\n".join(lines)


#: Columns of lesions.csv and hot_spots.csv.
LESION_COLUMNS = ["model", "reference", "study", "lesion", "label", "class", "lesion_kind", "voxels", "suvmax_ref",
                  "suvmax_pred", "recovery"]
HOT_SPOT_COLUMNS = ["model", "reference", "study", "component", "voxels", "volume_ml", "suvmax", "slice", "z_mm",
                    "row", "col"]


def _uptake_definition(threshold: float, reference: str) -> str:
    """The labelled uptake of the hot spots, in words (table.md, evaluation.json)."""
    ref = "the phantom truth" if reference == "truth" else "the real PET"
    return (f"voxels where {ref} is >= {threshold / 2:g} SUV (half the threshold), dilated by one voxel (3x3x3), "
            "or labelled as an avid lesion (class ct_visible, ct_occult or unclassified) or as an organ whose "
            f"SUVmean in {ref} over the study's evaluated slices is > {threshold / 2:g} SUV; benign lesions' voxels "
            "are never uptake. A hot spot is a false positive when none of its voxels is labelled uptake.")


def _organ_markdown(models: list[str], references: list[str], region_names: list[str],
                    region_overall: Mapping) -> str:
    """The compact organ table of table.md per reference: organ | reference SUVmean | each model's SUVmean and
    relative bias (means over the studies with the organ)."""
    organs = [r for r in region_names if r not in (LESIONS, HIGH_UPTAKE)]
    lines = [""]
    for ref in references:
        values = {m: region_overall.get(m, {}).get(ref, {}) for m in models}
        present = [o for o in organs if any(o in values[m] for m in models)]
        if not present:
            continue
        head = "truth" if ref == "truth" else "real PET"
        lines += [f"## Organ SUVmean against {REFERENCES[ref][1]}", "",
                  f"| organ | {head} SUVmean | " + " | ".join(f"{m} | {m} bias" for m in models) + " |",
                  "|---|---:|" + "---:|---:|" * len(models)]
        for organ in present:
            got = [values[m].get(organ) for m in models]
            ref_mean = next(v["suvmean_ref"] for v in got if v)
            cells = [f"{_fmt(v['suvmean_pred'], 3)} | {_percent(v['suvmean_rel_bias'])}" if v else "– | –" for v in got]
            lines.append(f"| {organ} | {_fmt(ref_mean, 3)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) if len(lines) > 1 else ""


def _percent(fraction: float) -> str:
    return f"{100 * fraction:+.1f} %" if math.isfinite(fraction) else "–"


def _lesion_markdown(models: list[str], references: list[str], classes: Mapping, has_labels: bool) -> str:
    """The lesion SUVmax recovery table of table.md per reference: model | class | lesions | mean recovery | within
    ±30 %."""
    if not has_labels:
        return ""
    lines = [""]
    for ref in references:
        rows = [(m, c, v) for m in models for c, v in classes.get(m, {}).get(ref, {}).items()]
        lines += [f"## Lesion SUVmax recovery against {REFERENCES[ref][1]}", ""]
        if not rows:
            lines += ["(no lesion in the evaluated slices)", ""]
            continue
        lines += ["| model | class | lesions | mean recovery (std) | within ±30 % |", "|---|---|---:|---:|---:|"]
        lines += [f"| {m} | {c} | {v['count']} | {_fmt(v['mean_recovery'], 3)} ({_fmt(v['std_recovery'], 3)}) | "
                  f"{100 * v['within_tolerance']:.0f} % |" for m, c, v in rows]
        lines.append("")
    lines += [f"Recovery = SUVmax(prediction) / SUVmax(reference) over each lesion's voxels in its study's evaluated "
              f"slices (1 = perfect; per lesion in lesions.csv); per class: the lesions of all studies pooled; "
              f"within ±30 %: |recovery − 1| ≤ {RECOVERY_TOLERANCE:g}. Classes from the label table "
              f"({', '.join(CLASS_ORDER)}: tables without classes). {SCANNER}: the real PET scored like a model "
              "against the truth.", ""]
    return "\n".join(lines)


def _hot_spot_markdown(models: list[str], studies: list[str], spots: list[dict], hot: Mapping[str, Any]) -> str:
    """The false-positive hot-spot table of table.md: model | hot spots | studies with any | largest | highest SUV."""
    lines = ["", f"## False-positive hot spots (prediction > {hot['threshold_suv']:g} SUV outside labelled uptake)", "",
             "| model | hot spots | studies with any | largest [voxels] | largest [mL] | highest SUV |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in models:
        mine = [s for s in spots if s["model"] == m]
        per_study = hot["per_model"][m]["per_study"]
        big = max(mine, key=lambda s: s["voxels"]) if mine else None
        lines.append(f"| {m} | {len(mine)} | {sum(1 for n in per_study.values() if n)} of {len(studies)} | "
                     + (f"{big['voxels']} | {_fmt(big['volume_ml'], 2)} | {max(s['suvmax'] for s in mine):.2f} |"
                        if big else "0 | – | – |"))
    lines += ["", f"Labelled uptake: {hot['labelled_uptake']} Components: {hot['connectivity']}. Each component "
                  "(size, peak SUV and position) in hot_spots.csv; counts per study in metrics.csv.", ""]
    return "\n".join(lines)


def _lesion_tables(models: list[str], references: list[str], classes: Mapping, hot: Mapping[str, Any]) -> list:
    """report.html's tables of the lesion recovery per class and of the false-positive hot spots."""
    from petsynth.report import Table

    tables = []
    for ref in references:
        rows = [[m, c, v["count"], v["mean_recovery"], 100 * v["within_tolerance"]]
                for m in models for c, v in classes.get(m, {}).get(ref, {}).items()]
        if rows:
            tables.append(Table(f"Lesion SUVmax recovery against the {ref} PET", ["model", "class", "lesions",
                                "mean recovery", "within ±30 %"], rows, digits=2,
                                note="recovery = SUVmax(prediction) / SUVmax(reference) per lesion"))
    rows = [[m, v["total"], sum(1 for n in v["per_study"].values() if n)] for m, v in hot["per_model"].items()]
    tables.append(Table(f"False-positive hot spots (> {hot['threshold_suv']:g} SUV outside labelled uptake)",
                        ["model", "hot spots", "studies with any"], rows, digits=0,
                        note=f"labelled uptake: {hot['labelled_uptake']}"))
    return tables


def _plane_markdown(models: list[str], references: list[str], specs: list[MetricSpec], planes: list[str],
                    overall: dict) -> str:
    """The per-plane tables of table.md (SUV convention)."""
    if not planes:
        return ""
    chosen = sorted((s for s in specs if s.convention == "suv"), key=lambda s: _TABLE_ORDER["suv"].index(s.name))
    lines = [""]
    for ref in references:
        for plane in planes:
            lines += [f"## {plane.capitalize()} slices against {REFERENCES[ref][1]}: SUV convention", ""]
            lines += _metric_table(models, chosen, {m: overall[plane][m][ref] for m in models})
            lines.append("")
    return "\n".join(lines)


# --- writers ---------------------------------------------------------------------------------------------
def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # full precision: the CSV reproduces the numbers exactly
    return value


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k, "")) for k in columns})
    atomic_write_text(path, buffer.getvalue())


def format_gap(gap: float | None) -> str:
    """The "Diff." cell: the relative gap in percent with a sign and two decimals, or "–"."""
    return "–" if gap is None else f"{100 * gap:+.2f}%"


def _fmt(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "n/a" if value is None or math.isnan(value) else ("∞" if value > 0 else "-∞")
    return f"{value:.{digits}f}"


def _metric_table(models: list[str], specs: list[MetricSpec], values: Mapping[str, Mapping[str, float]]) -> list[str]:
    lines = ["| Method | " + " | ".join(s.label for s in specs) + " |",
             "|---|" + "---:|" * len(specs)]
    winners, gaps = {}, {}
    for s in specs:
        winners[s.key], gaps[s.key] = relative_gap({m: values[m][s.key] for m in models}, s.higher_is_better)
    for m in models:
        cells = []
        for s in specs:
            text = _fmt(values[m][s.key], s.digits)
            cells.append(f"**{text}**" if m in winners[s.key] and len(models) > 1 else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("| Diff. | " + " | ".join(format_gap(gaps[s.key]) for s in specs) + " |")
    return lines


def _bias_table(models: list[str], regions: list[str], values: Mapping[str, Mapping[str, Mapping[str, float]]]
                ) -> list[str]:
    """Rows: regions; columns: each model's SUVmean and SUVmax bias; bold: the smallest |relative bias|."""
    present = [r for r in regions if any(r in values.get(m, {}) for m in models)]
    if not present:
        return ["(no labelled or high-uptake region in the evaluated slices)"]
    cols = [(m, q) for m in models for q in ("suvmean", "suvmax")]
    lines = ["| Region | " + " | ".join(f"{m}: {'SUVmean' if q == 'suvmean' else 'SUVmax'} bias" for m, q in cols)
             + " |", "|---|" + "---:|" * len(cols)]
    for r in present:
        best = {}
        for q in ("suvmean", "suvmax"):
            absolute = {m: abs(values[m][r][f"{q}_rel_bias"]) for m in models if r in values.get(m, {})}
            best[q], _ = relative_gap(absolute, higher_is_better=False)
        cells = []
        for m, q in cols:
            v = values.get(m, {}).get(r)
            if v is None:
                cells.append("–")
                continue
            rel, bias = v[f"{q}_rel_bias"], v[f"{q}_bias"]
            text = f"{100 * rel:+.1f}% ({bias:+.3f} SUV)" if math.isfinite(rel) else f"n/a ({bias:+.3f} SUV)"
            cells.append(f"**{text}**" if m in best[q] and len(models) > 1 else text)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines


def _table_markdown(dataset: PreparedDataset, split: str, n_slices: int, studies: list[str], models: list[str],
                    references: list[str], specs: list[MetricSpec], overall: dict, region_names: list[str],
                    region_overall: dict, regions: dict[str, list[int]], notes: list[str],
                    window: tuple[float, float]) -> str:
    low, high = window
    width = high - low
    where = "all studies" if split == "all" else f"the {split} split"
    lines = [f"# Evaluation: {dataset.task}, {where}, {n_slices} slices of {len(studies)} "
             f"stud{'y' if len(studies) == 1 else 'ies'}", ""]
    titles = {"suv": "SUV convention", "cpdm": "CPDM paper convention (Table 4)"}
    for ref in references:
        for convention in ("suv", "cpdm"):
            chosen = sorted((s for s in specs if s.convention == convention),
                            key=lambda s: _TABLE_ORDER[convention].index(s.name))
            lines += [f"## Against {REFERENCES[ref][1]}: {titles[convention]}", ""]
            lines += _metric_table(models, chosen, {m: overall[m][ref] for m in models})
            lines.append("")
    for ref in references:
        lines += [f"## SUVmean / SUVmax bias against {REFERENCES[ref][1]}", ""]
        lines += _bias_table(models, region_names, {m: region_overall.get(m, {}).get(ref, {}) for m in models})
        lines.append("")
    region_text = ", ".join(f"{k} (labels {', '.join(map(str, v))})" for k, v in regions.items())
    lines += [
        "## Conventions and data ranges", "",
        f"- Values are means over the {n_slices} evaluated slices (population standard deviations and per-study "
        "values in metrics.csv; per-slice values in per_slice.csv). Non-finite per-slice values (the PSNR of "
        "identical slices, the VIF of a flat reference) are left out of the means. Bold: the best value per "
        "column. ↑/↓: higher/lower is better.",
        "- Diff.: the relative gap of the best value to the second best, (best − second) / second, per metric "
        "(as in the CPDM paper's Table 4; negative for ↓ metrics when the best is lower).",
        f"- SUV convention: images in SUVbw as stored, not clipped. Data range L = {width:g} SUV (the fixed PET "
        f"window {low:g}–{high:g} SUV, the same for every model): PSNR = 10 log10(L² / MSE); SSIM with an 11×11 "
        "Gaussian window (σ 1.5), K1 = 0.01, K2 = 0.03, averaged over the valid region (Wang et al. 2004); "
        "MS-SSIM with the 5 standard scale weights; VIF in the pixel domain (L mapped to 255); LPIPS "
        f"({LPIPS_NET}) on 2·SUV/L − 1. MAE in SUV.",
        f"- CPDM paper convention: the paper divides stored int16 PET values by 2^15 − 1 = {CPDM_PET_SCALE} "
        "(data range 1), computes SSIM with scikit-image's defaults (7×7 uniform window, sample covariance) and "
        "reports MAE in stored units. Datasets here hold SUV, so SUV is mapped to a stored-value equivalent "
        f"through the fixed window: stored = {CPDM_PET_SCALE} · (clip(SUV, {low:g}, {high:g}) − {low:g}) / "
        f"{width:g} (full int16 scale = {high:g} SUV; 1 stored unit = {width / CPDM_PET_SCALE:.3g} SUV). This is "
        "an APPROXIMATION of the paper's convention: its stored values were DICOM pixel values with a "
        "per-slice rescale slope, so these numbers compare with the paper's in kind, not in absolute value.",
        "- SUV bias: relative bias (pred − ref) / ref of the region's SUVmean and SUVmax, absolute bias in SUV in "
        "brackets; voxels pooled over each study's evaluated slices, then averaged over the studies with the "
        "region (bold: the smallest |relative bias|). Regions: "
        + (f"{region_text}, named by the studies' label tables; " if region_text else "")
        + f"{HIGH_UPTAKE} = reference SUV ≥ {DEFAULT_SUV_THRESHOLD:g}.",
    ]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _write_figure(path: Path, positions: list[int], items: dict[int, dict[str, Any]],
                  preds: dict[str, dict[int, np.ndarray]], task: str, split: str) -> None:
    """CT | real PET | each model's PET | each model's |error| vs real PET, one row per chosen slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(preds)
    source_title = get_task(task).source_label
    source_kind = "source" if get_task(task).source_kind == "mr" else get_task(task).source_kind
    n_cols = 2 + 2 * len(models)
    n_rows = len(positions)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.3 * n_rows + 1.2), squeeze=False,
                             layout="constrained")
    sources = np.stack([items[pos]["source"] for pos in positions])
    kinds = {"ct": ("gray", *FIGURE_CT_WINDOW), "pet": ("gray_r", *FIGURE_PET_WINDOW),
             "error": ("viridis", 0.0, FIGURE_ERROR_MAX_SUV),  # MR: the shown slices' 1st..99th percentiles
             "source": ("gray", *(float(v) for v in np.percentile(sources, [1, 99])))}
    mappables: dict[str, Any] = {}
    columns: dict[str, list] = {"ct": [], "pet": [], "error": [], "source": []}
    for r, pos in enumerate(positions):
        real = items[pos]["target"]
        panels = [(items[pos]["source"], source_title, source_kind), (real, "real PET", "pet")]
        panels += [(preds[m][pos], m, "pet") for m in models]
        panels += [(np.abs(preds[m][pos] - real), f"|error| {m}", "error") for m in models]
        for c, (image, title, kind) in enumerate(panels):
            ax = axes[r][c]
            cmap, lo, hi = kinds[kind]
            mappables[kind] = ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
                columns[kind].append(c)
        axes[r][0].set_ylabel(f"{items[pos]['study']}\nslice {items[pos]['slice']}", fontsize=8)
    for kind, label in (("ct", "CT [HU]"), ("source", "MR"), ("pet", "PET [SUV]"),
                        ("error", "|synthetic − real| [SUV]")):
        cols = columns[kind]
        if not cols:
            continue
        fig.colorbar(mappables[kind], ax=[axes[r][c] for r in range(n_rows) for c in cols], location="bottom",
                     shrink=0.8, aspect=30, label=label)
    where = "all studies" if split == "all" else f"the {split} split"
    ct_text = f"CT {FIGURE_CT_WINDOW[0]:g}..{FIGURE_CT_WINDOW[1]:g} HU, " if source_kind == "ct" else ""
    fig.suptitle(f"Synthetic PET on {where}: {ct_text}"
                 f"PET {FIGURE_PET_WINDOW[0]:g}..{FIGURE_PET_WINDOW[1]:g} SUV, absolute error against the real "
                 f"PET 0..{FIGURE_ERROR_MAX_SUV:g} SUV (shared scales)", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    with atomic_file(path, "wb") as fh:
        fh.write(buffer.getvalue())

"""``petsynth translate``: what a model's task reads (a CT, an MR, or a low-dose PET with its CT; DICOM study
folder or NIfTI) or a prepared dataset split -> synthetic PET in SUV.

Inputs (:func:`read_input`; the model's :class:`~petsynth.tasks.Task` says which, ``Task.translate_reads``):

- a DICOM study folder (one study): the series ``petsynth prepare`` would take, the largest of the source's
  modality (CT for ct2pet, MR for mr2pet) or, for a low-dose PET source (lpet2spet), the attenuation-corrected
  PET with the shortest frames, in SUVbw; plus the largest CT for a task with a guidance CT, which must share
  the source's FrameOfReferenceUID;
- a NIfTI source (CT in HU, MR as read, low-dose PET in SUVbw) and, for a task with a guidance CT, the CT's
  NIfTI (``ct=``, CLI ``--ct``) in the same world coordinates.

Every image is checked to look like its modality (a "PET" or an "MR" with air at -1000 is a CT, a CT without
it is not one); a model whose task does not fit the input is refused before any work (:class:`WrongTaskError`,
naming the model's task, what it reads and what the input holds).

The output grid keeps the source's orientation and slice positions (for lpet2spet: the low-dose PET's frame
and slices); in-plane it has the pixel spacing the model was trained at (the card's ``data.spacing_mm``, else
``spacing_mm``), is centred on the source's field of view and has a multiple of 32 pixels per side, at least
the model's training size (air outside; the networks normalise over the whole slice, so the canvas size
matters). Each image is shrunk with antialiasing first, then resampled onto that grid in world coordinates
(the guidance CT too, air outside it), so the network sees anatomy at its training scale. The kVp comes from
the CT's header where the task has a CT. The output's affine is that grid's, so the synthetic PET overlays the
source in any viewer.

Written into ``OUT`` (created atomically: a failed run leaves nothing):

- ``synthetic_pet.nii.gz``: SUVbw, float32, (nz, ny, nx) on the output grid, 0 outside the body
  (:func:`input_body_mask`: the CT above -500 HU where the task has a CT, else the MR above a tenth of its
  99th percentile; holes filled, grown by 10 mm; ``mask_body=False`` keeps the network's raw output);
- the DICOM inputs as NIfTI on their own grids, named for what they hold: ``ct.nii.gz`` (HU; the source of
  ct2pet, the guidance of lpet2spet), ``mr.nii.gz`` (as read), ``low_dose_pet.nii.gz`` (SUVbw);
- ``dicom/``: a PET series (Units GML) in the source's study and frame of reference (the MR's, the low-dose
  PET's; a new study for NIfTI inputs), marked DERIVED and "not for diagnosis", its DerivationDescription
  naming what it was synthesized from (:mod:`petsynth.io.synthetic_pet`);
- ``panels/`` (optional, ``png``): ``slices.png`` (a few slices, source | synthetic PET), ``mip.png`` (coronal
  maximum-intensity projection in SUV) and ``fused.png`` (the synthetic PET over the CT or MR, axial and
  coronal, with a legend in SUV), :mod:`petsynth.io.views`;
- ``report.html`` (optional, ``report``): one self-contained page with MIPs, a slice viewer and the model's
  facts (:mod:`petsynth.report`), no patient identifier;
- ``translate.json``: model, task, input kinds, options, grid, kVp, timings (no patient data, no input path).

For a prepared dataset (``INPUT`` holds ``dataset.yaml``): one ``OUT/<study>/synthetic_pet.nii.gz`` per study
of the split, on an axial grid built from the slices' spacing and z (datasets keep no in-plane origin).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

import petsynth
from petsynth.data.batch import CONTEXT_KEY, DEFAULT_KVP
from petsynth.data.dicom_index import SeriesInfo, StudyInfo, scan_dicom
from petsynth.data.dicom_series import SeriesError, load_series
from petsynth.data.geometry import Geometry, resample
from petsynth.data.nifti_layouts import load_nifti_volume
from petsynth.data.prepare import by_frame_duration, corrected_pets, dose_ratio, largest_series
from petsynth.data.slabs import context_stack
from petsynth.data.store import DATASET_FILE, open_dataset
from petsynth.data.suv import SUVError
from petsynth.inference import (GRID_MULTIPLE, PredictOptions, load_model, model_name, model_size,
                                model_slice_spacing_mm, model_spacing_mm, predict_dataset, predict_items, set_threads)
from petsynth.io.nifti import write_nifti
from petsynth.methods.base import Method, MethodError
from petsynth.physics.constants import HU_AIR, KVP_RANGE
from petsynth.tasks import Task, get_task
from petsynth.utils.files import atomic_directory, atomic_write_text

if TYPE_CHECKING:
    from petsynth.data.dicom_series import SliceReader

#: Slice size used when a model card gives no training spacing and no ``spacing_mm`` is passed.
FALLBACK_SIZE = 256
#: Body mask of translate's output where the task has a CT: CT above this HU (holes filled), grown by the
#: margin; SUV 0 outside.
BODY_THRESHOLD_HU = -500.0
BODY_MARGIN_MM = 10.0
#: Body mask of a task without a CT (mr2pet): the source above this fraction of its this-th percentile.
SOURCE_BODY_FRACTION = 0.1
SOURCE_BODY_PERCENTILE = 99.0
NIFTI_DESCRIPTION = "petsynth synthetic PET (SUVbw), not for diagnosis"

Say = Callable[[str], None]
Progress = Callable[[int, int], None]


class TranslateError(ValueError):
    """The input or the model cannot be translated; the message names the file and the problem."""


class WrongTaskError(TranslateError, MethodError):
    """The input is not what the model's task reads (an mr2pet model given a CT study or a CT NIfTI, a
    "PET" with air at -1000 HU); the message names the model's task, what it reads and what the input holds."""


@dataclass
class TranslateResult:
    """What :func:`translate` wrote: the output folder, its files, the grid, the SUV volume and timings."""

    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    geometry: Geometry | None = None
    suv: np.ndarray | None = None
    slices: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


# --- inputs -----------------------------------------------------------------------------------------------
@dataclass
class InputImage:
    """One image translate reads: ``array`` (nz, ny, nx) float32 in physical units (CT in HU, PET in SUVbw, MR
    as read) on ``geometry``, for a DICOM CT or MR a :class:`~petsynth.data.dicom_series.SliceReader` of it
    (read slice by slice, never held whole); ``modality`` its DICOM Modality ("CT", "MR", "PT"); ``label`` how
    messages and outputs name it ("CT", "MR", "low-dose PET"); ``kvp`` from a CT's header (None otherwise and
    for NIfTI); ``reference``: one instance's header (DICOM inputs), for the output series' study; ``kind``:
    "dicom" or "nifti"."""

    array: np.ndarray | SliceReader
    geometry: Geometry
    modality: str = "CT"
    label: str = "CT"
    kvp: float | None = None
    reference: Any = None
    kind: str = "dicom"

    @property
    def file_stem(self) -> str:
        """Its name as an output file: "ct", "mr", "low_dose_pet"."""
        return self.label.lower().replace("-", "_").replace(" ", "_")


@dataclass
class TranslateInput:
    """What a model of ``task`` reads: its source and, for a task with a guidance image, the CT beside it."""

    task: Task
    source: InputImage
    guidance: InputImage | None = None
    #: a low-dose source's dose fraction from its study's headers (against the study's standard-dose series)
    dose_fraction: float | None = None

    @property
    def ct(self) -> InputImage | None:
        """The CT (the task's ``ct_role``: source or guidance), None for a task without one."""
        return getattr(self, self.task.ct_role) if self.task.has_ct else None

    @property
    def images(self) -> dict[str, InputImage]:
        """The images by role ("source", "guidance")."""
        return {"source": self.source, **({"guidance": self.guidance} if self.guidance is not None else {})}


def _value_range(values: np.ndarray | SliceReader) -> tuple[str | None, float, float]:
    """(why the values are unusable or None, 1st percentile, 99.9th percentile) of a sample of the slices."""
    sample = values[:: max(1, values.shape[0] // 16)].ravel()
    if not np.isfinite(sample).all():
        return "it has non-finite values", 0.0, 0.0
    if sample.max() <= sample.min():
        return f"it is constant ({sample.min():.4g})", 0.0, 0.0
    lo, hi = np.percentile(sample, [1, 99.9])
    return None, float(lo), float(hi)


def _extremes(values: np.ndarray | SliceReader, slab: int = 64) -> tuple[float, float]:
    """(min, max) of a volume, read ``slab`` slices at a time (a lazy reader is never read whole)."""
    lo, hi = np.inf, -np.inf
    for k in range(0, values.shape[0], slab):
        part = np.asarray(values[k:k + slab])
        lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
    return lo, hi


def _looks_like_ct(hu: np.ndarray) -> str | None:
    """Why ``hu`` is not a CT in HU (None when it plausibly is): a CT has air near -1000 HU and bone/tissue."""
    reason, lo, hi = _value_range(hu)
    if reason:
        return reason
    if -500 >= lo >= -3000 and hi <= 40000:
        return None
    low, high = _extremes(hu)
    if lo > -500:
        return (f"its values run from {low:.4g} to {high:.4g}: a CT in HU has air near -1000 (is it an MR or a PET "
                "image?)")
    return f"its values run from {low:.4g} to {high:.4g}, far outside the HU range"


def _looks_like_mr(mr: np.ndarray) -> str | None:
    """Why ``mr`` is not an MR image (None when it plausibly is): MR magnitude images have no air near -1000."""
    reason, lo, _ = _value_range(mr)
    if reason:
        return reason
    if lo < -500:
        return f"its values reach {_extremes(mr)[0]:.4g} with air near -1000: it looks like a CT in HU"
    return None


#: A PET in SUVbw: anything far above this 99.9th percentile is in other units (Bq/ml, counts) or not a PET.
SUV_PLAUSIBLE_MAX = 200.0


def _looks_like_suv(suv: np.ndarray) -> str | None:
    """Why ``suv`` is not a PET in SUVbw (None when it plausibly is): SUV is >= 0 (small reconstruction
    negatives aside) and mostly below a few tens."""
    reason, lo, hi = _value_range(suv)
    if reason:
        return reason
    if lo < -100:
        return f"its values reach {_extremes(suv)[0]:.4g} with air near -1000: it looks like a CT in HU"
    if hi > SUV_PLAUSIBLE_MAX:
        return (f"its values run up to {_extremes(suv)[1]:.4g}, far above SUV (Bq/ml or counts, or an MR?): "
                "translate needs SUVbw")
    return None


#: Per DICOM Modality: how an image of it is named in errors, and why an array is not one (None: plausible).
PLAUSIBILITY: dict[str, tuple[str, Callable[[np.ndarray], str | None]]] = {
    "CT": ("a CT in HU", _looks_like_ct),
    "MR": ("an MR image", _looks_like_mr),
    "PT": ("a PET in SUV", _looks_like_suv),
}


def _reads(task: Task) -> str:
    return f"the model is for {task.name} (it reads {task.translate_reads})"


def _check(image: InputImage, where: Path, task: Task) -> InputImage:
    what, why_not = PLAUSIBILITY[image.modality]
    reason = why_not(image.array)
    if reason:
        raise WrongTaskError(f"{where} does not look like {what}: {reason}; {_reads(task)}")
    return image


def _read_nifti(path: str | Path, modality: str, label: str, task: Task) -> InputImage:
    """A NIfTI file read as ``modality`` (values as stored: HU, SUVbw, MR; NIfTI carries no kVp), checked."""
    path = Path(path)
    if not path.is_file():
        raise TranslateError(f"{path}: no such file")
    try:
        volume = load_nifti_volume(path, modality)
    except ValueError as err:
        raise TranslateError(str(err)) from None
    return _check(InputImage(volume.array, volume.geometry, modality, label, kind="nifti"), path, task)


def _read_series(series: SeriesInfo, modality: str, label: str, folder: Path, task: Task) -> InputImage:
    """One DICOM series in physical units (:func:`~petsynth.data.dicom_series.load_series`), checked; a CT or
    an MR as a lazy :class:`~petsynth.data.dicom_series.SliceReader` (a PET's SUV factor needs it whole)."""
    import pydicom

    try:
        volume = load_series(series, modality, lazy=True)
    except (SeriesError, SUVError) as err:
        raise TranslateError(f"{folder}: {label} series: {err}") from None
    if volume.geometry.shape[0] < 2:  # (one file may hold many slices: an enhanced multi-frame image)
        raise TranslateError(f"{folder}: the {label} series has a single slice; translate needs a volume")
    if volume.irregular:
        warnings.warn(f"{folder}: the {label}'s slice spacing is irregular; the output uses its median step",
                      stacklevel=3)
    reference = pydicom.dcmread(volume.files[0], stop_before_pixels=True)
    image = InputImage(volume.array, volume.geometry, modality, label, kvp=volume.kvp, reference=reference,
                       kind="dicom")
    try:
        return _check(image, folder, task)
    except SeriesError as err:  # a lazily read slice that cannot be decoded
        raise TranslateError(f"{folder}: {label} series: {err}") from None


def read_dicom_study(folder: str | Path, task: str | Task, progress: Progress | None = None) -> TranslateInput:
    """The series a ``task`` model reads from the one study under ``folder`` (searched recursively), chosen as
    ``petsynth prepare`` chooses them: the largest series of the source's modality, or for a low-dose PET source
    the attenuation-corrected PET with the shortest frames; the largest CT as guidance. Source and guidance
    must share their FrameOfReferenceUID."""
    task, folder = get_task(task), Path(folder)
    studies, skipped = scan_dicom([folder], progress=progress)
    if not studies:
        raise TranslateError(f"{folder}: no DICOM images found ({len(skipped)} files ignored)")
    if len(studies) > 1:
        raise TranslateError(f"{folder} holds {len(studies)} studies: give one study's folder (or translate the "
                             "whole archive: `petsynth translate MODEL ARCHIVE --out OUT`, petsynth.archive)")
    return study_inputs(studies[0], task, folder)


def study_inputs(study: StudyInfo, task: str | Task, folder: Path) -> TranslateInput:
    """The series a ``task`` model reads from one scanned DICOM study (:func:`read_dicom_study`'s choice);
    ``folder`` names it in messages."""
    task = get_task(task)
    needed = [m for m in (task.source_modality, task.guidance_modality) if m]
    missing = [m for m in needed if not study.of_modality(m)]
    if missing:
        found = ", ".join(sorted({s.modality for s in study.series}))
        raise WrongTaskError(f"{_reads(task)}; {folder} holds {found} series, no {' or '.join(missing)} series")
    fraction = None
    if task.low_dose_source:
        pets = corrected_pets(study)  # the low-dose source is a PET
        if not pets:
            raise TranslateError(f"{folder}: no attenuation-corrected PET series (CorrectedImage with ATTN) to "
                                 f"use as the {task.source_label}")
        ordered = by_frame_duration(pets)
        source = ordered[0]
        if len(ordered) > 1:
            fraction = dose_ratio(source, ordered[-1])
    else:
        source = largest_series(study.of_modality(task.source_modality))
    guidance = largest_series(study.of_modality(task.guidance_modality)) if task.guidance_modality else None
    if guidance is not None and guidance.frame_of_reference_uid != source.frame_of_reference_uid:
        raise TranslateError(f"{folder}: the {task.guidance_modality} and the {task.source_label} series have "
                             "different FrameOfReferenceUIDs: they are not registered, so translate cannot "
                             "overlay them in world coordinates")
    return TranslateInput(task, _read_series(source, task.source_modality, task.source_label, folder, task),
                          None if guidance is None else
                          _read_series(guidance, task.guidance_modality, task.guidance_modality, folder, task),
                          dose_fraction=fraction)


def read_input(path: str | Path, task: str | Task, ct: str | Path | None = None,
               progress: Progress | None = None) -> TranslateInput:
    """What a ``task`` model reads (:attr:`Task.translate_reads`): a DICOM study folder
    (:func:`read_dicom_study`), or a NIfTI source with, for a task with a guidance CT, the CT's NIfTI ``ct``.
    Each image is checked to look like its modality (:data:`PLAUSIBILITY`); errors name the file."""
    task, path = get_task(task), Path(path)
    if ct is not None and not task.guidance_modality:
        raise TranslateError(f"--ct gives a guidance CT, but {_reads(task)}: drop --ct")
    if not path.exists():
        raise TranslateError(f"{path}: no such file or folder")
    if path.is_dir():
        if ct is not None:
            raise TranslateError(f"{path} is a DICOM study folder: its CT comes from the folder; --ct goes with a "
                                 "NIfTI input")
        return read_dicom_study(path, task, progress=progress)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise TranslateError(f"{path}: give a DICOM study folder, a NIfTI image (.nii/.nii.gz) or a prepared "
                             "dataset")
    if task.guidance_modality and ct is None:
        raise TranslateError(f"{path}: {_reads(task)}: pass the {task.guidance_modality} as --ct FILE.nii.gz "
                             "(Python: ct=)")
    source = _read_nifti(path, task.source_modality, task.source_label, task)
    guidance = None if ct is None else _read_nifti(ct, task.guidance_modality, task.guidance_modality, task)
    return TranslateInput(task, source, guidance)


# --- the output grid --------------------------------------------------------------------------------------
def output_geometry(source: Geometry, spacing_mm: float, multiple: int = GRID_MULTIPLE,
                    min_size: int | None = None) -> Geometry:
    """The source's slices with square pixels of ``spacing_mm``, centred on its field of view, covering it,
    a multiple of ``multiple`` pixels per side and at least ``min_size`` (the model's training size: the
    networks' group normalisation sees the whole slice, so a smaller canvas, with less air around the body,
    changes their output)."""
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    nz, ny, nx = source.shape
    _, dy, dx = source.spacing
    fov = max(ny * dy, nx * dx)
    n = max(multiple, int(math.ceil(fov / spacing_mm / multiple - 1e-6)) * multiple)
    if min_size:
        n = max(n, int(math.ceil(min_size / multiple)) * multiple)
    centre = source.index_to_world(np.array([(nx - 1) / 2, (ny - 1) / 2, 0.0]))
    d = source.direction_matrix
    origin = centre - d[:, 0] * (n - 1) / 2 * spacing_mm - d[:, 1] * (n - 1) / 2 * spacing_mm
    return Geometry(shape=(nz, n, n), spacing=(source.spacing[0], spacing_mm, spacing_mm), origin=tuple(origin),
                    direction=source.direction)


def translation_grid(method: Method, source: Geometry, spacing_mm: float | None = None) -> Geometry:
    """The grid ``method`` translates the source on ``source`` at: :func:`output_geometry` with ``spacing_mm``,
    else the model's training spacing, else the source's field of view over :data:`FALLBACK_SIZE` pixels; at
    least the model's training size."""
    spacing = spacing_mm or model_spacing_mm(method)
    if spacing is None:
        _, dy, dx = source.spacing
        spacing = max(source.shape[1] * dy, source.shape[2] * dx) / FALLBACK_SIZE
    return output_geometry(source, spacing, min_size=model_size(method))


class _Shrunk:
    """The slices of ``volume`` ((nz, ny, nx): an array or a lazy reader) shrunk in-plane to ``size`` (my, mx)
    with antialiasing, each when asked for (``shrunk[k]``, ``shrunk[k0:k1]``, ``np.asarray``): :func:`resample`
    reads them a slab at a time, so neither the source nor its shrunk copy is held whole."""

    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(self, volume: np.ndarray | SliceReader, size: tuple[int, int]):
        self.volume, self.shape = volume, (volume.shape[0], *size)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, k) -> np.ndarray:
        slab = np.asarray(self.volume[k], dtype=np.float32)
        t = torch.from_numpy(np.ascontiguousarray(slab.reshape(-1, *slab.shape[-2:])))[:, None]
        out = F.interpolate(t, size=self.shape[1:], mode="bilinear", align_corners=False, antialias=True)[:, 0]
        return out.numpy().reshape(*slab.shape[:-2], *self.shape[1:])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        volume = self[:]
        return volume if dtype is None else volume.astype(dtype, copy=False)


def image_on_grid(image: InputImage, grid: Geometry) -> np.ndarray:
    """``image`` on ``grid``, (nz, ny, nx) float32 of the grid: antialiased in-plane shrink to about the
    grid's spacing, then world-space resampling (any slices: the guidance CT onto the source's), air outside
    the image (-1000 HU for a CT, 0 otherwise, as ``petsynth prepare`` fills). Slab by slab: of the image at
    its own resolution, only a few slices are held at a time."""
    nz, ny, nx = image.geometry.shape
    _, dy, dx = image.geometry.spacing
    step = grid.spacing[1]
    my, mx = max(1, round(ny * dy / step)), max(1, round(nx * dx / step))
    src, geometry = image.array, image.geometry
    if my < ny or mx < nx:
        src = _Shrunk(image.array, (my, mx))
        # same field of view, larger pixels: voxel centres move by half the change of pixel size
        new_dy, new_dx = ny * dy / my, nx * dx / mx
        d = geometry.direction_matrix
        origin = (np.asarray(geometry.origin) + d[:, 0] * (new_dx - dx) / 2 + d[:, 1] * (new_dy - dy) / 2)
        geometry = Geometry(shape=src.shape, spacing=(geometry.spacing[0], new_dy, new_dx), origin=tuple(origin),
                            direction=geometry.direction)
    return resample(src, geometry, grid, fill=HU_AIR if image.modality == "CT" else 0.0)


def _check_overlap(image: InputImage, grid: Geometry, what: str) -> None:
    """Refuse a guidance image that covers none of the grid's slices; warn when it misses some."""
    nz, ny, nx = grid.shape
    centres = grid.index_to_world(np.stack([np.full(nz, (nx - 1) / 2), np.full(nz, (ny - 1) / 2),
                                            np.arange(nz, dtype=float)], axis=1))
    k = image.geometry.world_to_index(centres)[:, 2]
    inside = (k > -0.5) & (k < image.geometry.shape[0] - 0.5)
    if not inside.any():
        raise TranslateError(f"the {image.label} does not overlap the {what} in world coordinates: are they of "
                             "the same patient and scan?")
    if not inside.all():
        warnings.warn(f"{int((~inside).sum())} of {nz} slices of the {what} lie outside the {image.label}: "
                      "air there", stacklevel=3)


def body_mask(image: np.ndarray, spacing_mm: float, threshold: float = BODY_THRESHOLD_HU,
              margin_mm: float = BODY_MARGIN_MM) -> np.ndarray:
    """(nz, ny, nx) bool: per slice, the voxels above ``threshold`` (HU for a CT) with their enclosed holes
    (lungs, bowel gas; the skull of an MR) filled, grown by ``margin_mm``. Outside it a PET has no activity."""
    from scipy import ndimage

    grow = max(0, int(round(margin_mm / spacing_mm)))
    structure = ndimage.generate_binary_structure(2, 1)
    out = np.zeros(image.shape, dtype=bool)
    for k in range(image.shape[0]):
        m = ndimage.binary_fill_holes(image[k] > threshold)
        out[k] = ndimage.binary_dilation(m, structure, iterations=grow) if grow else m
    return out


def input_body_mask(inputs: TranslateInput, on_grid: dict[str, np.ndarray], spacing_mm: float) -> np.ndarray:
    """Where translate keeps the synthetic PET. A task with a CT (source or guidance): the CT's
    :func:`body_mask` (above -500 HU). A task without (mr2pet): the source's head, voxels above
    :data:`SOURCE_BODY_FRACTION` of its :data:`SOURCE_BODY_PERCENTILE` th percentile (an MR's background is
    noise near 0, scalp and brain lie far above it; the dark skull and sinuses are holes, filled), grown by
    the same margin."""
    if inputs.task.has_ct:
        return body_mask(on_grid[inputs.task.ct_role], spacing_mm)
    source = inputs.source.array
    level = float(np.percentile(source[:: max(1, source.shape[0] // 16)], SOURCE_BODY_PERCENTILE))
    return body_mask(on_grid["source"], spacing_mm, threshold=SOURCE_BODY_FRACTION * level)


# --- the whole job ----------------------------------------------------------------------------------------
def _model_info(method: Method, spec: str | Path) -> dict[str, Any]:
    card = getattr(method, "card", None)
    return {"name": model_name(spec), "method": method.name, "task": method.task, "step": getattr(card, "step", None),
            "training_data": dict(getattr(card, "data", {}) or {})}


def _write_panels(folder: Path, source: np.ndarray, suv: np.ndarray, task: Task, count: int = 4) -> list[Path]:
    """PNGs of a few slices: the source (displayed as the task's ``source_kind``) | the synthetic PET."""
    from petsynth.io.png import save_panel

    nz = suv.shape[0]
    ks = sorted({int(round(v)) for v in np.linspace(0, nz - 1, min(count, nz) + 2)[1:-1]}) or [0]
    unit = task.windows["source"].unit
    caption = task.source_label + (f" slice {{}} ({unit})" if unit != task.source_label else " slice {}")
    rows = [[(source[k], caption.format(k), task.source_kind), (suv[k], f"synthetic PET slice {k} (SUV)", "pet")]
            for k in ks]
    return [save_panel(folder / "slices.png", rows, title="petsynth synthetic PET (not for diagnosis)")]


def _anatomy(inputs: TranslateInput, on_grid: dict[str, np.ndarray]) -> tuple[np.ndarray, str, str]:
    """The image the PET is shown over (the CT where the task has one, else the source), its display kind
    ("ct" or "mr") and label."""
    if inputs.task.has_ct:
        return on_grid[inputs.task.ct_role], "ct", "CT"
    return on_grid["source"], "mr", inputs.source.label


@dataclass
class _Shown:
    """What the pictures and report.html show, cropped once to the synthetic PET's body: the anatomy (CT or MR)
    with its display kind and label, the synthetic PET, the low-dose input PET (lpet2spet) or None, the grid."""

    anatomy: np.ndarray
    kind: str
    label: str
    synthetic: np.ndarray
    low_dose: np.ndarray | None
    low_dose_label: str
    grid: Geometry


def _shown(inputs: TranslateInput, on_grid: dict[str, np.ndarray], suv: np.ndarray, grid: Geometry) -> _Shown:
    from petsynth.io.views import crop_to

    anatomy, kind, label = _anatomy(inputs, on_grid)
    low_dose = inputs.source.modality == "PT"
    volumes, cropped = crop_to(suv > 0, grid, [anatomy, suv] + ([on_grid["source"]] if low_dose else []))
    return _Shown(volumes[0], kind, label, volumes[1], volumes[2] if low_dose else None, inputs.source.label, cropped)


def _write_pictures(folder: Path, shown: _Shown) -> dict[str, Path]:
    """``mip.png`` (coronal MIP of the synthetic PET, and of the input PET for a low-dose source) and
    ``fused.png`` (the synthetic PET over the CT or MR: a mid axial and a mid coronal slice)."""
    from petsynth.io import views

    grid = shown.grid
    pets = [(shown.synthetic, "synthetic PET")] + ([(shown.low_dose, shown.low_dose_label)]
                                                   if shown.low_dose is not None else [])
    mip = views.save_mip_png(folder / "mip.png", pets, grid, title="petsynth synthetic PET (not for diagnosis)")
    window = views.CT_WINDOWS["soft tissue"] if shown.kind == "ct" else _mr_window(shown.anatomy)
    fused = views.save_fused_png(folder / "fused.png", shown.anatomy, pets[:1], grid,
                                 [("axial", views.plane_size(grid, "axial") // 2),
                                  ("coronal", views.plane_size(grid, "coronal") // 2)],
                                 anatomy_window=window, title=f"synthetic PET over the {shown.label}")
    return {"mip": mip, "fused": fused}


def _mr_window(image: np.ndarray) -> tuple[float, float]:
    """(level, width) spanning an MR's 1st to 99.5th percentile."""
    lo, hi = (float(v) for v in np.percentile(image[:: max(1, image.shape[0] // 16)], [1, 99.5]))
    return (lo + hi) / 2, max(hi - lo, 1e-6)


def _write_report(path: Path, inputs: TranslateInput, shown: _Shown, suv: np.ndarray, grid: Geometry,
                  info: dict[str, Any]) -> Path:
    """``report.html`` (:mod:`petsynth.report`): no input path, no header value, only the model's and the run's
    facts and the images (``shown``); the table describes the whole ``suv`` on ``grid``."""
    from petsynth.report import ReportContent, Table, training_summary, write_report

    low_dose = shown.low_dose is not None
    body = suv > 0
    ml = float(body.sum() * grid.voxel_volume_ml())
    stats = [["voxels with SUV > 0", int(body.sum())], ["their volume (ml)", ml],
             ["SUVmean there", float(suv[body].mean()) if body.any() else float("nan")],
             ["SUVmax", float(suv.max())], ["SUV 99th percentile there",
                                            float(np.percentile(suv[body], 99)) if body.any() else float("nan")]]
    model = info["model"]
    content = ReportContent(
        title=f"petsynth: synthetic PET from {inputs.source.label}", geometry=shown.grid, anatomy=shown.anatomy,
        anatomy_kind=shown.kind, anatomy_label=shown.label, synthetic=shown.synthetic, reference=shown.low_dose,
        reference_label=f"{inputs.source.label} (input)",
        facts={"model": model["name"], "method": model["method"], "task": info["task"],
               "trained on": training_summary(model.get("training_data", {})),
               "input": f"{info['input_kind']} {inputs.source.label}"
                        + (f" with {inputs.guidance.label} guidance" if inputs.guidance is not None else ""),
               **({"dose fraction": f"{info['dose_fraction']:.3g} ({info['dose_fraction_source']})"}
                  if info.get("dose_fraction") else {}),
               "sampling steps": info["options"]["steps_used"], "kVp of the attenuation map":
                   f"{info['kvp']:g} ({info['kvp_source']})" if info.get("kvp") else "no CT",
               "grid": f"{' x '.join(map(str, grid.shape))} voxels of "
                       f"{' x '.join(f'{v:.3g}' for v in grid.spacing)} mm",
               "seconds": info["seconds"], "petsynth": info["petsynth_version"]},
        tables=[Table("The synthetic PET", ["", "value"], stats, digits=2)],
        notes=["No reference PET was given: the slice viewer shows the input and the synthetic PET only."
               if not low_dose else "The comparison panels show the low-dose input, not a reference."])
    return write_report(path, content)


#: Slices of the source a model's dose estimate reads (evenly over the middle half of the volume).
DOSE_ESTIMATE_SLICES = 16


def _dose_fraction(method: Method, inputs: TranslateInput, on_grid: dict[str, Any], options: PredictOptions,
                   kvp: float | None, spacing: float) -> tuple[float | None, str | None]:
    """A low-dose source's dose fraction and where it came from: the ``dose_fraction`` sampler option, the
    study's headers (against its standard-dose series), or the model's estimate from the image's noise
    (``estimate_dose_fraction``, for models that have one; the option ``dose_fraction=estimate`` asks for it).
    (None, None) when the task has no low-dose source or nothing tells it."""
    if not inputs.task.low_dose_source:
        return None, None
    option = options.sampler.get("dose_fraction")
    if option is not None and option != "estimate":
        return float(option), "option"
    if inputs.dose_fraction is not None and option is None:
        return inputs.dose_fraction, "headers"
    estimate = getattr(method, "estimate_dose_fraction", None)
    if estimate is None:
        return None, None
    n = on_grid["source"].shape[0]
    picks = np.unique(np.linspace(n // 4, max(n // 4, 3 * n // 4 - 1), DOSE_ESTIMATE_SLICES).round().astype(int))
    items = [{"kvp": kvp, "spacing_mm": (spacing, spacing), **{role: v[k] for role, v in on_grid.items()}}
             for k in picks]
    return estimate(method.collate()(items)), "estimated from the image's noise"


def _kvp(inputs: TranslateInput, kvp: float | None, method: Method, where: Path) -> tuple[float | None, str | None]:
    """The kVp of the attenuation map and where it came from: the CT's header, the ``kvp`` option, or the
    default (with a warning when the model uses it); (None, None) for a task without a CT."""
    ct = inputs.ct
    if ct is None:
        if kvp is not None:
            warnings.warn(f"--kvp is ignored: {inputs.task.name} models read no CT", stacklevel=3)
        return None, None
    if ct.kvp is not None:
        return ct.kvp, "header"
    if kvp is not None:
        lo, hi = KVP_RANGE
        if not lo <= kvp <= hi:
            raise TranslateError(f"kvp {kvp:g} kV is outside {lo:g}..{hi:g} kV, the range of the HU -> mu tables "
                                 "the attenuation map is computed with (CLI: --kvp)")
        return float(kvp), "option"
    if method.needs_mu_map:
        warnings.warn(f"{where}: the CT gives no kVp; its attenuation map assumes {DEFAULT_KVP:g} kV "
                      "(pass --kvp to set it)", stacklevel=3)
    return DEFAULT_KVP, "default"


def translate(model: str | Path | Method, input: str | Path, out: str | Path, *, ct: str | Path | None = None,
              steps: int | None = None, eta: float | None = None, sampler: dict[str, Any] | None = None,
              batch_size: int = 8, bf16: bool = False, threads: int | None = None, kvp: float | None = None, spacing_mm: float | None = None,
              split: str = "test", write_dicom: bool = True, png: bool = False, report: bool = False, seed: int = 0,
              overwrite: bool = False, mask_body: bool = True, device: str = "auto",
              progress: Progress | None = None, say: Say | None = None) -> TranslateResult:
    """Translate what the model's task reads (a DICOM study folder, a NIfTI source and, for lpet2spet, its
    NIfTI CT) or a prepared dataset split into synthetic PET in SUV (see the module docstring).

    Args:
        model: a bundled model name (``"phantom-cpdm"``), a run folder, a checkpoint folder, or a loaded method.
        input: DICOM study folder, NIfTI source (CT, MR or low-dose PET, as the model's task reads), or prepared
            dataset folder (then ``split`` is used).
        out: output folder (must not exist unless ``overwrite``); see the module docstring for its content.
        ct: the guidance CT's NIfTI of a NIfTI input, for tasks with one (lpet2spet); an error otherwise.
        steps, eta: sampler settings of diffusion models (None: the model's defaults).
        sampler: further sampler options by name (e.g. ``{"snr": 0.16}``); every option is checked against
            the model's typed options before any input is read: one it does not have is an error.
        batch_size: slices per forward pass. bf16: autocast (fast on GPUs, slow on CPUs without bf16).
        threads: torch CPU threads (None: torch's default).
        kvp: tube voltage for the attenuation map when the CT has none (default 120, with a warning).
        spacing_mm: in-plane output pixel spacing (default: the model's training spacing).
        write_dicom: also write the DICOM PET series. png: also write PNG panels, a coronal MIP and fused
            slices (``panels/``). report: also write ``report.html`` (:mod:`petsynth.report`; study inputs).
        mask_body: set SUV to 0 outside the body (:func:`input_body_mask`): networks leave a rim of spurious
            activity at the slice edges; air has none. Off: the network's output as is.
        progress: ``progress(done_slices, total_slices)``. say: one-line status messages.
    """
    start = time.perf_counter()
    say = say or (lambda _m: None)
    set_threads(threads)
    input_path, out = Path(input), Path(out)
    if out.exists() and not overwrite:
        raise TranslateError(f"{out} exists: choose another --out or pass --overwrite")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    say("loading the model")
    method = model if isinstance(model, Method) else load_model(model, device=device)
    model_info = _model_info(method, method.name if isinstance(model, Method) else model)
    study = StudyOptions(steps=steps, eta=eta, sampler=dict(sampler or {}), batch_size=batch_size, bf16=bf16,
                         kvp=kvp, spacing_mm=spacing_mm, write_dicom=write_dicom, png=png, report=report, seed=seed,
                         mask_body=mask_body)
    method.sampler_options(study.predict.translate_kwargs())  # an unknown or invalid option fails here, first
    if input_path.is_dir() and (input_path / DATASET_FILE).is_file():
        if ct is not None:
            raise TranslateError(f"{input_path} is a prepared dataset: its CT is in it; --ct goes with a NIfTI "
                                 "input")
        if report:
            raise TranslateError(f"{input_path} is a prepared dataset: report.html is written for a study (a DICOM "
                                 "folder or a NIfTI); use `petsynth evaluate` for a dataset")
        return _translate_dataset(method, model_info, input_path, out, split, study.predict, overwrite, png,
                                  start, progress, say)

    task = get_task(method.task)
    say(f"reading the {task.source_label}")
    inputs = read_input(input_path, task, ct=ct)
    return translate_inputs(method, model_info, inputs, input_path, out, study, overwrite=overwrite, start=start,
                            progress=progress, say=say)


@dataclass(frozen=True)
class StudyOptions:
    """How :func:`translate_inputs` translates one study (the keyword arguments of :func:`translate`)."""

    steps: int | None = None
    eta: float | None = None
    sampler: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    bf16: bool = False
    kvp: float | None = None
    spacing_mm: float | None = None
    write_dicom: bool = True
    png: bool = False
    report: bool = False
    seed: int = 0
    mask_body: bool = True

    @property
    def predict(self) -> PredictOptions:
        return PredictOptions(steps=self.steps, eta=self.eta, batch_size=self.batch_size, bf16=self.bf16,
                              seed=self.seed, sampler=dict(self.sampler))


def _brain_masked(method: Method, inputs: TranslateInput, say: Say) -> np.ndarray | None:
    """For a model trained on brain-masked MR (its card's data ``brain_mask``, from ``prepare --task mr2pet``): the
    MR's automatic brain mask (:func:`petsynth.data.brain_mask.auto_brain_mask`) on the MR's grid, where the MR
    the model sees is kept (0 outside, as prepare did); None otherwise."""
    data = getattr(getattr(method, "card", None), "data", None) or {}
    if inputs.task.name != "mr2pet" or not data.get("brain_mask"):
        return None
    from petsynth.data.brain_mask import auto_brain_mask

    say("brain mask of the MR (the model was trained on brain-masked MR)")
    mask = auto_brain_mask(np.asarray(inputs.source.array, dtype=np.float32), inputs.source.geometry)
    if not mask.any():
        raise TranslateError("the automatic brain mask of the MR is empty: is it a T1-weighted head MR?")
    return mask


def _context_step(method: Method, grid: Geometry) -> float:
    """A 2.5-D model's neighbours in slices of ``grid``: its training slice spacing over the grid's (1 when its
    card records none)."""
    trained = model_slice_spacing_mm(method)
    return trained / abs(float(grid.spacing[0])) if trained else 1.0


def translate_inputs(method: Method, model_info: dict[str, Any], inputs: TranslateInput, where: Path, out: Path,
                     opts: StudyOptions, *, overwrite: bool = False, start: float | None = None,
                     progress: Progress | None = None, say: Say | None = None) -> TranslateResult:
    """Translate one study's inputs (:func:`read_input`, :func:`study_inputs`) with a loaded model into ``out``
    (created atomically; see the module docstring). ``where`` names the input in messages, never in outputs."""
    start = time.perf_counter() if start is None else start
    say = say or (lambda _m: None)
    task = inputs.task
    kvp_used, kvp_source = _kvp(inputs, opts.kvp, method, where)
    grid = translation_grid(method, inputs.source.geometry, opts.spacing_mm)
    spacing = grid.spacing[1]
    say(f"resampling onto {grid.shape[1]}x{grid.shape[2]} pixels of {spacing:.3g} mm")
    if inputs.guidance is not None:
        _check_overlap(inputs.guidance, grid, inputs.source.label)
    brain = _brain_masked(method, inputs, say)
    try:
        on_grid = {role: image_on_grid(image, grid) for role, image in inputs.images.items()}
    except SeriesError as err:  # a lazily read slice that cannot be decoded (damaged, NaN rescale)
        raise TranslateError(f"{where}: {err}") from None
    if brain is not None:
        brain = resample(brain.astype(np.float32), inputs.source.geometry, grid, mode="nearest") > 0.5
        on_grid["source"] = np.where(brain, on_grid["source"], 0.0).astype(np.float32)

    fraction, fraction_source = _dose_fraction(method, inputs, on_grid, opts.predict, kvp_used, spacing)
    if fraction_source is not None:
        say(f"dose fraction {fraction:.3g} ({fraction_source})")
    say(f"translating {grid.shape[0]} slices")
    context = method.context_slices
    step = _context_step(method, grid) if context else None  # neighbours at the training data's distance
    items = ({"kvp": kvp_used, "spacing_mm": (spacing, spacing), "dose_fraction": fraction,
              **{role: v[k] for role, v in on_grid.items()},
              **({CONTEXT_KEY: context_stack(on_grid["source"], k, context, step)} if context else {})}
             for k in range(grid.shape[0]))
    suv = np.empty(grid.shape, dtype=np.float32)
    k = 0
    predict = opts.predict
    if predict.sampler.get("dose_fraction") == "estimate":  # estimated once above, for the whole study
        predict = replace(predict, sampler={**predict.sampler, "dose_fraction": fraction})
    for _, pred in predict_items(method, items, total=grid.shape[0], options=predict, progress=progress):
        suv[k:k + pred.shape[0]] = pred[:, 0].numpy()
        k += pred.shape[0]
    np.clip(suv, 0.0, None, out=suv)
    if opts.mask_body:  # a brain-masked model saw brain only: nothing outside it
        suv[~brain if brain is not None else ~input_body_mask(inputs, on_grid, spacing)] = 0.0

    say("writing the outputs")
    result = TranslateResult(out_dir=out, geometry=grid, suv=suv, slices=int(grid.shape[0]))
    with atomic_directory(out, overwrite=overwrite) as tmp:
        files = {"nifti": write_nifti(tmp / "synthetic_pet.nii.gz", suv, grid.affine, description=NIFTI_DESCRIPTION)}
        for image in inputs.images.values():
            if image.kind == "dicom":
                files[f"{image.file_stem}_nifti"] = write_nifti(tmp / f"{image.file_stem}.nii.gz", image.array,
                                                                image.geometry.affine, description=image.label)
        steps_used = opts.steps or getattr(method.config, "sample_steps", None)
        if opts.write_dicom:
            from petsynth.io.synthetic_pet import write_synthetic_pet

            guided = f" with {inputs.guidance.label} guidance" if inputs.guidance is not None else ""
            derivation = (f"Synthesized from {task.source_label}{guided} by petsynth {petsynth.__version__}, model "
                          f"{model_info['name']} ({method.name})" + (f", {steps_used} sampling steps" if steps_used else ""))
            write_synthetic_pet(tmp / "dicom", suv, grid.affine, reference=inputs.source.reference,
                                model_name=str(model_info["name"]), derivation=derivation,
                                reference_label=f"{where}: the {inputs.source.label} series")
            files["dicom"] = tmp / "dicom"
        shown = _shown(inputs, on_grid, suv, grid) if opts.png or opts.report else None
        if opts.png:
            files["panels"] = _write_panels(tmp / "panels", on_grid["source"], suv, task)[0].parent
            _write_pictures(tmp / "panels", shown)
        result.seconds = time.perf_counter() - start
        result.info = {
            "petsynth_version": petsynth.__version__, "model": model_info, "task": task.name,
            "input_kind": inputs.source.kind,
            "inputs": {role: {"modality": image.modality, "label": image.label, "kind": image.kind}
                       for role, image in inputs.images.items()},
            "options": {"steps": opts.steps, "steps_used": steps_used, "eta": opts.eta, "sampler": dict(opts.sampler),
                        "batch_size": opts.batch_size, "bf16": opts.bf16, "seed": opts.seed,
                        "threads": torch.get_num_threads()},
            "kvp": kvp_used, "kvp_source": kvp_source, "mask_body": opts.mask_body,
            "context": ({"slices": context, "spacing_mm": round(step * abs(float(grid.spacing[0])), 4)}
                        if context else None),
            "brain_mask": "auto" if brain is not None else None,
            "dose_fraction": fraction, "dose_fraction_source": fraction_source,
            "grid": {"shape": list(grid.shape), "spacing_mm": list(grid.spacing)},
            "suv": {"min": float(suv.min()), "max": float(suv.max()), "mean": float(suv.mean())},
            "seconds": round(result.seconds, 2), "seconds_per_slice": round(result.seconds / grid.shape[0], 4),
        }
        if opts.report:
            say("writing report.html")
            files["report"] = _write_report(tmp / "report.html", inputs, shown, suv, grid, result.info)
        atomic_write_text(tmp / "translate.json", json.dumps(result.info, indent=2))
        files["summary"] = tmp / "translate.json"
    result.files = {k: out / Path(v).relative_to(tmp) for k, v in files.items()}
    return result


def _translate_dataset(method: Method, model_info: dict, root: Path, out: Path, split: str, options: PredictOptions,
                       overwrite: bool, png: bool, start: float, progress: Progress | None, say: Say
                       ) -> TranslateResult:
    dataset = open_dataset(root, split=split)
    if len(dataset) == 0:
        raise TranslateError(f"{root}: the {split!r} split has no slices")
    if not dataset.has_source:
        raise TranslateError(f"{root} holds only standard-dose PET (prepared with --standard-dose-only): no "
                             "low-dose input to translate")
    if dataset.task != method.task:
        raise WrongTaskError(f"the model is for {method.task!r} but {root} is a {dataset.task!r} dataset")
    say(f"translating {len(dataset)} slices of {len(dataset.studies)} studies ({split})")
    volumes: dict[str, list[np.ndarray]] = {s: [] for s in dataset.studies}
    sources: dict[str, list[np.ndarray]] = {s: [] for s in dataset.studies}
    z: dict[str, list[float]] = {s: [] for s in dataset.studies}
    for batch, pred in predict_dataset(method, dataset, options, progress=progress):
        for b, study in enumerate(batch["study"]):
            volumes[study].append(np.clip(pred[b, 0].numpy(), 0.0, None))
            sources[study].append(batch["source"][b, 0].cpu().numpy())
            z[study].append(float(batch["z_mm"][b]))
    result = TranslateResult(out_dir=out, slices=len(dataset))
    with atomic_directory(out, overwrite=overwrite) as tmp:
        files = {}
        for study in dataset.studies:
            suv = np.stack(volumes[study])
            dy, dx = dataset.study_meta(study)["spacing_mm"]
            zs = np.asarray(z[study])
            dz = float(np.median(np.diff(zs))) if zs.size > 1 else 1.0
            geometry = Geometry(shape=suv.shape, spacing=(abs(dz), dy, dx),
                                origin=(-(suv.shape[2] - 1) / 2 * dx, -(suv.shape[1] - 1) / 2 * dy, float(zs[0])))
            files[study] = write_nifti(tmp / study / "synthetic_pet.nii.gz", suv, geometry.affine,
                                       description=NIFTI_DESCRIPTION)
            if png:
                _write_panels(tmp / study / "panels", np.stack(sources[study]), suv, get_task(dataset.task))
        result.seconds = time.perf_counter() - start
        result.info = {"petsynth_version": petsynth.__version__, "model": model_info, "input_kind": "dataset",
                       "split": split, "studies": len(dataset.studies), "slices": len(dataset),
                       "seconds": round(result.seconds, 2)}
        atomic_write_text(tmp / "translate.json", json.dumps(result.info, indent=2))
    result.files = {k: out / Path(v).relative_to(tmp) for k, v in files.items()}
    result.files["summary"] = out / "translate.json"
    return result

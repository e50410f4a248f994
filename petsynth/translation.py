"""``petsynth translate``: a CT study (DICOM folder or NIfTI) or a prepared dataset split -> synthetic PET in SUV.

For a CT the output grid keeps the CT's orientation and slice positions; in-plane it has the pixel spacing
the model was trained at (the card's ``data.spacing_mm``, else ``spacing_mm``), is centred on the CT's field
of view and has a multiple of 32 pixels per side, at least the model's training size (air outside the CT;
the networks normalise over the whole slice, so the canvas size matters). The CT is shrunk with antialiasing
first, then resampled onto that grid in world coordinates, so the network sees anatomy at its training
scale. The output's affine is that grid's, so the synthetic PET overlays the CT in any viewer.

Written into ``OUT`` (created atomically: a failed run leaves nothing):

- ``synthetic_pet.nii.gz``: SUVbw, float32, (nz, ny, nx) on the output grid, 0 outside the body (CT above
  -500 HU with holes filled, grown by 10 mm; ``mask_body=False`` keeps the network's raw output);
- ``ct.nii.gz``: the input CT in HU on its own grid (DICOM inputs);
- ``dicom/``: a PET series (Units GML) in the input's study and frame of reference (a new study for NIfTI
  inputs), marked DERIVED and "not for diagnosis" (:mod:`petsynth.io.synthetic_pet`);
- ``panels/`` (optional): PNGs of a few slices, CT | synthetic PET;
- ``translate.json``: model, options, grid, timings (no patient data, no input path).

For a prepared dataset (``INPUT`` holds ``dataset.yaml``): one ``OUT/<study>/synthetic_pet.nii.gz`` per study
of the split, on an axial grid built from the slices' spacing and z (datasets keep no in-plane origin).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import petsynth
from petsynth.data.batch import DEFAULT_KVP
from petsynth.data.geometry import Geometry, resample
from petsynth.data.store import DATASET_FILE, open_dataset
from petsynth.inference import PredictOptions, load_model, model_name, predict_dataset, predict_items, set_threads
from petsynth.io.nifti import read_nifti, write_nifti
from petsynth.methods.base import Method, MethodError
from petsynth.physics.constants import HU_AIR
from petsynth.utils.files import atomic_directory

#: Output grid sides are multiples of this (the attention segmenter's encoder halves the size 5 times).
GRID_MULTIPLE = 32
#: Slice size used when a model card gives no training spacing and no ``spacing_mm`` is passed.
FALLBACK_SIZE = 256
#: Body mask of translate's output: CT above this HU (holes filled), grown by this margin; SUV 0 outside.
BODY_THRESHOLD_HU = -500.0
BODY_MARGIN_MM = 10.0
NIFTI_DESCRIPTION = "petsynth synthetic PET (SUVbw), not for diagnosis"

Say = Callable[[str], None]
Progress = Callable[[int, int], None]


class TranslateError(ValueError):
    """The input or the model cannot be translated; the message names the file and the problem."""


@dataclass
class CTInput:
    """A CT to translate: ``hu`` (nz, ny, nx) float32 in HU on ``geometry``; ``kvp`` from the header (None for
    NIfTI); ``reference``: one CT instance's header (DICOM inputs), for the output series' study."""

    hu: np.ndarray
    geometry: Geometry
    kvp: float | None
    reference: Any = None
    kind: str = "dicom"


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
def _looks_like_ct(hu: np.ndarray) -> str | None:
    """Why ``hu`` is not a CT in HU (None when it plausibly is): a CT has air near -1000 HU and bone/tissue."""
    sample = hu[:: max(1, hu.shape[0] // 16)].ravel()
    lo, hi = np.percentile(sample, [1, 99.9])
    if not np.isfinite(sample).all():
        return "it has non-finite values"
    if lo > -500:
        return (f"its values run from {sample.min():.4g} to {sample.max():.4g}: a CT in HU has air near -1000 "
                "(is it an MR or a PET image?)")
    if lo < -3000 or hi > 40000:
        return f"its values run from {sample.min():.4g} to {sample.max():.4g}, far outside the HU range"
    return None


def read_ct_nifti(path: str | Path) -> CTInput:
    """A NIfTI CT in HU (NIfTI carries no kVp)."""
    path = Path(path)
    try:
        hu, affine = read_nifti(path, dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for broken files
        raise TranslateError(f"{path}: not a readable 3-D NIfTI image ({err})") from None
    reason = _looks_like_ct(hu)
    if reason:
        raise TranslateError(f"{path} does not look like a CT: {reason}")
    return CTInput(hu=hu, geometry=Geometry.from_affine(hu.shape, affine), kvp=None, kind="nifti")


def read_ct_dicom(folder: str | Path, progress: Progress | None = None) -> CTInput:
    """The CT series of the one study under ``folder`` (searched recursively; the largest CT series)."""
    import pydicom

    from petsynth.data.dicom_index import scan_dicom
    from petsynth.data.dicom_series import SeriesError, load_series

    folder = Path(folder)
    studies, skipped = scan_dicom([folder], progress=progress)
    with_ct = [s for s in studies if s.of_modality("CT")]
    if not with_ct:
        found = ", ".join(sorted({s.modality for st in studies for s in st.series})) or "no DICOM images"
        raise TranslateError(f"{folder}: no CT series found (found: {found}; {len(skipped)} files ignored)")
    if len(with_ct) > 1:
        raise TranslateError(f"{folder} holds {len(with_ct)} studies with a CT: give one study's folder")
    series = max(with_ct[0].of_modality("CT"), key=lambda s: s.num_files)
    if series.num_files < 2:
        raise TranslateError(f"{folder}: the CT series has a single slice; translate needs a volume")
    try:
        volume = load_series(series, "CT")
    except SeriesError as err:
        raise TranslateError(f"{folder}: {err}") from None
    if volume.irregular:
        warnings.warn(f"{folder}: the CT's slice spacing is irregular; the output uses its median step",
                      stacklevel=2)
    reference = pydicom.dcmread(volume.files[0], stop_before_pixels=True)
    return CTInput(hu=volume.array, geometry=volume.geometry, kvp=volume.kvp, reference=reference, kind="dicom")


def read_ct(path: str | Path, progress: Progress | None = None) -> CTInput:
    """A DICOM study folder or a NIfTI file -> :class:`CTInput`."""
    path = Path(path)
    if not path.exists():
        raise TranslateError(f"{path}: no such file or folder")
    if path.is_file():
        if path.name.endswith((".nii", ".nii.gz")):
            return read_ct_nifti(path)
        raise TranslateError(f"{path}: give a DICOM study folder, a NIfTI CT (.nii/.nii.gz) or a prepared dataset")
    return read_ct_dicom(path, progress=progress)


# --- the output grid --------------------------------------------------------------------------------------
def model_spacing_mm(method: Method) -> float | None:
    """The in-plane pixel spacing (mm) the model was trained at, from its card (None when not recorded)."""
    data = getattr(getattr(method, "card", None), "data", None) or {}
    spacing = data.get("spacing_mm")
    if not spacing:
        return None
    return float(np.mean(spacing))


def model_size(method: Method) -> int | None:
    """The slice size (pixels) the model was trained at, from its card (None when not recorded)."""
    data = getattr(getattr(method, "card", None), "data", None) or {}
    return int(data["size"]) if data.get("size") else None


def output_geometry(ct: Geometry, spacing_mm: float, multiple: int = GRID_MULTIPLE,
                    min_size: int | None = None) -> Geometry:
    """The CT's slices with square pixels of ``spacing_mm``, centred on the CT's field of view, covering it,
    a multiple of ``multiple`` pixels per side and at least ``min_size`` (the model's training size: the
    networks' group normalisation sees the whole slice, so a smaller canvas, with less air around the body,
    changes their output)."""
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    nz, ny, nx = ct.shape
    _, dy, dx = ct.spacing
    fov = max(ny * dy, nx * dx)
    n = max(multiple, int(math.ceil(fov / spacing_mm / multiple - 1e-6)) * multiple)
    if min_size:
        n = max(n, int(math.ceil(min_size / multiple)) * multiple)
    centre = ct.index_to_world(np.array([(nx - 1) / 2, (ny - 1) / 2, 0.0]))
    d = ct.direction_matrix
    origin = centre - d[:, 0] * (n - 1) / 2 * spacing_mm - d[:, 1] * (n - 1) / 2 * spacing_mm
    return Geometry(shape=(nz, n, n), spacing=(ct.spacing[0], spacing_mm, spacing_mm), origin=tuple(origin),
                    direction=ct.direction)


def translation_grid(method: Method, ct: Geometry, spacing_mm: float | None = None) -> Geometry:
    """The grid ``method`` translates the CT on ``ct`` at: :func:`output_geometry` with ``spacing_mm``, else the
    model's training spacing, else the CT's field of view over :data:`FALLBACK_SIZE` pixels; at least the
    model's training size."""
    spacing = spacing_mm or model_spacing_mm(method)
    if spacing is None:
        _, dy, dx = ct.spacing
        spacing = max(ct.shape[1] * dy, ct.shape[2] * dx) / FALLBACK_SIZE
    return output_geometry(ct, spacing, min_size=model_size(method))


def ct_on_grid(ct: CTInput, grid: Geometry) -> np.ndarray:
    """The CT in HU on ``grid`` (same slices): antialiased shrink to about the grid's spacing, then
    world-space resampling (air outside the CT)."""
    nz, ny, nx = ct.geometry.shape
    _, dy, dx = ct.geometry.spacing
    step = grid.spacing[1]
    my, mx = max(1, round(ny * dy / step)), max(1, round(nx * dx / step))
    src, geometry = ct.hu, ct.geometry
    if my < ny or mx < nx:
        t = torch.from_numpy(np.ascontiguousarray(ct.hu, dtype=np.float32))[:, None]
        src = F.interpolate(t, size=(my, mx), mode="bilinear", align_corners=False, antialias=True)[:, 0].numpy()
        # same field of view, larger pixels: voxel centres move by half the change of pixel size
        new_dy, new_dx = ny * dy / my, nx * dx / mx
        d = geometry.direction_matrix
        origin = (np.asarray(geometry.origin) + d[:, 0] * (new_dx - dx) / 2 + d[:, 1] * (new_dy - dy) / 2)
        geometry = Geometry(shape=src.shape, spacing=(geometry.spacing[0], new_dy, new_dx), origin=tuple(origin),
                            direction=geometry.direction)
    return resample(src, geometry, grid, fill=HU_AIR)


def body_mask(hu: np.ndarray, spacing_mm: float, threshold_hu: float = BODY_THRESHOLD_HU,
              margin_mm: float = BODY_MARGIN_MM) -> np.ndarray:
    """(nz, ny, nx) bool: per slice, the voxels above ``threshold_hu`` with their enclosed holes (lungs,
    bowel gas) filled, grown by ``margin_mm``. Outside it a PET has no activity."""
    from scipy import ndimage

    grow = max(0, int(round(margin_mm / spacing_mm)))
    structure = ndimage.generate_binary_structure(2, 1)
    out = np.zeros(hu.shape, dtype=bool)
    for k in range(hu.shape[0]):
        m = ndimage.binary_fill_holes(hu[k] > threshold_hu)
        out[k] = ndimage.binary_dilation(m, structure, iterations=grow) if grow else m
    return out


# --- the whole job ----------------------------------------------------------------------------------------
def _model_info(method: Method, spec: str | Path) -> dict[str, Any]:
    card = getattr(method, "card", None)
    return {"name": model_name(spec), "method": method.name, "task": method.task, "step": getattr(card, "step", None),
            "training_data": dict(getattr(card, "data", {}) or {})}


def _write_panels(folder: Path, ct: np.ndarray, suv: np.ndarray, count: int = 4) -> list[Path]:
    from petsynth.io.png import save_panel

    nz = suv.shape[0]
    ks = sorted({int(round(v)) for v in np.linspace(0, nz - 1, min(count, nz) + 2)[1:-1]}) or [0]
    rows = [[(ct[k], f"CT slice {k} (HU)", "ct"), (suv[k], f"synthetic PET slice {k} (SUV)", "pet")] for k in ks]
    return [save_panel(folder / "slices.png", rows, title="petsynth synthetic PET (not for diagnosis)")]


def translate(model: str | Path | Method, input: str | Path, out: str | Path, *, steps: int | None = None,
              eta: float | None = None, batch_size: int = 8, bf16: bool = False, threads: int | None = None,
              kvp: float | None = None, spacing_mm: float | None = None, split: str = "test",
              write_dicom: bool = True, png: bool = False, seed: int = 0, overwrite: bool = False,
              mask_body: bool = True,
              device: str = "auto", progress: Progress | None = None, say: Say | None = None) -> TranslateResult:
    """Translate a CT (DICOM study folder or NIfTI) or a prepared dataset split into synthetic PET in SUV.

    Args:
        model: a bundled model name (``"phantom-cpdm"``), a run folder, a checkpoint folder, or a loaded method.
        input: DICOM study folder, NIfTI CT, or prepared dataset folder (then ``split`` is used).
        out: output folder (must not exist unless ``overwrite``); see the module docstring for its content.
        steps, eta: sampler settings of diffusion models (None: the model's defaults).
        batch_size: slices per forward pass. bf16: autocast (fast on GPUs, slow on CPUs without bf16).
        threads: torch CPU threads (None: torch's default).
        kvp: tube voltage for the attenuation map when the CT has none (default 120, with a warning).
        spacing_mm: in-plane output pixel spacing (default: the model's training spacing).
        write_dicom: also write the DICOM PET series (CT inputs). png: also write PNG panels.
        mask_body: set SUV to 0 outside the body (:func:`body_mask` of the CT): networks leave a rim of
            spurious activity at the slice edges; air has none. Off: the network's output as is.
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
    options = PredictOptions(steps=steps, eta=eta, batch_size=batch_size, bf16=bf16, seed=seed)
    if input_path.is_dir() and (input_path / DATASET_FILE).is_file():
        return _translate_dataset(method, model_info, input_path, out, split, options, overwrite, png, start,
                                  progress, say)
    if method.task != "ct2pet":
        raise MethodError(f"the model is for {method.task!r}; translating a CT needs a ct2pet model")

    say("reading the CT")
    ct = read_ct(input_path)
    kvp_used, kvp_source = ct.kvp, "header"
    if kvp_used is None:
        kvp_used, kvp_source = (float(kvp), "option") if kvp is not None else (DEFAULT_KVP, "default")
        if kvp is None and method.needs_mu_map:
            warnings.warn(f"{input_path}: the CT gives no kVp; its attenuation map assumes {DEFAULT_KVP:g} kV "
                          "(pass --kvp to set it)", stacklevel=2)
    grid = translation_grid(method, ct.geometry, spacing_mm)
    spacing = grid.spacing[1]
    say(f"resampling the CT onto {grid.shape[1]}x{grid.shape[2]} pixels of {spacing:.3g} mm")
    ct_grid = ct_on_grid(ct, grid)

    say(f"translating {grid.shape[0]} slices")
    items = ({"source": ct_grid[k], "kvp": kvp_used} for k in range(grid.shape[0]))
    suv = np.empty(grid.shape, dtype=np.float32)
    k = 0
    for _, pred in predict_items(method, items, total=grid.shape[0], options=options, progress=progress):
        suv[k:k + pred.shape[0]] = pred[:, 0].numpy()
        k += pred.shape[0]
    np.clip(suv, 0.0, None, out=suv)
    if mask_body:
        suv[~body_mask(ct_grid, spacing)] = 0.0

    say("writing the outputs")
    result = TranslateResult(out_dir=out, geometry=grid, suv=suv, slices=int(grid.shape[0]))
    with atomic_directory(out, overwrite=overwrite) as tmp:
        files = {"nifti": write_nifti(tmp / "synthetic_pet.nii.gz", suv, grid.affine, description=NIFTI_DESCRIPTION)}
        if ct.kind == "dicom":
            files["ct_nifti"] = write_nifti(tmp / "ct.nii.gz", ct.hu, ct.geometry.affine, description="CT (HU)")
        if write_dicom:
            from petsynth.io.synthetic_pet import write_synthetic_pet

            used = steps or getattr(method.config, "sample_steps", None)
            derivation = (f"Synthesized from CT by petsynth {petsynth.__version__}, model {model_info['name']} "
                          f"({method.name})" + (f", {used} sampling steps" if used else ""))
            write_synthetic_pet(tmp / "dicom", suv, grid.affine, reference=ct.reference,
                                model_name=str(model_info["name"]), derivation=derivation)
            files["dicom"] = tmp / "dicom"
        if png:
            files["panels"] = _write_panels(tmp / "panels", ct_grid, suv)[0].parent
        result.seconds = time.perf_counter() - start
        result.info = {
            "petsynth_version": petsynth.__version__, "model": model_info, "input_kind": ct.kind,
            "options": {"steps": steps, "steps_used": steps or getattr(method.config, "sample_steps", None),
                        "eta": eta, "batch_size": batch_size, "bf16": bf16, "seed": seed,
                        "threads": torch.get_num_threads()},
            "kvp": kvp_used, "kvp_source": kvp_source, "mask_body": mask_body,
            "grid": {"shape": list(grid.shape), "spacing_mm": list(grid.spacing)},
            "suv": {"min": float(suv.min()), "max": float(suv.max()), "mean": float(suv.mean())},
            "seconds": round(result.seconds, 2), "seconds_per_slice": round(result.seconds / grid.shape[0], 4),
        }
        (tmp / "translate.json").write_text(json.dumps(result.info, indent=2))
        files["summary"] = tmp / "translate.json"
    result.files = {k: out / Path(v).relative_to(tmp) for k, v in files.items()}
    return result


def _translate_dataset(method: Method, model_info: dict, root: Path, out: Path, split: str, options: PredictOptions,
                       overwrite: bool, png: bool, start: float, progress: Progress | None, say: Say
                       ) -> TranslateResult:
    dataset = open_dataset(root, split=split)
    if len(dataset) == 0:
        raise TranslateError(f"{root}: the {split!r} split has no slices")
    if dataset.task != method.task:
        raise MethodError(f"the model is for {method.task!r} but {root} is a {dataset.task!r} dataset")
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
            if png and dataset.task == "ct2pet":  # the panel's first column is the CT
                _write_panels(tmp / study / "panels", np.stack(sources[study]), suv)
        result.seconds = time.perf_counter() - start
        result.info = {"petsynth_version": petsynth.__version__, "model": model_info, "input_kind": "dataset",
                       "split": split, "studies": len(dataset.studies), "slices": len(dataset),
                       "seconds": round(result.seconds, 2)}
        (tmp / "translate.json").write_text(json.dumps(result.info, indent=2))
    result.files = {k: out / Path(v).relative_to(tmp) for k, v in files.items()}
    result.files["summary"] = out / "translate.json"
    return result

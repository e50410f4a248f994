"""Study folders on disk: DICOM series (or NIfTI volumes) plus ground truth, written atomically.

Layout of ``OUT/<study_id>/``::

    CT/ PT/ PT_low_<f>/ MR/        DICOM series (fmt="dicom"), one file per slice
    ct.nii.gz pet.nii.gz pet_low_<f>.nii.gz mr.nii.gz   (fmt="nifti"; float32 HU / SUVbw / MR signal)
    truth/labels.nii.gz            organ labels on the PET grid (uint8; table in truth.json)
    truth/labels_ct.nii.gz         (PET/CT) organ labels on the CT grid
    truth/labels_mr.nii.gz         (PET/MR) tissue labels on the MR grid
    truth/suv_truth.nii.gz         noise-free SUVbw on the PET grid, voxel means, before the resolution blur
    truth/suv_truth_blurred.nii.gz the same after the resolution blur (what was forward projected)
    truth/mu.nii.gz                attenuation map used (cm^-1 at 511 keV) on the PET grid
    truth/truth.json               label table with this subject's values, lesions, acquisition facts, seeds

A study is built under a hidden temporary name beside its folder and renamed into place when complete, so an
interrupted run never leaves a half-written study under its final name.

DICOM facts the headers carry (docs/formulas.md, SUVbw): PET Units BQML with a RescaleSlope per slice and
RescaleIntercept 0; DecayCorrection START; values are Bq/ml decay-corrected to the series start
(SeriesDate/SeriesTime = the earliest AcquisitionTime), so that
``SUV = value * PatientWeight * 1000 / (RadionuclideTotalDose * 2^(-(series - injection) / half-life))``
returns the simulated SUV. CT is int16 with RescaleIntercept -1024 and its KVP. Low-dose series are list-mode
subsamplings of the same acquisition: same injected dose and times, ActualFrameDuration scaled by the
fraction. All UIDs derive from the study id and seed (deterministic). Patient names and ids are synthetic
(``PHANTOM^0003``).

Brain (mr2pet) extras. MR headers carry the study's field strength (MagneticFieldStrength, ImagingFrequency =
42.577 MHz/T x B0) and the protocol of :data:`petsynth.phantom.mr_field.PROTOCOL`. ``write_studies(fields=...)``
writes each subject once per field as ``<study_id>-<f>T`` (same PatientID, the base study id; own
StudyInstanceUID). A study whose PET was displaced (truth.json ``pet_frame``) writes its PT series as a
separate study of the same patient: its own StudyInstanceUID and FrameOfReferenceUID, dated
``pet_visit_days_after_mr`` days after the MR (the whole PET timeline, injection included, moves with it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from petsynth import __version__
from petsynth.phantom.study import Acquisition, Image, PhantomStudy
from petsynth.io.dicom import (
    code_item,
    dicom_date,
    dicom_datetime,
    dicom_time,
    format_ds,
    patient_orientation_codes,
    write_series,
)
from petsynth.io.nifti import write_nifti
from petsynth.tasks import DEFAULT_TASK, TASK_NAMES, get_task
from petsynth.utils.files import atomic_directory, atomic_write_text

FORMATS = ("dicom", "nifti")
UID_NAMESPACE = "petsynth-phantom"


def _uid(study: PhantomStudy, *parts: str) -> str:
    return generate_uid(entropy_srcs=[UID_NAMESPACE, study.study_id, str(study.truth.get("seed")),
                                      str(study.truth.get("index")), *parts])


def _common_header(study: PhantomStudy, index: int, a: Acquisition | None = None, visit: str = "") -> dict:
    """Patient, study, frame-of-reference and equipment attributes. ``visit`` (e.g. "pet") names a separate
    study of the same patient (own StudyInstanceUID and FrameOfReferenceUID), dated by ``a``."""
    a = a or study.acquisition
    f = study.flavour
    parts = (visit,) if visit else ()
    return {
        "PatientName": f"PHANTOM^{index:04d}",
        "PatientID": str(study.truth.get("patient_id") or study.study_id),
        "PatientBirthDate": "",
        "PatientSex": a.sex,
        "PatientAge": f"{a.age_years:03d}Y",
        "PatientWeight": format_ds(a.weight_kg, 6),
        "PatientSize": format_ds(a.height_m, 4),
        "StudyInstanceUID": _uid(study, "study", *parts),
        "StudyDate": dicom_date(a.study_start),
        "StudyTime": dicom_time(a.study_start),
        "StudyID": "2" if visit else "1",
        "AccessionNumber": "",
        "ReferringPhysicianName": "",
        "StudyDescription": ("PET BRAIN" if visit else "PET-MR BRAIN" if _brain(study) else "PET-CT WHOLE BODY")
                            + " (phantom)",
        "FrameOfReferenceUID": _uid(study, "frame-of-reference", *parts),
        "PositionReferenceIndicator": "",
        "Manufacturer": f.manufacturer,
        "InstitutionName": f.institution,
        "StationName": "PETSYNTH",
        "SoftwareVersions": f"petsynth {__version__}",
        "DeviceSerialNumber": "0000",
        "PatientPosition": "HFS",
        "BodyPartExamined": "BRAIN" if _brain(study) else "WHOLEBODY",
        "ImageComments": "petsynth digital phantom: synthetic data, not from a patient",
        "BurnedInAnnotation": "NO",
    }


def _brain(study: PhantomStudy) -> bool:
    return get_task(study.task).phantom == "brain"


def _ct_header(study: PhantomStudy, img: Image, rng: np.random.Generator) -> dict:
    a = study.acquisition
    f = study.flavour
    ma = int(rng.integers(60, 200))
    rot = float(rng.choice([0.5, 0.8, 1.0]))
    return {
        "SeriesNumber": 2,
        "SeriesDescription": "CT AC " + img.description,
        "SeriesDate": dicom_date(a.other_start), "SeriesTime": dicom_time(a.other_start),
        "AcquisitionDate": dicom_date(a.other_start), "AcquisitionTime": dicom_time(a.other_start),
        "ContentDate": dicom_date(a.other_start), "ContentTime": dicom_time(a.other_start),
        "AcquisitionNumber": 1,
        "ManufacturerModelName": f.model,
        "KVP": format_ds(a.kvp, 6),
        "XRayTubeCurrent": ma,
        "ExposureTime": int(rot * 1000),
        "Exposure": int(round(ma * rot)),
        "ConvolutionKernel": f.ct_kernel,
        "ScanOptions": "HELICAL MODE",
        "DataCollectionDiameter": format_ds(500.0),
        "ReconstructionDiameter": format_ds(img.geometry.shape[2] * img.geometry.spacing[2], 8),
        "GantryDetectorTilt": "0",
        "TableHeight": format_ds(float(np.round(rng.uniform(140, 190), 1))),
        "RotationDirection": "CW",
        "FilterType": "BODY FILTER",
        "WindowCenter": "40",
        "WindowWidth": "400",
        **({"ContrastBolusAgent": "IODINATED CONTRAST (PHANTOM)", "ContrastBolusRoute": "IV"}
           if study.truth.get("ct", {}).get("contrast") == "venous" else {}),
    }


def _radiopharmaceutical(a: Acquisition) -> Dataset:
    item = Dataset()
    item.Radiopharmaceutical = "Fluorodeoxyglucose"
    item.RadiopharmaceuticalStartTime = dicom_time(a.injection)
    item.RadiopharmaceuticalStartDateTime = dicom_datetime(a.injection)
    item.RadionuclideTotalDose = format_ds(a.injected_dose_bq, 10)
    item.RadionuclideHalfLife = format_ds(a.half_life_s, 8)
    item.RadionuclidePositronFraction = "0.9673"
    item.RadionuclideCodeSequence = [code_item("C-111A1", "SRT", "^18^Fluorine")]
    item.RadiopharmaceuticalCodeSequence = [code_item("C-B1031", "SRT", "Fluorodeoxyglucose F^18^")]
    return item


def _pet_acquisition(study: PhantomStudy) -> Acquisition:
    """The acquisition facts of the PET series: the study's, or, for a PET at a separate visit (truth.json
    ``pet_visit_days_after_mr`` > 0), the same times moved that many days later."""
    days = int(study.truth.get("pet_visit_days_after_mr") or 0)
    a = study.acquisition
    if not days:
        return a
    shift = dt.timedelta(days=days)
    return dataclasses.replace(a, injection=a.injection + shift, study_start=a.study_start + shift,
                               pet_start=a.pet_start + shift, other_start=a.other_start + shift)


def _pt_header(study: PhantomStudy, img: Image, series_number: int, recon_name: str) -> dict:
    a = _pet_acquisition(study)
    f = study.flavour
    nz = img.geometry.shape[0]
    energy = Dataset()
    energy.EnergyWindowLowerLimit = "435"
    energy.EnergyWindowUpperLimit = "650"
    hdr = {
        "ImageType": ["ORIGINAL", "PRIMARY"],
        "SeriesNumber": series_number,
        "SeriesDescription": img.description,
        "SeriesDate": dicom_date(a.pet_start), "SeriesTime": dicom_time(a.pet_start),
        "ContentDate": dicom_date(a.pet_start), "ContentTime": dicom_time(a.pet_start),
        "ManufacturerModelName": f.mr_model if _brain(study) else f.model,
        "Units": "BQML",
        "CountsSource": "EMISSION",
        "SeriesType": ["STATIC", "IMAGE"] if _brain(study) else ["WHOLE BODY", "IMAGE"],
        "DecayCorrection": "START",
        "CorrectedImage": ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"],
        "RandomsCorrectionMethod": "DLYD",
        "AttenuationCorrectionMethod": "MR-based (phantom)" if _brain(study) else "CT-based",
        "ScatterCorrectionMethod": "model-based",
        "ReconstructionMethod": recon_name,
        "ReconstructionDiameter": format_ds(img.geometry.shape[2] * img.geometry.spacing[2], 8),
        "NumberOfSlices": nz,
        "CollimatorType": "NONE",
        "AcquisitionTerminationCondition": "TIME",
        "RadiopharmaceuticalInformationSequence": [_radiopharmaceutical(a)],
        "EnergyWindowRangeSequence": [energy],
        **patient_orientation_codes("HFS", scheme="SRT"),  # as the vendors still write them
        "SliceSensitivityFactor": "1",
        "DoseCalibrationFactor": "1",
        "WindowCenter": format_ds(3.0 * a.bq_per_ml_per_suv, 8),
        "WindowWidth": format_ds(6.0 * a.bq_per_ml_per_suv, 8),
    }
    if f.key == "philips":
        # Philips' SUV scale factor: rescaled value (Bq/ml here) * factor = SUVbw
        hdr[(0x7053, 0x0010)] = ("LO", "Philips PET Private Group")
        hdr[(0x7053, 0x1000)] = ("DS", format_ds(1.0 / a.bq_per_ml_per_suv, 10))
    return hdr


def _pt_per_slice(study: PhantomStudy, img: Image, fraction: float) -> Callable[[int], dict]:
    a = _pet_acquisition(study)
    z = img.geometry.z_positions()
    z_top = float(z.max())
    duration_s = a.bed_duration_s * fraction
    lam = np.log(2) / a.half_life_s

    def per_slice(k: int) -> dict:
        bed = int(np.floor((z_top - z[k]) / a.bed_length_mm + 1e-9))
        t_acq = a.pet_start + dt.timedelta(seconds=bed * a.bed_duration_s)
        offset = (t_acq - a.pet_start).total_seconds()
        # decay from the bed's start to the series start, and averaging over the frame
        decay = np.exp(lam * offset) * (lam * duration_s) / (1 - np.exp(-lam * duration_s))
        return {
            "AcquisitionDate": dicom_date(t_acq), "AcquisitionTime": dicom_time(t_acq),
            "ActualFrameDuration": int(round(duration_s * 1000)),
            "FrameReferenceTime": format_ds(offset * 1000 + duration_s * 500, 10),
            "DecayFactor": format_ds(decay, 8),
            "ImageIndex": k + 1,
        }

    return per_slice


def _mr_header(study: PhantomStudy, img: Image) -> dict:
    from petsynth.phantom.mr_field import PROTOCOL, REFERENCE_FIELD_T, imaging_frequency_mhz

    a = study.acquisition
    b0 = float(study.truth.get("mr", {}).get("field_strength_t", REFERENCE_FIELD_T))
    return {
        "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
        "SeriesNumber": 5,
        "SeriesDescription": img.description,
        "SeriesDate": dicom_date(a.other_start), "SeriesTime": dicom_time(a.other_start),
        "AcquisitionDate": dicom_date(a.other_start), "AcquisitionTime": dicom_time(a.other_start),
        "ContentDate": dicom_date(a.other_start), "ContentTime": dicom_time(a.other_start),
        "AcquisitionNumber": 1,
        "ManufacturerModelName": study.flavour.mr_model,
        "ScanningSequence": ["GR", "IR"],
        "SequenceVariant": ["SP", "MP"],
        "ScanOptions": "IR",
        "MRAcquisitionType": "3D",
        "SequenceName": "*tfl3d1_16",
        "RepetitionTime": format_ds(PROTOCOL.repetition_time_ms, 8),
        "EchoTime": format_ds(PROTOCOL.echo_time_ms, 8),
        "InversionTime": format_ds(PROTOCOL.inversion_time_ms, 8),
        "FlipAngle": format_ds(PROTOCOL.flip_angle_deg, 8),
        "EchoTrainLength": 1,
        "NumberOfAverages": "1",
        "ImagingFrequency": format_ds(imaging_frequency_mhz(b0), 8),
        "ImagedNucleus": "1H",
        "MagneticFieldStrength": format_ds(b0, 6),
        "SpacingBetweenSlices": format_ds(img.geometry.spacing[0], 8),
        "PercentPhaseFieldOfView": "100",
        "PixelBandwidth": "240",
        "WindowCenter": "600",
        "WindowWidth": "1200",
    }


def _write_dicom(study: PhantomStudy, folder: Path, index: int, rng: np.random.Generator) -> dict[str, str]:
    files: dict[str, str] = {}
    common = _common_header(study, index)
    separate_pet = bool(study.truth.get("pet_frame"))
    pet_common = _common_header(study, index, _pet_acquisition(study), visit="pet") if separate_pet else common
    order = "descending" if rng.random() < 0.5 else "ascending"
    naming = study.flavour.file_naming
    prefix = study.flavour.file_prefix
    recon = study.truth.get("pet", {}).get("sim", {})
    recon_name = (f"{str(recon.get('recon', 'mlem')).upper()} {recon.get('iterations', '')}i "
                  f"(petsynth phantom)" if recon.get("recon") == "mlem" else "FBP (petsynth phantom)")
    series_no = 3
    for name, img in study.images.items():
        uid = _uid(study, "series", name)
        hdr = dict(pet_common if img.modality == "PT" else common)
        if img.modality == "CT":
            hdr.update(_ct_header(study, img, rng))
            per_slice = None
            volume = img.volume
        elif img.modality == "PT":
            frac = img.dose_fraction or 1.0
            hdr.update(_pt_header(study, img, series_no, recon_name))
            series_no += 1
            per_slice = _pt_per_slice(study, img, frac)
            volume = img.volume.astype(np.float64) * study.acquisition.bq_per_ml_per_suv
        elif img.modality == "MR":
            hdr.update(_mr_header(study, img))
            per_slice = None
            volume = img.volume
        else:
            raise ValueError(f"no DICOM writer for modality {img.modality!r}")
        write_series(folder / name, volume, img.geometry.affine, modality=img.modality, header=hdr,
                     series_instance_uid=uid, instance_order=order, file_naming=naming, file_prefix=prefix,
                     per_slice=per_slice, shuffle_seed=int(rng.integers(0, 2**31)))
        files[name] = name + "/"
    study.truth.setdefault("dicom", {})["instance_order"] = order
    study.truth["dicom"]["file_naming"] = naming
    study.truth["dicom"]["study_instance_uid"] = common["StudyInstanceUID"]
    study.truth["dicom"]["frame_of_reference_uid"] = common["FrameOfReferenceUID"]
    if separate_pet:
        study.truth["dicom"]["pet_study_instance_uid"] = pet_common["StudyInstanceUID"]
        study.truth["dicom"]["pet_frame_of_reference_uid"] = pet_common["FrameOfReferenceUID"]
    return files


NIFTI_NAMES = {"CT": "ct", "PT": "pet", "MR": "mr"}


def _write_nifti_images(study: PhantomStudy, folder: Path) -> dict[str, str]:
    files = {}
    for name, img in study.images.items():
        fname = NIFTI_NAMES[name] if name in NIFTI_NAMES else name.replace("PT_low_", "pet_low_")
        fname += ".nii.gz"
        write_nifti(folder / fname, img.volume.astype(np.float32), img.geometry.affine,
                    description=f"petsynth phantom {name}")
        files[name] = fname
    return files


def _write_truth(study: PhantomStudy, folder: Path) -> dict[str, str]:
    tdir = folder / "truth"
    tdir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, img in study.truth_images.items():
        dtype = np.uint8 if img.modality == "LABEL" else np.float32
        write_nifti(tdir / f"{name}.nii.gz", img.volume, img.geometry.affine, dtype=dtype,
                    description=f"petsynth phantom truth {name}")
        files[name] = f"truth/{name}.nii.gz"
    return files


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, dt.datetime | dt.date):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_study(study: PhantomStudy, out_dir: str | Path, *, fmt: str = "dicom", overwrite: bool = False,
                index: int | None = None) -> Path:
    """Write one study folder ``out_dir/<study_id>`` atomically; returns its path."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / study.study_id
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    with atomic_directory(final, overwrite=overwrite) as tmp:
        idx = study.truth.get("index", 0) if index is None else index
        rng = np.random.default_rng([int(study.truth.get("seed", 0)), int(idx), 99])
        if fmt == "dicom":
            images = _write_dicom(study, tmp, int(idx), rng)
        else:
            images = _write_nifti_images(study, tmp)
        truth_files = _write_truth(study, tmp)
        record = dict(study.truth)
        record["format"] = fmt
        record["files"] = {"images": images, "truth": truth_files}
        record["geometry"] = {name: img.geometry.to_dict() for name, img in study.images.items()}
        record["truth_geometry"] = {name: img.geometry.to_dict() for name, img in study.truth_images.items()}
        atomic_write_text(tmp / "truth" / "truth.json", json.dumps(record, indent=1, default=_json_default))
    return final


TASKS = TASK_NAMES
DEFAULT_DOSE_FRACTIONS: tuple[float, ...] = (0.25, 0.1, 0.05, 0.02, 0.01)


def _check_brain_options(task: str, **options) -> None:
    """ValueError when a brain-only option (field strengths, pattern, PET displacement) is set for a task whose
    phantom is not the brain."""
    given = [k for k, v in options.items() if v is not None]
    if given and get_task(task).phantom != "brain":
        brain = [t for t in TASK_NAMES if get_task(t).phantom == "brain"]
        raise ValueError(f"{', '.join(given)} apply to the brain phantom ({', '.join(brain)}) only, not {task!r}")


def _check_torso_options(task: str, **options) -> None:
    """ValueError when a torso-only option (arms, contrast) is set for a task whose phantom is not the torso."""
    given = [k for k, v in options.items() if v is not None]
    if given and get_task(task).phantom != "torso":
        torso = [t for t in TASK_NAMES if get_task(t).phantom == "torso"]
        raise ValueError(f"{', '.join(given)} apply to the torso phantom ({', '.join(torso)}) only, not {task!r}")


def make_study(task: str, seed: int, index: int, *, preset="default", dose_fractions=DEFAULT_DOSE_FRACTIONS,
               flavour: str | None = None, sim=None, pattern: str | None = None,
               pet_displacement: dict | str | None = None, arms: str | None = None,
               contrast: str | None = None) -> PhantomStudy:
    """Simulate one study of ``task`` in memory (the task's ``phantom``: make_torso or make_brain).
    ``pattern`` and ``pet_displacement``: see :func:`~petsynth.phantom.brain.make_brain` (brain only);
    ``arms`` (default "random") and ``contrast`` (default "none"): see
    :func:`~petsynth.phantom.torso.make_torso` (torso only)."""
    spec = get_task(task)
    _check_brain_options(task, pattern=pattern, pet_displacement=pet_displacement)
    _check_torso_options(task, arms=arms, contrast=contrast)
    if spec.phantom == "brain":
        from petsynth.phantom.brain import make_brain

        return make_brain(seed, index=index, preset=preset, flavour=flavour, sim=sim, pattern=pattern,
                          pet_displacement=pet_displacement)
    from petsynth.phantom.torso import make_torso

    return make_torso(seed, index=index, task=task, preset=preset, flavour=flavour,
                      dose_fractions=dose_fractions if spec.low_dose_source else (), sim=sim,
                      arms=arms or "random", contrast=contrast or "none")


def write_studies(out_dir: str | Path, task: str = DEFAULT_TASK, studies: int = 1, seed: int = 0, *,
                  fmt: str = "dicom", preset="default", dose_fractions: Sequence[float] = DEFAULT_DOSE_FRACTIONS,
                  flavour: str | None = None, start_index: int = 0, overwrite: bool = False, sim=None,
                  progress: Callable[[int, int, str], None] | None = None, fields: Sequence[float] = (3.0,),
                  pattern: str | None = None, pet_displacement: dict | str | None = None,
                  arms: str | None = None, contrast: str | None = None) -> list[Path]:
    """Simulate and write ``studies`` studies of ``task`` into ``out_dir``; returns the study folders.

    Study ``i`` (``start_index`` <= i < ``start_index + studies``) is fully determined by (``seed``, i) and
    named ``<task>-s<seed>-<i:04d>``. ``progress(done, total, study_id)`` is called after each study.
    Also writes ``out_dir/phantoms.json``, an index of the studies in the folder.

    Brain (mr2pet) only: ``fields`` (tesla, each in 0.5-11.7): the default ``(3.0,)`` writes one study per
    subject as above; any other list writes each subject once per field, ``<task>-s<seed>-<i:04d>-<f>T``
    (``mr2pet-s7-0000-1.5T``), each a complete study (MR at that field, the same PET and truth) with the same
    PatientID and its own StudyInstanceUID (``progress`` then counts subjects). ``pattern``,
    ``pet_displacement``: see :func:`~petsynth.phantom.brain.make_brain`. Torso (ct2pet, lpet2spet) only:
    ``arms`` ("raised", "sides", "random"; default random) and ``contrast`` ("none", "venous", "random";
    default none), see :func:`~petsynth.phantom.torso.make_torso`.
    """
    spec = get_task(task)
    from petsynth.phantom.mr_field import check_field, field_name

    field_list = [check_field(f) for f in fields]
    if not field_list or len(set(field_list)) != len(field_list):
        raise ValueError(f"fields must be one or more distinct field strengths, got {list(fields)}")
    per_field = field_list != [3.0]
    _check_brain_options(task, fields=list(fields) if per_field else None, pattern=pattern,
                         pet_displacement=pet_displacement)
    _check_torso_options(task, arms=arms, contrast=contrast)
    from petsynth.phantom.torso import ARMS_CHOICES, CONTRAST_CHOICES

    if arms is not None and arms not in ARMS_CHOICES:
        raise ValueError(f"arms must be one of {ARMS_CHOICES}, got {arms!r}")
    if contrast is not None and contrast not in CONTRAST_CHOICES:
        raise ValueError(f"contrast must be one of {CONTRAST_CHOICES}, got {contrast!r}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")
    if studies < 1:
        raise ValueError(f"studies must be at least 1, got {studies}")
    fractions = sorted({float(f) for f in dose_fractions}, reverse=True)
    if spec.low_dose_source and (not fractions or any(not 0 < f < 1 for f in fractions)):
        raise ValueError(f"dose fractions must lie strictly between 0 and 1, got {list(dose_fractions)}")
    from petsynth.phantom.presets import get_flavour, get_preset

    get_preset(preset)
    if flavour is not None:
        get_flavour(flavour)
    out = Path(out_dir)
    from petsynth.phantom.study import study_id_for

    def names(i: int) -> list[str]:
        base = study_id_for(task, seed, i)
        return [f"{base}-{field_name(b)}" for b in field_list] if per_field else [base]

    if not overwrite:  # fail before simulating anything
        taken = [name for i in range(start_index, start_index + studies) for name in names(i)
                 if (out / name).exists()]
        if taken:
            raise FileExistsError(f"{out / taken[0]} exists ({len(taken)} of the requested studies do); "
                                  "pass overwrite=True (CLI: --overwrite) to replace them")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, i in enumerate(range(start_index, start_index + studies)):
        if per_field:
            from petsynth.phantom.brain import make_brain_fields

            batch = make_brain_fields(seed, i, field_list, preset=preset, flavour=flavour, sim=sim,
                                      pattern=pattern, pet_displacement=pet_displacement)
        else:
            batch = [make_study(task, seed, i, preset=preset, dose_fractions=fractions, flavour=flavour, sim=sim,
                                pattern=pattern, pet_displacement=pet_displacement, arms=arms, contrast=contrast)]
        for study in batch:
            path = write_study(study, out, fmt=fmt, overwrite=overwrite, index=i)
            paths.append(path)
            _update_index(out, study, path, fmt)
        if progress is not None:
            progress(n + 1, studies, batch[0].truth.get("patient_id") or batch[0].study_id)
    return paths


def _update_index(out: Path, study: PhantomStudy, path: Path, fmt: str) -> None:
    index_path = out / "phantoms.json"
    entries = {}
    if index_path.exists():
        try:
            entries = {e["study_id"]: e for e in json.loads(index_path.read_text()).get("studies", [])}
        except (json.JSONDecodeError, KeyError, TypeError):
            entries = {}
    entries[study.study_id] = {"study_id": study.study_id, "task": study.task, "format": fmt,
                               "path": path.name, "seed": study.truth.get("seed"),
                               "index": study.truth.get("index"), "flavour": study.flavour.key}
    if study.truth.get("patient_id") and study.truth["patient_id"] != study.study_id:
        entries[study.study_id]["patient_id"] = study.truth["patient_id"]
        entries[study.study_id]["field_strength_t"] = study.truth.get("mr", {}).get("field_strength_t")
    atomic_write_text(index_path, json.dumps({"generator": f"petsynth {__version__} phantom",
                                              "studies": [entries[k] for k in sorted(entries)]}, indent=1))


def parse_dose_fractions(text: str | Sequence[str | float]) -> list[float]:
    """'0.25,0.1' or '1/4,1/10' (or a list of such items) -> [0.25, 0.1]; each must lie in (0, 1)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        s = str(item).strip()
        if not s:
            continue
        try:
            if "/" in s:
                num, den = s.split("/", 1)
                value = float(num) / float(den)
            else:
                value = float(s)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"cannot read dose fraction {s!r}; use decimals (0.1) or ratios (1/10)") from None
        if not 0 < value < 1:
            raise ValueError(f"dose fraction {s!r} = {value:g} must lie strictly between 0 and 1")
        out.append(value)
    if not out:
        raise ValueError("no dose fractions given")
    return sorted(set(out), reverse=True)


def parse_fields(text: str | float | Sequence[str | float]) -> list[float]:
    """'1.5,3,5,7' (or a list of such items) -> [1.5, 3.0, 5.0, 7.0] (tesla, in the order given, each in
    0.5-11.7, distinct)."""
    from petsynth.phantom.mr_field import check_field

    items = text.split(",") if isinstance(text, str) else [text] if isinstance(text, int | float) else list(text)
    out: list[float] = []
    for item in items:
        s = str(item).strip().removesuffix("T").removesuffix("t").strip()
        if not s:
            continue
        try:
            value = float(s)
        except ValueError:
            raise ValueError(f"cannot read field strength {str(item)!r}; give tesla, e.g. '1.5,3,7'") from None
        value = check_field(value)
        if value in out:
            raise ValueError(f"field strength {value:g} T given twice")
        out.append(value)
    if not out:
        raise ValueError("no field strengths given")
    return out

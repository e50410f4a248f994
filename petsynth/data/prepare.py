"""``petsynth prepare``: raw DICOM (or NIfTI) studies -> a paired, split dataset in physical units.

One study at a time (each independent, so studies can run in parallel or on a cluster):
choose the series for the task, load them in physical units, pair every target slice with the source
resampled onto it in world space, resize, and write the study atomically under a keyed pseudonym.
Phantom studies (a ``truth/`` folder beside the series) also carry the noise-free SUV and organ labels, autoPET
NIfTI studies their SEG.nii.gz lesion mask as labels; the labels' names go with the study as its label table
(study metadata ``label_table``, read from the phantom's truth.json: its tissues, then lesion n as "lesion_n",
with its class and kind when truth.json gives them).

Tasks: ``ct2pet`` (source CT in HU, target PET in SUV), ``mr2pet`` (MR -> PET), ``lpet2spet`` (source the
lowest-count attenuation-corrected PET, target the standard PET, guidance the CT).
No patient identifier is written anywhere: study names are HMAC-SHA256 pseudonyms under a secret key.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import math
import hmac
import io
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from petsynth.data import store
from petsynth.data.brain import BrainOptions, BrainPrepError, build_brain_pairs
from petsynth.data.dicom_index import SeriesInfo, StudyInfo, scan_dicom
from petsynth.data.dicom_series import SeriesVolume, load_series
from petsynth.data.nifti_layouts import NiftiStudy, find_nifti_studies, load_nifti_volume
from petsynth.data.pairing import pair_slices, resample_onto
from petsynth.data.suv import SUVError
from petsynth.parallel import run_each
from petsynth.physics.constants import HU_AIR
from petsynth.tasks import get_task
from petsynth.utils.files import atomic_file, atomic_write_text

#: Default split fractions (train, val, test), by patient.
DEFAULT_SPLIT = (0.8, 0.1, 0.1)
#: Where the pseudonym key lives unless the user names one; never inside a dataset.
DEFAULT_KEY_FILE = Path.home() / ".petsynth" / "pseudonym.key"
REPORT_FILE = "prepare_report.json"
#: Pairs whose source covers less than this fraction of the PET slice are counted (and shown) per study: the
#: rest of such a pair's source is air (or 0), which a model learns as "no anatomy here".
LOW_COVERAGE = 0.5


class StudyError(ValueError):
    """One study cannot be prepared; the message says why (the batch goes on)."""


def load_key(path: str | Path | None = None) -> bytes:
    """The secret pseudonym key: read from ``path`` (default ~/.petsynth/pseudonym.key), created if absent."""
    path = Path(path) if path is not None else DEFAULT_KEY_FILE
    if not path.exists():
        with atomic_file(path, "x", private=True) as fh:  # 0600; a failed write leaves no empty key behind
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def pseudonym(key: bytes, value: str, prefix: str = "s") -> str:
    """Keyed, irreversible short name for an identifier (HMAC-SHA256, 12 hex digits)."""
    return prefix + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:12]


Input = SeriesInfo | Path  # a DICOM series, or a NIfTI file


@dataclass
class StudyPlan:
    """The series chosen for one study (in memory only: may hold identifiers, never written)."""

    study_uid: str
    patient_id: str
    target: Input
    source: Input | None  # None: a standard-dose-only lpet2spet study (the PET and its CT, no low dose)
    guidance: Input | None = None
    dose_fraction: float | None = None
    source_modality: str = ""
    labels: Input | None = None  # a label volume named by label_table (autoPET SEG)
    label_table: list[dict] = field(default_factory=list)
    register: bool = False  # mr2pet: the PET is registered to the MR (different studies, frames or NIfTI files)
    pet_suv_factor: float | None = 1.0  # NIfTI PET: SUV per stored value; None: not convertible (values as read)
    pairing: str = ""  # mr2pet across studies: how the MR was found (no identifiers)

    def __post_init__(self):
        if not self.source_modality:
            self.source_modality = getattr(self.source, "modality", "") or "PT"


def _load(item: Input, modality: str, lazy: bool = False) -> SeriesVolume:
    """A series or NIfTI volume; ``lazy``: a DICOM CT/MR series may be read slice by slice while resampling."""
    return load_nifti_volume(item, modality) if isinstance(item, Path) else load_series(item, modality, lazy=lazy)


def _folders(item: Input | None) -> set[str]:
    if item is None:
        return set()
    return {str(item.parent)} if isinstance(item, Path) else {str(f.parent) for f in item.files}


def plan_nifti_study(study: NiftiStudy, task: str, standard_dose_only: bool = False) -> StudyPlan:
    """Choose the files of a NIfTI study for ``task``; StudyError if impossible. ``standard_dose_only``
    (lpet2spet): the PET and its CT, no low-dose source (one it has is not read)."""
    spec = get_task(task)
    need = spec.nifti_source
    if standard_dose_only:
        need = None
    elif need not in study.sources:
        raise StudyError(f"{study.layout} NIfTI study has no {need} volume for {task}")
    guidance = None
    if spec.guidance_modality:
        if spec.guidance_modality not in study.sources:
            raise StudyError(f"{task} keeps the {spec.guidance_modality} as guidance, but the study has no "
                             f"{spec.guidance_modality.lower()}.nii.gz")
        guidance = study.sources[spec.guidance_modality]
    return StudyPlan(study.study_id, study.study_id, study.target, study.sources[need] if need else None, guidance,
                     study.dose_fraction if spec.low_dose_source and need else None,
                     source_modality=spec.source_modality,
                     labels=study.labels, label_table=study.label_table,
                     register=spec.name == "mr2pet", pet_suv_factor=study.pet_suv_factor)


@dataclass
class StudyResult:
    """Outcome of one study (no identifiers)."""

    study: str
    patient: str
    status: str  # "ok", "failed", "skipped"
    slices: int = 0
    reason: str = ""
    low_coverage: int = 0  # pairs kept whose source covers less than LOW_COVERAGE of the PET slice
    dropped_coverage: int = 0  # pairs dropped by min_coverage
    least_coverage: float | None = None  # the smallest coverage among the pairs kept (0..1)
    registration: dict | None = None  # mr2pet: the PET-to-MR transform and its quality figures


def largest_series(series: list[SeriesInfo]) -> SeriesInfo:
    """The series of a modality that prepare (and translate) take: the most images (files, or frames of
    an enhanced image), then the largest images."""
    return max(series, key=lambda s: (s.images, s.rows * s.columns, s.series_uid))


def corrected_pets(study: StudyInfo) -> list[SeriesInfo]:
    """The attenuation-corrected PET series of a study (CorrectedImage has ATTN)."""
    return [s for s in study.of_modality("PT") if s.attenuation_corrected]


def standard_dose_pet(pets: list[SeriesInfo]) -> SeriesInfo:
    """The target PET of ct2pet and mr2pet among a study's corrected PET series: the longest frames, then the
    most images."""
    return max(pets, key=lambda s: (s.frame_duration_ms, s.images, s.series_uid))


def by_frame_duration(pets: list[SeriesInfo]) -> list[SeriesInfo]:
    """PET series ordered by frame duration (ActualFrameDuration), shortest first: the first is the low-dose
    source of lpet2spet (prepare and translate), the last prepare's standard-dose target."""
    return sorted(pets, key=lambda s: (s.frame_duration_ms, s.series_uid))


def dose_ratio(low: SeriesInfo, standard: SeriesInfo) -> float | None:
    """The low-dose series' dose fraction relative to the standard-dose series of its study: the ratio of their
    frame durations (ActualFrameDuration), times that of their injected activities (RadionuclideTotalDose) where
    both headers give one (a separate low-dose injection); None when a duration is unknown."""
    if not (low.frame_duration_ms > 0 and standard.frame_duration_ms > 0):
        return None
    ratio = low.frame_duration_ms / standard.frame_duration_ms
    doses = [_injected_bq(s) for s in (low, standard)]
    if all(d is not None and d > 0 for d in doses):
        ratio *= doses[0] / doses[1]
    return ratio


def _injected_bq(series: SeriesInfo) -> float | None:
    first = pydicom.dcmread(series.files[0], stop_before_pixels=True,
                            specific_tags=["RadiopharmaceuticalInformationSequence"])
    radio = first.get("RadiopharmaceuticalInformationSequence")
    try:
        return float(radio[0].RadionuclideTotalDose)
    except (TypeError, IndexError, AttributeError, ValueError):
        return None


def patient_of(series: SeriesInfo, default: str) -> str:
    """The PatientID of a series (its first file), or ``default`` when it has none."""
    first = pydicom.dcmread(series.files[0], stop_before_pixels=True, specific_tags=["PatientID"])
    return str(first.get("PatientID", "")) or default


def plan_study(study: StudyInfo, task: str, standard_dose_only: bool = False, register: bool = False) -> StudyPlan:
    """Choose target, source (and guidance) series of a study for ``task``; StudyError if impossible.
    ``standard_dose_only`` (lpet2spet): the standard-dose PET (the longest frames) and its CT, no low-dose
    source, so one PET series is enough. ``register`` (mr2pet): an MR in another frame of reference is registered
    rather than refused."""
    pets = corrected_pets(study)
    if not pets:
        found = ", ".join(sorted({s.modality for s in study.series})) or "none"
        raise StudyError(f"no attenuation-corrected PET series (CorrectedImage with ATTN); series found: {found}")
    patient_id = patient_of(pets[0], study.study_uid)
    spec = get_task(task)
    if spec.low_dose_source and standard_dose_only:
        target, source, fraction = by_frame_duration(pets)[-1], None, None
    elif spec.low_dose_source:
        if len(pets) < 2:
            raise StudyError(f"{task} needs two attenuation-corrected PET series (standard and low dose)")
        by_duration = by_frame_duration(pets)
        target, source = by_duration[-1], by_duration[0]
        fraction = dose_ratio(source, target)
    else:
        sources = study.of_modality(spec.source_modality)
        if not sources:
            raise StudyError(f"{task} needs a {spec.source_modality} series, but the study has none")
        # standard dose: the PET series with the longest frames
        target = standard_dose_pet(pets)
        source, fraction = largest_series(sources), None
    guidance = None
    if spec.guidance_modality:
        found = study.of_modality(spec.guidance_modality)
        if not found:
            raise StudyError(f"{task} keeps the {spec.guidance_modality} as guidance, but the study has no "
                             f"{spec.guidance_modality} series")
        guidance = largest_series(found)
    plan = StudyPlan(study.study_uid, patient_id, target, source, guidance, fraction)
    return _check_frames(plan, task, register)


def _check_frames(plan: StudyPlan, task: str, register: bool) -> StudyPlan:
    """Series in another frame of reference than the PET: registered (mr2pet with ``register``), else refused."""
    for other in (plan.source, plan.guidance):
        if other is None or other.frame_of_reference_uid == plan.target.frame_of_reference_uid:
            continue
        if task == "mr2pet" and register and other is plan.source:
            plan.register = True
            continue
        raise StudyError(f"{other.modality} and PET series have different FrameOfReferenceUIDs: "
                         "not registered, cannot pair in world coordinates"
                         + (" (--register rigid registers them)" if task == "mr2pet" else ""))
    return plan


def series_date(series: SeriesInfo) -> dt.date | None:
    """The acquisition date of a series (AcquisitionDate, SeriesDate, then StudyDate of its first file)."""
    first = pydicom.dcmread(series.files[0], stop_before_pixels=True,
                            specific_tags=["AcquisitionDate", "SeriesDate", "StudyDate"])
    for tag in ("AcquisitionDate", "SeriesDate", "StudyDate"):
        text = str(first.get(tag, "") or "").strip()
        try:
            return dt.datetime.strptime(text[:8], "%Y%m%d").date()
        except ValueError:
            continue
    return None


def plan_mr2pet_studies(studies: Sequence[StudyInfo], register: bool, max_gap_days: float
                        ) -> list[tuple[str, Callable[[], StudyPlan]]]:
    """Plans of the mr2pet DICOM studies: each study with an attenuation-corrected PET takes its own MR, or else
    the MR of the same patient (PatientID) in another study acquired nearest in time, at most ``max_gap_days``
    away (never by file order); such a pair is registered (``register``) or refused. A study with an MR and no
    PET is a source only: it is reported (failed: no PET) only when no PET study took its MR."""
    mrs: dict[str, list[tuple[SeriesInfo, StudyInfo]]] = {}
    for st in studies:
        for series in st.of_modality("MR"):
            mrs.setdefault(patient_of(series, st.study_uid), []).append((series, st))
    used: set[str] = set()
    out: list[tuple[str, Callable[[], StudyPlan]]] = []
    for st in studies:
        pets = corrected_pets(st)
        if not pets or st.of_modality("MR"):
            continue
        patient = patient_of(pets[0], st.study_uid)
        candidates = [(series, other) for series, other in mrs.get(patient, []) if other.study_uid != st.study_uid]
        pet_date = series_date(pets[0])
        dated = []
        for series, other in candidates:
            mr_date = series_date(series)
            gap = abs((mr_date - pet_date).days) if (mr_date and pet_date) else None
            dated.append((math.inf if gap is None else gap, series, other))
        within = [d for d in dated if d[0] <= max_gap_days]
        if within:
            gap, series, other = min(within, key=lambda d: (d[0], -d[1].images, d[1].series_uid))
            used.add(other.study_uid)
            out.append((st.study_uid, lambda st=st, series=series, gap=gap: _cross_study_plan(st, series, gap,
                                                                                           register)))
            continue
        nearest = min((d[0] for d in dated), default=None)
        why = ("no MR series of this patient in any study" if nearest is None else
               f"no MR series of this patient within {max_gap_days:g} days (nearest: "
               + ("of unknown date)" if math.isinf(nearest) else f"{nearest:g} days)"))
        out.append((st.study_uid, lambda why=why: _fail(why)))
    for st in studies:
        if st.study_uid not in used and (st.of_modality("MR") or not corrected_pets(st)):
            out.append((st.study_uid, lambda st=st: plan_study(st, "mr2pet", register=register)))
    return out


def _fail(why: str) -> StudyPlan:
    raise StudyError(why)


def _cross_study_plan(study: StudyInfo, mr: SeriesInfo, gap_days: float, register: bool) -> StudyPlan:
    target = standard_dose_pet(corrected_pets(study))
    if not register:
        raise StudyError("the MR of this patient is in another study (another visit): --register none cannot "
                         "pair it in world coordinates; use --register rigid")
    gap = "unknown" if math.isinf(gap_days) else f"{gap_days:g} days"
    return StudyPlan(study.study_uid, patient_of(target, study.study_uid), target, mr, register=True,
                     pairing=f"MR from another study of the same patient, {gap} apart")


def _truth_series(pet: SeriesVolume) -> tuple[dict[str, SeriesVolume], list[dict]]:
    """Phantom truth (a ``truth/`` folder with truth.json beside the PET file or its series folder): the
    volumes found ("truth", "labels") and, with labels, their table from truth.json."""
    for folder in (pet.files[0].parent / "truth", pet.files[0].parent.parent / "truth"):
        if (folder / "truth.json").is_file():
            volumes = {name: load_nifti_volume(folder / fname, name)
                       for name, fname in (("truth", "suv_truth_blurred.nii.gz"), ("labels", "labels.nii.gz"))
                       if (folder / fname).is_file()}
            if "labels" not in volumes:
                return volumes, []
            return volumes, phantom_label_table(json.loads((folder / "truth.json").read_text()))
    return {}, []


def phantom_label_table(record: dict) -> list[dict]:
    """The label table of a phantom's truth.json: each tissue but air (label 0), then lesion n as "lesion_n",
    with the lesion's ``class`` and its ``kind`` (as "lesion_kind") when truth.json has them (older ones do not)."""
    rows = [{"label": int(r["label"]), "name": str(r["name"]), "kind": "organ"}
            for r in record.get("labels", []) if int(r["label"]) != 0]
    for n, r in enumerate(record.get("lesions", [])):
        extra = {key: str(r[src]) for key, src in (("class", "class"), ("lesion_kind", "kind")) if r.get(src)}
        rows.append({"label": int(r["label"]), "name": f"lesion_{n}", "kind": "lesion", **extra})
    return rows


def scrub_folders(text: str, placeholders: Mapping[str, str]) -> str:
    """``text`` with each folder (a key; folders may be named after the patient) replaced by its placeholder,
    the longest first, so that a folder inside another is replaced whole."""
    for folder in sorted(placeholders, key=len, reverse=True):
        text = text.replace(folder, placeholders[folder])
    return text


def _scrub(text: str, plan: StudyPlan) -> str:
    """Replace the folders of the study's series by their role ("<target folder>", ...)."""
    placeholders: dict[str, str] = {}
    for role, item in (("target", plan.target), ("source", plan.source), ("guidance", plan.guidance),
                       ("labels", plan.labels)):
        for folder in _folders(item):
            placeholders.setdefault(folder, f"<{role} folder>")
    return scrub_folders(text, placeholders)


def _pairs_kept(coverage: np.ndarray, min_coverage: float, slices_per_study: tuple[int, int] | None,
                rng_seed: list[int]) -> slice | np.ndarray:
    """Which pairs a study keeps: those whose source covers at least ``min_coverage`` of the PET slice, then
    (``slices_per_study``) a contiguous run of them, drawn with ``rng_seed``. A slice when contiguous (the
    arrays taken with it are views, not copies)."""
    kept = np.nonzero(coverage >= min_coverage)[0] if min_coverage > 0 else np.arange(coverage.size)
    if kept.size == 0:
        raise StudyError(f"no pair has a source covering at least {min_coverage:.0%} of its PET slice (the most "
                         f"is {coverage.max():.0%}); lower --min-coverage to keep them")
    if slices_per_study is not None:
        rng = np.random.default_rng(rng_seed)
        lo, hi = slices_per_study
        n = min(kept.size, int(rng.integers(lo, hi + 1)))
        start = int(rng.integers(0, kept.size - n + 1))
        kept = kept[start:start + n]  # contiguous slices, in order, as in the CPDM experiment
    if kept[-1] - kept[0] + 1 == kept.size:
        return slice(int(kept[0]), int(kept[-1]) + 1)
    return kept


def _result_of_written(root: Path, name: str, patient: str) -> StudyResult:
    """The result of a study as the dataset holds it (the same whichever attempt wrote it)."""
    attrs = store.study_attrs(root, name)
    coverage = attrs["study_meta"].get("coverage", {})
    return StudyResult(name, patient, "ok", slices=int(attrs["slices"]), low_coverage=int(coverage.get("low", 0)),
                       dropped_coverage=int(coverage.get("dropped", 0)), least_coverage=coverage.get("least"),
                       registration=attrs["study_meta"].get("registration"))


def _brain_study(plan: StudyPlan, root: Path, name: str, patient: str, size: int, options: BrainOptions,
                 seed: int, slices_per_study: tuple[int, int] | None) -> StudyResult:
    """Prepare one mr2pet study (:mod:`petsynth.data.brain`): register, mask, slice the planes, write."""
    pet = _load(plan.target, "PT")
    if plan.pet_suv_factor is not None and plan.pet_suv_factor != 1.0:
        pet = dataclasses.replace(pet, array=np.asarray(pet.array, dtype=np.float32) * np.float32(plan.pet_suv_factor))
    mr = _load(plan.source, "MR")
    volumes, table = _truth_series(pet)
    mask_file = None
    if options.brain_mask not in ("auto", "none"):  # a file beside the MR, or in the folder above its series
        folder = Path(next(iter(_folders(plan.source))))
        mask_file = next((f / options.brain_mask for f in (folder, folder.parent)
                          if (f / options.brain_mask).is_file()), None)
    pairs = build_brain_pairs(mr, pet, size=size, options=options,
                              register=plan.register and options.register == "rigid",
                              pet_is_suv=plan.pet_suv_factor is not None, truth=volumes, mask_file=mask_file,
                              seed=seed)
    arrays, slice_meta = pairs.arrays, pairs.slice_meta
    if slices_per_study is not None:  # a contiguous run of the pairs (in plane order), as for the other tasks
        n = len(slice_meta["index"])
        keep = _pairs_kept(np.ones(n), 0.0, slices_per_study, [seed, int(name[1:], 16)])
        arrays = {k: v[keep] for k, v in arrays.items()}
        slice_meta = {k: list(np.asarray(v, dtype=object)[keep]) for k, v in slice_meta.items()}
    meta = {**pairs.study_meta, "kvp": None, "vendor": pet.manufacturer, "dose_fraction": None, "task": "mr2pet",
            "patient": patient, "coverage": {"low": 0, "dropped": 0, "least": 1.0}}
    if plan.pairing:
        meta["pairing"] = plan.pairing
    if table and "labels" in pairs.arrays:
        meta[store.LABEL_TABLE] = table
    store.write_study(root, name, arrays, slice_meta, meta)
    return _result_of_written(root, name, patient)


def prepare_study(plan: StudyPlan, root: Path, task: str, size: int, key: bytes,
                  slices_per_study: tuple[int, int] | None = None, seed: int = 0,
                  min_coverage: float = 0.0, brain: BrainOptions | None = None) -> StudyResult:
    """Load, pair and write one study; returns its result (failures are results, not exceptions).
    ``min_coverage``: drop the pairs whose source covers less than this fraction of the PET slice.
    ``brain``: how an mr2pet study is registered, masked and sliced (default :class:`BrainOptions`)."""
    name, patient = pseudonym(key, plan.study_uid), pseudonym(key, plan.patient_id, prefix="p")
    if store.has_study(root, name):  # an earlier attempt (on a lost cluster worker) finished it
        return _result_of_written(root, name, patient)
    try:
        if task == "mr2pet":
            return _brain_study(plan, root, name, patient, size, brain or BrainOptions(), seed, slices_per_study)
        pet = _load(plan.target, "PT")
        # never held whole: resampled slice by slice; a standard-dose-only study pairs the PET with itself
        source = pet if plan.source is None else _load(plan.source, plan.source_modality, lazy=True)
        fill = HU_AIR if plan.source_modality == "CT" else 0.0
        pairs = pair_slices(pet, source, fill=fill, size=size)
        if len(pairs.target_index) == 0:
            raise StudyError("no PET slice lies within the source series' coverage")
        keep = _pairs_kept(pairs.coverage, min_coverage, slices_per_study, [seed, int(name[1:], 16)])
        arrays = {} if plan.source is None else {"source": pairs.source[keep]}
        arrays["target"] = pairs.target[keep]
        index = pairs.target_index[keep]  # the PET slices of the pairs kept: guidance and truth go onto these
        kvp = source.kvp
        loaded = [pet, source]
        if plan.guidance is not None:
            ct = _load(plan.guidance, "CT", lazy=True)
            loaded.append(ct)
            arrays["guidance"] = resample_onto(pet, ct, index, fill=HU_AIR, size=size)
            kvp = ct.kvp
        volumes, table = _truth_series(pet)
        if plan.labels is not None and "labels" not in volumes:  # phantom truth labels come first
            volumes["labels"], table = _load(plan.labels, "SEG"), plan.label_table
        for tname, tvol in volumes.items():
            mode = "nearest" if tname == "labels" else "bilinear"
            arrays[tname] = resample_onto(pet, tvol, index, fill=0.0, size=size, mode=mode)
        coverage = pairs.coverage[keep]
        tilts = {v.modality: v.meta["gantry_tilt_deg"] for v in loaded if "gantry_tilt_deg" in v.meta}
        meta = {"spacing_mm": list(pairs.spacing_mm), "kvp": kvp, "vendor": pet.manufacturer, "units": pet.units,
                "dose_fraction": plan.dose_fraction, "task": task, "patient": patient,
                "coverage": {"low": int((coverage < LOW_COVERAGE).sum()),
                             "dropped": int((pairs.coverage < min_coverage).sum()),
                             "least": round(float(coverage.min()), 3)}}
        if table:
            meta[store.LABEL_TABLE] = table
        if tilts:  # resampled onto an orthogonal grid in world coordinates (dicom_series.unsheared)
            meta["gantry_tilt_deg"] = tilts
        store.write_study(root, name, arrays,
                          {"index": [int(i) for i in index],
                           "z_mm": [float(z) for z in pairs.z_mm[keep]]}, meta)
        return _result_of_written(root, name, patient)
    except (StudyError, SUVError, BrainPrepError, ValueError, OSError) as err:
        return StudyResult(name, patient, "failed", reason=_scrub(f"{type(err).__name__}: {err}", plan))
    except Exception as err:  # noqa: BLE001 - a fault in one study must not stop the batch: report it
        return StudyResult(name, patient, "failed",
                           reason=_scrub(f"unexpected {type(err).__name__}: {err} (please report)", plan))


def assign_splits(patients: dict[str, str], fractions: Sequence[float], key: bytes, seed: int) -> dict[str, str]:
    """Study -> split, by patient: patients ordered by a keyed hash, then cut by the fractions."""
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    ordered = sorted(set(patients.values()), key=lambda p: hmac.new(key, f"{seed}:{p}".encode(), "sha256").digest())
    n = len(ordered)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    if n >= 3:  # keep every requested split non-empty when there are enough patients
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
        n_train = min(n_train, n - n_val - (1 if fractions[2] > 0 else 0))
    split_of = {p: ("train" if i < n_train else "val" if i < n_train + n_val else "test")
                for i, p in enumerate(ordered)}
    return {study: split_of[p] for study, p in patients.items()}


@dataclass
class PrepareReport:
    """Outcome of a preparation run (no identifiers)."""

    results: list[StudyResult] = field(default_factory=list)
    skipped_files: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> list[StudyResult]:
        return [r for r in self.results if r.status == "failed"]


def _is_phantom_truth(path: Path) -> bool:
    return path.parent.name == "truth" and (path.parent / "truth.json").is_file()


def _count_reasons(skipped: Sequence[tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, reason in skipped:
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def _relative(path: Path, inputs: Sequence[str | Path]) -> str:
    """A file's path relative to the input folder holding it (reports never name folders above the input)."""
    for root in map(Path, inputs):
        try:
            return str(path.relative_to(root))
        except ValueError:
            continue
    return path.name


MAPPING_HEADER = ("study_pseudonym", "study_identifier", "patient_pseudonym", "patient_id")


def write_pseudonym_mapping(path: str | Path, rows: Sequence[tuple[str, str, str, str]]) -> None:
    """Write (atomically) the CSV linking pseudonyms to original identifiers, merged with rows already there.

    This file identifies patients: it is written only on request, and never inside a dataset.
    """
    path = Path(path)
    merged: dict[str, tuple[str, ...]] = {}
    if path.exists():
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                merged[row["study_pseudonym"]] = tuple(row[k] for k in MAPPING_HEADER)
    for row in rows:
        merged[row[0]] = tuple(row)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(MAPPING_HEADER)
    writer.writerows(merged[k] for k in sorted(merged))
    atomic_write_text(path, buffer.getvalue())


def prepare_dataset(inputs: Sequence[str | Path], out: str | Path, task: str, *, size: int = 256,
                    workers: int = 1, resume: bool = False, key: bytes | None = None,
                    key_file: str | Path | None = None, split: Sequence[float] = DEFAULT_SPLIT,
                    seed: int = 0, slices_per_study: tuple[int, int] | None = None,
                    min_coverage: float = 0.0, mapping_file: str | Path | None = None, dask: str | None = None,
                    standard_dose_only: bool = False, brain: BrainOptions | None = None,
                    progress: Callable[[int, int, str], None] | None = None) -> PrepareReport:
    """Prepare every study found under ``inputs`` into the dataset ``out``; see the module docstring.

    ``progress(done, total, status)`` is called while files are scanned (status "scanning", files done and
    found, every 200 files and at the end), once the studies are planned (status "starting"; ``total`` is
    every study found, and those that failed planning or are already present count as done), then after
    each study (its status). Studies already in the dataset are skipped when ``resume``. Returns the report (also written as ``out/prepare_report.json``).
    ``workers``, ``dask``: where the studies run (:func:`petsynth.parallel.run_each`: here, a pool of local
    processes, or a Dask cluster, "local" or a scheduler's address); the dataset is the same either way.
    ``min_coverage`` (0..1): drop the pairs whose source covers less of the PET slice's area than this
    (:func:`~petsynth.data.pairing.inplane_coverage`); each study's result counts the pairs kept below
    :data:`LOW_COVERAGE` either way.
    ``mapping_file``: only when asked, a CSV (outside the dataset) linking each pseudonym to the study's
    original identifier (StudyInstanceUID or NIfTI study name) and patient id; merged with an existing one.
    ``standard_dose_only`` (lpet2spet): each study's standard-dose PET and CT, no low-dose images (what uPETe
    trains on; one PET series per study is enough); the dataset records it.
    ``brain`` (mr2pet): registration, brain mask, planes, slice ranges, cube and PET units
    (:class:`~petsynth.data.brain.BrainOptions`; default: rigid, auto mask, axial); DICOM MR and PET of one patient
    in different studies are paired by acquisition date (:func:`plan_mr2pet_studies`).
    """
    spec = get_task(task)  # a TaskError (a ValueError) for an unknown name
    if standard_dose_only and not spec.low_dose_source:
        raise ValueError(f"standard_dose_only is for lpet2spet datasets (a low-dose source to leave out), not {task}")
    if not 0.0 <= min_coverage <= 1.0:
        raise ValueError(f"min_coverage is a fraction of the PET slice, 0..1; got {min_coverage}")
    if mapping_file is not None:
        mapping_file = Path(mapping_file).resolve()
        if mapping_file.is_relative_to(Path(out).resolve()):
            raise ValueError(f"{mapping_file}: the pseudonym mapping identifies patients; write it outside the "
                             f"dataset folder {out}")
    key = key if key is not None else load_key(key_file)
    root = store.create_dataset(out, task, size, resume=resume, standard_dose_only=standard_dose_only)
    def scanned(done: int, total: int) -> None:
        if progress is not None and (done % 200 == 0 or done == total):
            progress(done, total, "scanning")

    studies, skipped = scan_dicom(inputs, progress=scanned)
    nifti = find_nifti_studies(list(inputs))
    nifti_files = {f for st in nifti for f in (st.target, *st.sources.values(), st.labels)}
    skipped = [s for s in skipped if s.path not in nifti_files and not _is_phantom_truth(s.path)]
    report = PrepareReport(skipped_files=[(_relative(s.path, inputs), s.reason) for s in skipped])
    done = set(store.finished_studies(root))
    jobs: list[StudyPlan] = []
    if spec.name == "mr2pet":
        brain = brain or BrainOptions()
        candidates = plan_mr2pet_studies(studies, brain.register == "rigid", brain.max_gap_days)
    else:
        if brain is not None:
            raise ValueError(f"brain options (registration, mask, planes) are for mr2pet datasets, not {task}")
        candidates = [(st.study_uid, lambda st=st: plan_study(st, task, standard_dose_only)) for st in studies]
    candidates += [(st.study_id, lambda st=st: plan_nifti_study(st, task, standard_dose_only)) for st in nifti]
    mapping: list[tuple[str, str, str, str]] = []
    for ident, make_plan in candidates:
        try:
            plan = make_plan()
        except StudyError as err:
            report.results.append(StudyResult(pseudonym(key, ident), "", "failed", reason=str(err)))
            mapping.append((pseudonym(key, ident), ident, "", ""))
            continue
        mapping.append((pseudonym(key, plan.study_uid), plan.study_uid, pseudonym(key, plan.patient_id, prefix="p"),
                        plan.patient_id))
        if pseudonym(key, plan.study_uid) in done:
            report.results.append(StudyResult(pseudonym(key, plan.study_uid),
                                              pseudonym(key, plan.patient_id, prefix="p"), "skipped",
                                              reason="already in the dataset (resume)"))
            continue
        jobs.append(plan)
    total = len(candidates)  # every study found; those failed while planning or already present count as done
    settled = total - len(jobs)
    if progress:
        progress(settled, total, "starting")
    args = (root, task, size, key, slices_per_study, seed, min_coverage, brain)
    lost = lambda plan, err: StudyResult(pseudonym(key, plan.study_uid),  # noqa: E731
                                         pseudonym(key, plan.patient_id, prefix="p"), "failed",
                                         reason=f"the worker running it failed: {type(err).__name__}: {err}")
    for n, (_, result) in enumerate(run_each(prepare_study, jobs, args, workers=workers, dask=dask, failed=lost,
                                             name="prepare"), settled + 1):
        report.results.append(result)
        if progress:
            progress(n, total, result.status)
    patients = {}
    for study_name in store.finished_studies(root):
        attrs = store.study_attrs(root, study_name)
        patients[study_name] = attrs["study_meta"].get("patient", study_name)
    store.write_splits(root, assign_splits(patients, split, key, seed))
    if mapping_file is not None:
        write_pseudonym_mapping(mapping_file, mapping)
    atomic_write_text(root / REPORT_FILE, json.dumps({
        "task": task, "size": size,
        "studies": [r.__dict__ for r in sorted(report.results, key=lambda r: r.study)],
        # counts only: file paths can carry patient names, so they are shown on the terminal, never stored
        "skipped_files_by_reason": _count_reasons(report.skipped_files)}, indent=1))
    return report

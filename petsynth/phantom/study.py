"""The in-memory result of a phantom simulation: images in physical units, their grids, ground truth and
the acquisition facts (weight, dose, times) that the DICOM headers must carry."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from petsynth.data.geometry import Geometry
from petsynth.phantom.presets import Flavour

#: Injected activity per body weight for whole-body FDG (MBq/kg); EANM 2015 recommends about 3.5-7 MBq/kg
#: x (min per bed) depending on the scanner; many sites use 3-4.5.
WHOLE_BODY_MBQ_PER_KG: tuple[float, float] = (3.0, 4.5)
#: Injected activity for a brain FDG study (MBq); EANM 2009 brain guideline: 125-250 MBq.
BRAIN_DOSE_MBQ: tuple[float, float] = (150.0, 250.0)
#: Uptake time before the PET series starts (minutes): whole body ~60 min, brain 30-60 min.
WHOLE_BODY_UPTAKE_MIN: tuple[float, float] = (55.0, 70.0)
BRAIN_UPTAKE_MIN: tuple[float, float] = (35.0, 55.0)


@dataclass
class Image:
    """One image volume in physical units on its grid.

    ``modality``: "CT" (HU), "PT" (SUVbw), "MR" (arbitrary T1w signal). ``dose_fraction`` for PET series.
    """

    modality: str
    volume: np.ndarray
    geometry: Geometry
    description: str = ""
    dose_fraction: float | None = None


@dataclass
class Acquisition:
    """Acquisition facts shared by the series of a study."""

    weight_kg: float
    height_m: float
    sex: str
    age_years: int
    injected_dose_bq: float
    half_life_s: float
    injection: dt.datetime
    study_start: dt.datetime
    pet_start: dt.datetime
    other_start: dt.datetime          # CT (PET/CT) or MR (PET/MR) series start
    kvp: float | None = None
    bed_length_mm: float = 160.0
    bed_duration_s: float = 120.0

    @property
    def uptake_s(self) -> float:
        return (self.pet_start - self.injection).total_seconds()

    @property
    def decay_to_pet_start(self) -> float:
        """2^(-uptake / half-life): the fraction of the injected activity left at the PET series start."""
        return float(2.0 ** (-self.uptake_s / self.half_life_s))

    @property
    def bq_per_ml_per_suv(self) -> float:
        """Activity concentration (Bq/ml, decay-corrected to the series start) of SUVbw 1."""
        return self.injected_dose_bq * self.decay_to_pet_start / (self.weight_kg * 1000.0)

    def to_dict(self) -> dict:
        return {
            "weight_kg": self.weight_kg, "height_m": self.height_m, "sex": self.sex, "age_years": self.age_years,
            "injected_dose_bq": self.injected_dose_bq, "half_life_s": self.half_life_s,
            "injection_datetime": self.injection.isoformat(), "study_datetime": self.study_start.isoformat(),
            "pet_series_datetime": self.pet_start.isoformat(), "other_series_datetime": self.other_start.isoformat(),
            "uptake_s": self.uptake_s, "decay_factor_injection_to_series": self.decay_to_pet_start,
            "bq_per_ml_per_suv": self.bq_per_ml_per_suv, "kvp": self.kvp,
            "bed_length_mm": self.bed_length_mm, "bed_duration_s": self.bed_duration_s,
        }


def sample_acquisition(rng: np.random.Generator, weight_kg: float, flavour: Flavour, *, brain: bool,
                       kvp: float | None = None) -> Acquisition:
    """Dose, times and patient facts of one study (seeded)."""
    day = dt.date(2024, 1, 1) + dt.timedelta(days=int(rng.integers(0, 366)))
    inj = dt.datetime.combine(day, dt.time(7, 30)) + dt.timedelta(seconds=int(rng.integers(0, 6 * 3600)))
    if brain:
        dose_mbq = rng.uniform(*BRAIN_DOSE_MBQ)
        uptake = rng.uniform(*BRAIN_UPTAKE_MIN)
    else:
        dose_mbq = weight_kg * rng.uniform(*WHOLE_BODY_MBQ_PER_KG)
        uptake = rng.uniform(*WHOLE_BODY_UPTAKE_MIN)
    pet_start = inj + dt.timedelta(seconds=int(round(uptake * 60)))
    other = pet_start - dt.timedelta(seconds=int(rng.integers(120, 300))) if not brain else \
        pet_start + dt.timedelta(seconds=int(rng.integers(30, 300)))
    study = min(other, pet_start) - dt.timedelta(seconds=int(rng.integers(60, 240)))
    return Acquisition(
        weight_kg=float(weight_kg), height_m=float(np.round(rng.uniform(1.55, 1.90), 2)),
        sex=str(rng.choice(["M", "F"])), age_years=int(rng.integers(25, 85)),
        injected_dose_bq=float(np.round(dose_mbq, 2) * 1e6), half_life_s=flavour.half_life_s,
        injection=inj, study_start=study, pet_start=pet_start, other_start=other, kvp=kvp,
        bed_length_mm=flavour.bed_length_mm, bed_duration_s=flavour.bed_duration_s)


@dataclass
class PhantomStudy:
    """A simulated study: images (``"CT"``, ``"PT"``, ``"PT_low_<f>"``, ``"MR"``), truth volumes
    (``"labels"``, ``"suv_truth"``, ``"suv_truth_blurred"``, ``"mu"`` on the PET grid, ``"labels_ct"`` /
    ``"labels_mr"`` on the CT / MR grid), the truth record (JSON-ready) and the acquisition facts."""

    study_id: str
    task: str
    flavour: Flavour
    acquisition: Acquisition
    images: dict[str, Image] = field(default_factory=dict)
    truth_images: dict[str, Image] = field(default_factory=dict)
    truth: dict = field(default_factory=dict)

    @property
    def pet(self) -> Image:
        return self.images["PT"]

    def low_dose_names(self) -> list[str]:
        return [k for k in self.images if k.startswith("PT_low_")]


def fraction_name(f: float) -> str:
    """Series suffix of a dose fraction: 0.25 -> '0.25', 0.1 -> '0.1'."""
    return f"{float(f):g}"


def study_id_for(task: str, seed: int, index: int) -> str:
    return f"{task}-s{seed}-{index:04d}"

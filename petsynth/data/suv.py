"""SUVbw from DICOM PET, following the QIBA vendor-neutral pseudo-code (docs/formulas.md).

- Units BQML: SUV = value * PatientWeight[kg] * 1000 / (RadionuclideTotalDose * 2^(-dt / RadionuclideHalfLife)),
  dt from injection to scan time. Injection: RadiopharmaceuticalStartDateTime, else
  RadiopharmaceuticalStartTime on the series date. Scan: SeriesDate/SeriesTime when not later than the
  earliest AcquisitionDate/Time of the series, else that earliest acquisition time; Decay Correction
  DateTime (0018,9701) where an enhanced PET image states it. DecayCorrection ADMIN means the images are
  already decayed to injection: dt = 0.
- Units GML: already SUVbw (factor 1).
- Units CNTS (Philips): the private SUV scale factor (7053,1000) of "Philips PET Private Group".
- ``value`` is the stored pixel value after each instance's own RescaleSlope/Intercept.

Missing weight, dose or times raise :class:`SUVError` naming the tag and the file; nothing is guessed.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.valuerep import DA, DT, TM

PHILIPS_PRIVATE_CREATOR = "Philips PET Private Group"
PHILIPS_SUV_FACTOR_GROUP, PHILIPS_SUV_FACTOR_OFFSET = 0x7053, 0x00  # (7053,1000)

_TAGS = {
    "PatientWeight": "(0010,1030)",
    "RadionuclideTotalDose": "(0018,1074)",
    "RadionuclideHalfLife": "(0018,1075)",
    "RadiopharmaceuticalStartTime": "(0018,1072)",
    "RadiopharmaceuticalStartDateTime": "(0018,1078)",
    "RadiopharmaceuticalInformationSequence": "(0054,0016)",
    "SeriesDate": "(0008,0021)",
    "SeriesTime": "(0008,0031)",
    "AcquisitionTime": "(0008,0032)",
    "Units": "(0054,1001)",
    "DecayCorrection": "(0054,1102)",
    "DecayCorrectionDateTime": "(0018,9701)",
}


class SUVError(ValueError):
    """SUV cannot be computed; the message names the file and the missing or invalid tag."""


@dataclass(frozen=True)
class SUVScale:
    """Multiply rescaled PET values by ``factor`` to get SUVbw (g/ml).

    ``decay_time_s`` is the injection-to-scan time used (0 for ADMIN/GML/CNTS); ``units`` as found.
    """

    factor: float
    units: str
    decay_time_s: float = 0.0
    weight_kg: float | None = None
    dose_bq: float | None = None
    half_life_s: float | None = None


def _where(ds: Dataset) -> str:
    return str(getattr(ds, "filename", None) or "<dataset>")


#: What pydicom raises for an element whose bytes cannot be converted (a damaged file: an unknown VR, a value
#: cut short); :func:`suv_scale` reports it as an SUVError naming the file.
MALFORMED_ERRORS = (NotImplementedError, ValueError, TypeError, KeyError, IndexError, EOFError,
                    BytesLengthException)  # (a binary VR whose length is no multiple of its value size)


def _require(ds: Dataset, keyword: str, where: Dataset | None = None):
    value = ds.get(keyword)
    if value is None or value == "":
        raise SUVError(f"{_where(where or ds)}: missing {keyword} {_TAGS.get(keyword, '')}: cannot compute SUVbw")
    return value


def _positive(ds: Dataset, keyword: str, where: Dataset | None = None) -> float:
    value = float(_require(ds, keyword, where))
    if not math.isfinite(value) or value <= 0:
        raise SUVError(f"{_where(where or ds)}: {keyword} {_TAGS.get(keyword, '')} is {value}: must be positive")
    return value


def _combine(date_value, time_value) -> dt.datetime:
    return dt.datetime.combine(DA(date_value), TM(time_value).replace(tzinfo=None))


def _injection_time(ds: Dataset, radio: Dataset) -> dt.datetime:
    start_dt = radio.get("RadiopharmaceuticalStartDateTime")
    if start_dt:
        return DT(start_dt).replace(tzinfo=None)
    start_time = radio.get("RadiopharmaceuticalStartTime")
    if not start_time:
        raise SUVError(f"{_where(ds)}: missing RadiopharmaceuticalStartDateTime (0018,1078) and "
                       "RadiopharmaceuticalStartTime (0018,1072): cannot compute SUVbw")
    return _combine(_require(ds, "SeriesDate"), start_time)


def _scan_time(instances: Sequence[Dataset]) -> dt.datetime:
    first = instances[0]
    series = _combine(_require(first, "SeriesDate"), _require(first, "SeriesTime"))
    acquisitions = []
    for ds in instances:
        if ds.get("AcquisitionTime"):
            acquisitions.append(_combine(ds.get("AcquisitionDate") or first.SeriesDate, ds.AcquisitionTime))
    if acquisitions and series > min(acquisitions):
        return min(acquisitions)
    return series


def philips_suv_factor(ds: Dataset) -> float:
    """The Philips private SUV scale factor (7053,1000), or SUVError naming what is missing."""
    try:
        block = ds.private_block(PHILIPS_SUV_FACTOR_GROUP, PHILIPS_PRIVATE_CREATOR)
        value = float(block[PHILIPS_SUV_FACTOR_OFFSET].value)
    except (KeyError, TypeError, ValueError):
        raise SUVError(f"{_where(ds)}: Units CNTS needs the Philips private SUV scale factor (7053,1000) of "
                       f"{PHILIPS_PRIVATE_CREATOR!r}, which is missing or unreadable") from None
    if not math.isfinite(value) or value <= 0:
        raise SUVError(f"{_where(ds)}: Philips SUV scale factor (7053,1000) is {value}: must be positive")
    return value


def suv_scale(instances: Dataset | Sequence[Dataset]) -> SUVScale:
    """SUVbw factor of one PET series (all its instances, or one instance), per the module docstring. An
    attribute that pydicom cannot convert (a damaged file) is an SUVError naming the first instance's file."""
    instances = [instances] if isinstance(instances, Dataset) else list(instances)
    if not instances:
        raise SUVError("no PET instances given")
    try:
        return _suv_scale(instances)
    except SUVError:
        raise
    except MALFORMED_ERRORS as err:
        raise SUVError(f"{_where(instances[0])}: its SUV attributes cannot be read ({type(err).__name__}: {err}): "
                       "a damaged file") from None


def _suv_scale(instances: list[Dataset]) -> SUVScale:
    ds = instances[0]
    units = str(_require(ds, "Units")).upper()
    if units == "GML":
        return SUVScale(factor=1.0, units=units)
    if units == "CNTS":
        return SUVScale(factor=philips_suv_factor(ds), units=units)
    if units != "BQML":
        raise SUVError(f"{_where(ds)}: Units (0054,1001) is {units!r}; SUVbw needs BQML, GML or CNTS")
    weight = _positive(ds, "PatientWeight")
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise SUVError(f"{_where(ds)}: missing RadiopharmaceuticalInformationSequence (0054,0016): "
                       "cannot compute SUVbw")
    radio = seq[0]
    dose = _positive(radio, "RadionuclideTotalDose", where=ds)
    half_life = _positive(radio, "RadionuclideHalfLife", where=ds)
    decay = str(ds.get("DecayCorrection", "")).upper()
    if decay == "ADMIN":
        decay_s = 0.0
    elif decay == "START":
        corrected = [str(v).upper() for v in (ds.get("CorrectedImage") or [])]
        if corrected and "DECY" not in corrected:
            raise SUVError(f"{_where(ds)}: DecayCorrection START but CorrectedImage (0028,0051) lacks DECY")
        stated = ds.get("DecayCorrectionDateTime")  # enhanced PET (petsynth.data.multiframe)
        scan = DT(stated).replace(tzinfo=None) if stated else _scan_time(instances)
        decay_s = (scan - _injection_time(ds, radio)).total_seconds()
        if decay_s < 0:
            raise SUVError(f"{_where(ds)}: scan time precedes the injection time by {-decay_s:.0f} s: check "
                           f"{'DecayCorrectionDateTime (0018,9701)' if stated else 'SeriesTime (0008,0031)'} "
                           "and RadiopharmaceuticalStartTime (0018,1072)")
    else:
        raise SUVError(f"{_where(ds)}: DecayCorrection (0054,1102) is {decay or 'missing'!r}; SUVbw from BQML "
                       "needs START or ADMIN")
    return SUVScale(factor=suvbw_factor(weight, dose, decay_s, half_life), units=units, decay_time_s=decay_s,
                    weight_kg=weight, dose_bq=dose, half_life_s=half_life)


def suvbw_factor(weight_kg: float, dose_bq: float, decay_s: float, half_life_s: float) -> float:
    """SUVbw (g/ml) per Bq/ml: ``weight [g] / (injected dose [Bq] decayed over decay_s)``, i.e.
    ``weight_kg * 1000 / (dose_bq * 2^(-decay_s / half_life_s))`` (docs/formulas.md)."""
    return weight_kg * 1000.0 / (dose_bq * 2.0 ** (-decay_s / half_life_s))


def rescaled_pixels(ds: Dataset, out: np.ndarray | None = None, stored: np.ndarray | None = None) -> np.ndarray:
    """Pixel data times this instance's RescaleSlope plus RescaleIntercept, float32 (rows, cols).

    ``out``: an optional float32 (rows, cols) array to fill (saves a copy when stacking a series).
    ``stored``: the stored values when already decoded (a frame of a multi-frame image, whose header ``ds``
    carries that frame's rescale); else ``ds.pixel_array``.
    """
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    stored = ds.pixel_array if stored is None else stored
    if out is None:
        pixels = stored.astype(np.float32)
    else:
        pixels = out
        pixels[...] = stored
    if slope != 1.0:
        pixels *= np.float32(slope)
    if intercept != 0.0:
        pixels += np.float32(intercept)
    return pixels


def suv_image(ds: Dataset, scale: SUVScale) -> np.ndarray:
    """SUVbw of one PET instance, float32 (rows, cols)."""
    return (rescaled_pixels(ds) * np.float32(scale.factor)).astype(np.float32)

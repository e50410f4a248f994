"""DICOM writer of a *synthetic* PET series: the output of ``petsynth translate`` as a PET series a viewer opens
next to the image it was synthesized from (a CT, an MR, or a low-dose PET).

What the series says about itself (PS3.3 PET Image IOD, A.21):

- SUVbw values in g/ml (Units GML), stored int16 with a RescaleSlope per slice and RescaleIntercept 0, so
  ``stored * RescaleSlope`` is the SUV; negative inputs are clipped to 0.
- ImageType DERIVED\\PRIMARY: the PET Image module (C.8.9.4.1.1) allows only PRIMARY as value 2, so
  DERIVED\\SECONDARY would be invalid. Being synthetic is stated in SeriesDescription
  (:data:`SYNTHETIC_SERIES_DESCRIPTION`), DerivationDescription (petsynth, its version and the model),
  ImageComments, Manufacturer "petsynth", SoftwareVersions and ContentQualification RESEARCH (an attribute of
  the enhanced IODs, not of the single-frame PET IOD: a Standard Extended SOP Class, PS3.4 B.1.3, which
  dciodvfy accepts).
- With a ``reference`` (a header of the source series: the CT, MR or low-dose PET translated): its study,
  patient and frame of reference (same StudyInstanceUID and FrameOfReferenceUID, so viewers overlay and link
  the two), a new series (SeriesNumber = the source's + 1000) and new instance UIDs. The equipment module is
  petsynth's own; the source's PatientPosition becomes the NM/PET Patient Orientation codes. With ``reference=None`` (NIfTI input): a new
  study and frame of reference, the patient attributes present but empty.
- No acquisition happened: AcquisitionDate/Time and ActualFrameDuration are present but empty (type 2),
  FrameReferenceTime 0, SeriesType STATIC\\IMAGE, CountsSource EMISSION, CollimatorType empty, no
  radiopharmaceutical item (the type 2 sequence is empty). SUV is referred to the administered dose, so
  DecayCorrection is ADMIN with DecayFactor 1 (no decay scaling was applied to the synthesized values) and
  CorrectedImage DECY. No attenuation or scatter correction was performed on this image, so CorrectedImage has
  no ATTN/SCAT; this also keeps ``petsynth prepare`` (which takes only PET series with ATTN) from ever using a
  synthetic series as a training target. Series, content and instance creation date/time are the time of
  writing.

Checked with dicom3tools' ``dciodvfy`` (no errors) in ``tests/test_synthetic_pet.py``.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from petsynth import __version__
from petsynth.io.dicom import (
    PixelEncoding,
    conformed_value,
    dicom_date,
    dicom_time,
    patient_orientation_codes,
    quiet_reading,
    write_series,
)

#: SeriesDescription (0008,103E) of every synthetic PET series (VR LO, at most 64 characters).
SYNTHETIC_SERIES_DESCRIPTION: str = "SYNTHETIC PET (petsynth) - NOT FOR DIAGNOSIS"
#: Added to the source series' SeriesNumber to number the synthetic series (SeriesNumber 1000 without a reference).
SERIES_NUMBER_OFFSET: int = 1000
#: Namespace of the deterministic UIDs made from ``uid_entropy``.
UID_NAMESPACE: str = "petsynth-synthetic-pet"

# Attributes copied from the reference (source series) when present: Patient (C.7.1.1), Patient Study (C.7.2.2), General
# Study (C.7.2.1), Frame of Reference (C.7.4.1), plus the de-identification flags, which must follow the data.
_PATIENT_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
_STUDY_TYPE2 = ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")
_COPIED_IF_PRESENT = ("SpecificCharacterSet", "TimezoneOffsetFromUTC", "IssuerOfPatientID", "PatientAge",
                      "PatientWeight", "PatientSize", "PatientIdentityRemoved", "DeidentificationMethod",
                      "DeidentificationMethodCodeSequence", "StudyDescription", "BodyPartExamined")


def _check_inputs(suv: np.ndarray, affine_lps: np.ndarray, model_name: str) -> tuple[np.ndarray, np.ndarray]:
    vol = np.asarray(suv)
    if vol.ndim != 3:
        raise ValueError(f"suv must be a 3-D volume (nz, ny, nx), got {vol.ndim}-D shape {vol.shape}")
    if 0 in vol.shape:
        raise ValueError(f"suv must not be empty, got shape {vol.shape}")
    if not (np.issubdtype(vol.dtype, np.floating) or np.issubdtype(vol.dtype, np.integer)):
        raise ValueError(f"suv must hold real numbers, got dtype {vol.dtype}")
    bad = np.array([np.count_nonzero(~np.isfinite(v)) for v in vol])  # per slice: no whole-volume temporaries
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"suv holds {int(bad.sum())} non-finite values (NaN or inf), the first in slice {k}")
    a = np.asarray(affine_lps, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine_lps must be a 4x4 matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("affine_lps holds non-finite values")
    if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise ValueError(f"affine_lps must have last row (0, 0, 0, 1), got {a[3].tolist()}")
    norms = np.linalg.norm(a[:3, :3], axis=0)
    if (norms <= 0).any():
        raise ValueError(f"affine_lps has a zero-length voxel axis (column norms {norms.tolist()})")
    row_u, col_u = a[:3, 0] / norms[0], a[:3, 1] / norms[1]
    if abs(float(row_u @ col_u)) > 1e-4:
        raise ValueError("affine_lps row (i) and column (j) axes are not orthogonal: DICOM image planes need "
                         "orthogonal ImageOrientationPatient cosines")
    if abs(float(a[:3, 2] @ np.cross(row_u, col_u))) < 1e-6 * norms[2]:
        raise ValueError("affine_lps slice (k) axis lies in the image plane")
    if not isinstance(model_name, str) or not model_name.strip():
        raise ValueError("model_name must be a non-empty string")
    return vol, a


def _uid(entropy: Sequence[str], *parts: str) -> str:
    """Deterministic from ``uid_entropy`` when given, else a fresh random UID."""
    if not entropy:
        return generate_uid()
    return generate_uid(entropy_srcs=[UID_NAMESPACE, *entropy, *parts])


def _derivation(model_name: str, derivation: str) -> str:
    text = derivation.strip() or f"Synthesized by petsynth {__version__}, model {model_name}"
    if "petsynth" not in text:
        text = f"petsynth {__version__}: {text}"
    if model_name not in text:
        text += f"; model {model_name}"
    text = text.rstrip(". ") + ". Synthetic image, not acquired: not for diagnosis."
    return text[:1024]  # VR ST


def _study_header(reference: Dataset | None, entropy: list[str], now: _dt.datetime,
                  reference_label: str = "the reference series") -> dict:
    """Patient, study and frame-of-reference attributes: the reference's, or a new anonymous study."""
    hdr: dict = {}
    if reference is None:
        hdr.update({k: "" for k in (*_PATIENT_TYPE2, "AccessionNumber", "ReferringPhysicianName")})
        hdr.update({
            "StudyInstanceUID": _uid(entropy, "study"),
            "StudyID": "petsynth",  # identifies nothing; an empty one stops media (DICOMDIR) creation
            "StudyDate": dicom_date(now), "StudyTime": dicom_time(now),
            "StudyDescription": "petsynth synthetic PET",
            "FrameOfReferenceUID": _uid(entropy, "frame-of-reference"),
            "PositionReferenceIndicator": "",
        })
        return hdr
    study_uid = reference.get("StudyInstanceUID")
    if not study_uid:
        raise ValueError("reference header has no StudyInstanceUID (0020,000D): pass the header of an instance "
                         "of the source series, or reference=None for a new study")
    problems = []
    for keyword in (*_PATIENT_TYPE2, *_STUDY_TYPE2, *_COPIED_IF_PRESENT):
        if keyword not in reference:
            if keyword not in _COPIED_IF_PRESENT:
                hdr[keyword] = ""
            continue
        value, problem = conformed_value(reference, keyword)
        if problem:
            problems.append(problem)
        if value not in (None, "") or keyword not in _COPIED_IF_PRESENT:
            hdr[keyword] = "" if value is None else value
    if problems:
        warnings.warn(f"{reference_label}: " + "; ".join(problems) + " in the synthetic series", stacklevel=3)
    hdr["StudyInstanceUID"] = str(study_uid)
    for_uid = reference.get("FrameOfReferenceUID")
    if for_uid:
        hdr["FrameOfReferenceUID"] = str(for_uid)
        hdr["PositionReferenceIndicator"] = reference.get("PositionReferenceIndicator") or ""
    else:
        warnings.warn("reference header has no FrameOfReferenceUID (0020,0052): the synthetic PET gets a new "
                      "frame of reference, so viewers will not link it to its source", stacklevel=3)
        hdr["FrameOfReferenceUID"] = _uid(entropy, "frame-of-reference", str(study_uid))
        hdr["PositionReferenceIndicator"] = ""
    return hdr


def write_synthetic_pet(out_dir: str | Path, suv: np.ndarray, affine_lps: np.ndarray, *,
                        reference: Dataset | None, model_name: str, derivation: str = "",
                        uid_entropy: Sequence[str] = (), reference_label: str = "the reference series"
                        ) -> list[Path]:
    """Write a synthetic PET volume as a DERIVED PET series (Units GML) labelled not for diagnosis.

    Args:
        out_dir: folder for the files ``0001.dcm`` ... (InstanceNumber = slice k + 1); created if missing;
            must not already hold ``*.dcm`` files.
        suv: (nz, ny, nx) SUVbw in g/ml; ``suv[k, j, i]`` is slice k, row j, column i. Must be finite;
            negative values are stored as 0.
        affine_lps: 4x4 matrix mapping ``(i, j, k, 1)`` to LPS patient coordinates in mm (the grid the source
            was resampled onto); rows and columns must be orthogonal.
        reference: header (no pixels needed) of one instance of the source series (the CT, MR or low-dose
            PET it was synthesized from): the new series joins its study and frame of reference and copies
            its patient module. None: a new study and frame of reference with empty patient name and id.
        model_name: the model that synthesized the volume (DerivationDescription, ManufacturerModelName).
        derivation: free text on how it was made (DerivationDescription: say what from, e.g. "Synthesized
            from MR"); petsynth and ``model_name`` are added when it does not name them.
        uid_entropy: strings making the new UIDs deterministic (together with the reference's study and
            series UIDs and ``model_name``); empty: random UIDs.
        reference_label: how warnings name the reference (e.g. "STUDY/: the CT series"). A copied value that
            its VR does not allow (a 17-character StudyID, VR SH) is made valid (cut to length, or emptied)
            with one warning naming the attributes (:func:`~petsynth.io.dicom.conformed_value`).

    Returns:
        The written files in slice (k) order.

    Raises:
        ValueError: ``suv`` not 3-D, empty or non-finite; ``affine_lps`` not a valid 4x4 LPS affine;
            empty ``model_name``; a reference without StudyInstanceUID.
        FileExistsError: ``out_dir`` already holds DICOM files.
    """
    vol, affine = _check_inputs(suv, affine_lps, model_name)
    if reference is not None and not isinstance(reference, Dataset):
        raise TypeError(f"reference must be a pydicom Dataset or None, got {type(reference).__name__}")
    out = Path(out_dir)
    if out.is_dir() and any(out.glob("*.dcm")):
        raise FileExistsError(f"{out} already holds DICOM files; write the synthetic series into an empty folder")
    if vol.min() < 0:
        vol = np.clip(vol, 0.0, None)  # a copy only when there is something to clip (translate clips already)
    nz = vol.shape[0]
    now = _dt.datetime.now()
    with quiet_reading():  # the reference's values: copied ones are checked by conformed_value
        entropy = [str(s) for s in uid_entropy]
        if entropy:
            ref_uids = [] if reference is None else [str(reference.get(k, "")) for k in
                                                     ("StudyInstanceUID", "SeriesInstanceUID")]
            entropy = [*entropy, *ref_uids, model_name]

        hdr = _study_header(reference, entropy, now, reference_label)
        laterality = None if reference is None else reference.get("Laterality")
        if laterality:
            hdr["Laterality"] = laterality
        elif "BodyPartExamined" not in hdr:
            # General Series: Laterality is 2C (paired body parts); with the body part unknown it must be present,
            # empty meaning "unknown"
            hdr["Laterality"] = ""
        ref_series_no = None if reference is None else reference.get("SeriesNumber")
        try:
            series_number = int(ref_series_no) + SERIES_NUMBER_OFFSET
        except (TypeError, ValueError):
            series_number = SERIES_NUMBER_OFFSET
        position = "" if reference is None else str(reference.get("PatientPosition", "") or "")
    hdr.update({
        # General Series (C.7.3.1); PatientPosition is replaced by the orientation codes below
        "SeriesNumber": series_number,
        "SeriesDescription": SYNTHETIC_SERIES_DESCRIPTION,
        "SeriesDate": dicom_date(now), "SeriesTime": dicom_time(now),
        # General Equipment (C.7.5.1): the equipment that made this series is petsynth
        "Manufacturer": "petsynth",
        "ManufacturerModelName": model_name.strip()[:64],
        "SoftwareVersions": __version__,
        # General Image (C.7.6.1), General Reference (C.12.4), SOP Common (C.12.1)
        "ImageType": ["DERIVED", "PRIMARY"],
        "ContentDate": dicom_date(now), "ContentTime": dicom_time(now),
        "InstanceCreationDate": dicom_date(now), "InstanceCreationTime": dicom_time(now),
        "DerivationDescription": _derivation(model_name.strip(), derivation),
        "ImageComments": (f"SYNTHETIC PET synthesized by petsynth {__version__} (model {model_name.strip()}); "
                          "computed, not a PET acquisition: not for diagnosis")[:10240],
        "BurnedInAnnotation": "NO",
        "ContentQualification": "RESEARCH",
        # PET Series (C.8.9.1)
        "Units": "GML",
        "CountsSource": "EMISSION",
        "SeriesType": ["STATIC", "IMAGE"],
        "NumberOfSlices": nz,
        "CorrectedImage": ["DECY"],
        "DecayCorrection": "ADMIN",
        "CollimatorType": "",
        # PET Isotope (C.8.9.2): nothing was administered for this image
        "RadiopharmaceuticalInformationSequence": [],
        # NM/PET Patient Orientation (C.8.4.6)
        **patient_orientation_codes(position),
        # PET Image (C.8.9.4), constant parts
        "FrameReferenceTime": "0",
        "AcquisitionDate": "", "AcquisitionTime": "",
        "ActualFrameDuration": None,
        "DecayFactor": "1",
        # VOI LUT: an SUV 0..6 window
        "WindowCenter": "3", "WindowWidth": "6",
    })
    series_uid = _uid(entropy, "series")
    return write_series(out, vol, affine, modality="PT", header=hdr, series_instance_uid=series_uid,
                        encoding=PixelEncoding.per_slice(signed=True),
                        per_slice=lambda k: {"ImageIndex": k + 1})

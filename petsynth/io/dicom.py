"""A general writer of single-frame DICOM image series (CT, PT, MR) from a volume, its geometry and
header fields. Used for the digital phantoms and, later, for synthesized PET series.

Inputs follow the petsynth volume convention: ``volume[k, j, i]`` (slice, row, column) and a 4x4 LPS affine
mapping ``(i, j, k, 1)`` to patient coordinates in mm. From the affine the writer derives, per slice,
ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness and SliceLocation, so the
geometry in the headers is always consistent with the array.

Pixel values are physical (HU, Bq/ml, MR signal) and stored as 16-bit integers through a
:class:`PixelEncoding`: a fixed RescaleSlope/Intercept (CT: slope 1, intercept -1024) or a slope chosen
per slice so that each slice uses the int16 range (PET, as GE and Siemens scanners store it).

Files are written with pydicom 3 in explicit VR little endian with a file meta header
(``save_as(..., enforce_file_format=True)``), each atomically (:func:`~petsynth.utils.files.atomic_file`), one
slice at a time. UIDs are derived deterministically from the series UID.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.datadict import keyword_for_tag
from pydicom.valuerep import MAX_VALUE_LEN, validate_value
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

from petsynth.utils.files import atomic_file

#: SOP class for each modality written here.
SOP_CLASS_UIDS: dict[str, str] = {
    "CT": CTImageStorage,
    "PT": PositronEmissionTomographyImageStorage,
    "MR": MRImageStorage,
}

InstanceOrder = Literal["ascending", "descending"]
FileNaming = Literal["instance", "uid", "shuffled"]


@dataclass(frozen=True)
class PixelEncoding:
    """How physical values become stored integers: physical = stored * RescaleSlope + RescaleIntercept.

    Attributes:
        rescale: "fixed" (one slope/intercept for the series) or "per_slice" (slope per slice so that the
            largest |value| of the slice maps to the largest integer; intercept 0).
        slope, intercept: the fixed rescale (ignored for "per_slice" except intercept must be 0 there).
        signed: int16 (PixelRepresentation 1) or uint16 (0).
    """

    rescale: Literal["fixed", "per_slice"] = "fixed"
    slope: float = 1.0
    intercept: float = 0.0
    signed: bool = True

    @classmethod
    def ct(cls) -> "PixelEncoding":
        """CT as scanners store it: HU = stored - 1024, int16."""
        return cls("fixed", 1.0, -1024.0, True)

    @classmethod
    def per_slice(cls, signed: bool = True) -> "PixelEncoding":
        """PET as GE/Siemens store it: a RescaleSlope per slice, intercept 0."""
        return cls("per_slice", 1.0, 0.0, signed)

    @classmethod
    def unsigned(cls) -> "PixelEncoding":
        """MR magnitude images: uint16, slope 1, intercept 0."""
        return cls("fixed", 1.0, 0.0, False)

    @property
    def int_range(self) -> tuple[int, int]:
        return (-32768, 32767) if self.signed else (0, 65535)

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Physical slice -> (stored integer slice, slope, intercept) with slope/intercept exactly as written."""
        lo, hi = self.int_range
        v = np.asarray(values, dtype=np.float64)
        if not np.isfinite(v).all():
            raise ValueError("cannot encode non-finite pixel values")
        if self.rescale == "per_slice":
            intercept = 0.0
            peak = float(np.max(np.abs(v))) if v.size else 0.0
            if not self.signed and v.size and v.min() < 0:
                raise ValueError("negative values cannot be stored unsigned; use signed=True")
            if peak > 0:
                # round the slope *up* to what a DS string holds, so no value overflows after rounding
                slope = float(format_ds(peak / hi * (1 + 1e-8), sig=10))
            else:
                slope = 1.0
        elif self.rescale == "fixed":
            slope, intercept = float(self.slope), float(self.intercept)
        else:
            raise ValueError(f"unknown rescale mode {self.rescale!r}")
        stored = np.clip(np.rint((v - intercept) / slope), lo, hi)
        return stored.astype(np.int16 if self.signed else np.uint16), slope, intercept


# --- value formatting -----------------------------------------------------------------------------------
def format_ds(x: float, sig: int = 10) -> str:
    """A decimal string (VR DS) of at most 16 characters, as exact as that allows."""
    x = float(x)
    if x == 0:
        return "0"
    for digits in range(sig, 0, -1):
        s = f"{x:.{digits}g}"
        if "e" in s:
            mant, exp = s.split("e")
            s = f"{mant}e{int(exp)}"
        if len(s) <= 16:
            return s
    raise ValueError(f"cannot format {x} as DS")


def dicom_date(t: _dt.datetime | _dt.date) -> str:
    return t.strftime("%Y%m%d")


def dicom_time(t: _dt.datetime | _dt.time) -> str:
    """HHMMSS.ffffff, trailing fraction zeros trimmed to two digits (HHMMSS.ff) like most scanners."""
    s = t.strftime("%H%M%S.%f")
    head, frac = s.split(".")
    frac = frac.rstrip("0")
    return f"{head}.{frac.ljust(2, '0')}"


def dicom_datetime(t: _dt.datetime) -> str:
    return dicom_date(t) + dicom_time(t)


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """One item of a code sequence (CodeValue, CodingSchemeDesignator, CodeMeaning)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


#: Codes of the NM/PET Patient Orientation module (PS3.16 CID 19, 20, 21): meaning -> {scheme: code value}.
#: SCT (SNOMED CT) is current; SRT (SNOMED-RT) is retired but still what many scanners write.
ORIENTATION_CODES: dict[str, dict[str, str]] = {
    "recumbent": {"SCT": "102538003", "SRT": "F-10450"},
    "supine": {"SCT": "40199007", "SRT": "F-10340"},
    "prone": {"SCT": "1240000", "SRT": "F-10310"},
    "headfirst": {"SCT": "102540008", "SRT": "F-10470"},
    "feet-first": {"SCT": "102541007", "SRT": "F-10480"},
}


def patient_orientation_codes(patient_position: str, scheme: Literal["SCT", "SRT"] = "SCT") -> dict[str, list]:
    """NM/PET Patient Orientation module (PS3.3 C.8.4.6) from a PatientPosition (0018,5100) such as "HFS".

    Returns PatientOrientationCodeSequence (with its modifier) and PatientGantryRelationshipCodeSequence.
    HFS/HFP/FFS/FFP map to recumbent + supine/prone and headfirst/feet-first; anything else (decubitus,
    empty) gives the two sequences empty (both are type 2). PET images carry these sequences *instead of*
    PatientPosition: the two must not both be present.
    """
    pos = str(patient_position or "").strip().upper()
    if len(pos) != 3 or pos[:2] not in ("HF", "FF") or pos[2] not in ("S", "P"):
        return {"PatientOrientationCodeSequence": [], "PatientGantryRelationshipCodeSequence": []}

    def code(meaning: str) -> Dataset:
        return code_item(ORIENTATION_CODES[meaning][scheme], scheme, meaning)

    orient = code("recumbent")
    orient.PatientOrientationModifierCodeSequence = [code("supine" if pos[2] == "S" else "prone")]
    gantry = code("headfirst" if pos[:2] == "HF" else "feet-first")
    return {"PatientOrientationCodeSequence": [orient], "PatientGantryRelationshipCodeSequence": [gantry]}


# --- values copied from other files ----------------------------------------------------------------------
@contextlib.contextmanager
def quiet_reading() -> Iterator[None]:
    """Read element values without pydicom's per-access validation warnings (they name neither the tag nor
    the file, and repeat once per file); check what is kept with :func:`conformed_value` instead."""
    mode = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        yield
    finally:
        pydicom_config.settings.reading_validation_mode = mode


def conformed_value(ds: Dataset, keyword: str) -> tuple[Any, str | None]:
    """The value of ``keyword`` in ``ds`` made valid for its VR, and what was wrong with it (None: nothing).

    A text value longer than its VR allows (PS3.5 6.2: SH 16 characters, LO 64, ...) is cut to that length;
    any other invalid value (characters a CS may not hold, a malformed date) becomes empty. The problem
    names the attribute and its tag, never the value (it may identify the patient)."""
    with quiet_reading():
        elem = ds[keyword]
        value = elem.value
    tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
    name = keyword_for_tag(elem.tag) or tag
    vr = str(elem.VR)
    values = list(value) if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
    limit = MAX_VALUE_LEN.get(vr)
    if limit is not None and any(isinstance(v, str) and len(v) > limit for v in values):
        longest = max(len(v) for v in values if isinstance(v, str))
        cut = [v[:limit] if isinstance(v, str) else v for v in values]
        return (cut if len(cut) > 1 else cut[0]), (f"{name} {tag} has {longest} characters, more than VR {vr} "
                                                  f"allows ({limit}): cut to {limit}")
    try:
        for v in values:
            if isinstance(v, str | bytes):
                validate_value(vr, v, pydicom_config.RAISE)
    except ValueError:
        return "", f"{name} {tag} is not a valid VR {vr} value: left empty"
    return value, None


# --- the writer -----------------------------------------------------------------------------------------
def _apply(ds: Dataset, fields: Mapping[str, Any] | Dataset | None) -> None:
    if fields is None:
        return
    if isinstance(fields, Dataset):
        for elem in fields:
            ds.add(elem)
        return
    for key, value in fields.items():
        if isinstance(key, int | tuple):  # (group, element) private tags: value = (VR, value)
            vr, val = value
            ds.add_new(key, vr, val)
        else:
            setattr(ds, key, value)


def slice_geometry(affine: np.ndarray, k: int) -> dict[str, Any]:
    """Geometry attributes of slice ``k`` from a 4x4 LPS affine (see module docstring)."""
    a = np.asarray(affine, dtype=np.float64)
    row_dir, col_dir, slice_vec = a[:3, 0], a[:3, 1], a[:3, 2]
    dx, dy = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    row_u, col_u = row_dir / dx, col_dir / dy
    normal = np.cross(row_u, col_u)
    pos = a[:3, :3] @ np.array([0.0, 0.0, float(k)]) + a[:3, 3]
    thickness = abs(float(slice_vec @ normal))
    return {
        "ImagePositionPatient": [format_ds(v, 9) for v in pos],
        "ImageOrientationPatient": [format_ds(v, 9) for v in (*row_u, *col_u)],
        "PixelSpacing": [format_ds(dy, 9), format_ds(dx, 9)],
        "SliceThickness": format_ds(thickness, 9),
        "SliceLocation": format_ds(float(pos @ normal), 9),
    }


def write_series(
    out_dir: str | Path,
    volume: np.ndarray,
    affine: np.ndarray,
    *,
    modality: str,
    header: Mapping[str, Any] | Dataset | None = None,
    series_instance_uid: str | None = None,
    encoding: PixelEncoding | None = None,
    instance_order: InstanceOrder = "ascending",
    file_naming: FileNaming = "instance",
    file_prefix: str = "",
    per_slice: Callable[[int], Mapping[str, Any]] | None = None,
    uid_entropy: Sequence[str] = (),
    shuffle_seed: int = 0,
    slice_thickness_mm: float | None = None,
) -> list[Path]:
    """Write ``volume`` (nz, ny, nx) of physical values as a single-frame DICOM series in ``out_dir``.

    Args:
        modality: "CT", "PT" or "MR" (sets Modality and the SOP class).
        header: attributes common to every instance (patient, study, series, equipment, modality
            fields such as KVP or Units, sequences as lists of Datasets); keyword -> value, or a Dataset.
            Private tags may be given as ``(group, element): (VR, value)``.
        series_instance_uid: the series UID (default: derived from ``uid_entropy``).
        encoding: physical -> stored mapping; default CT: slope 1 / intercept -1024, PT: per slice, MR:
            unsigned fixed.
        instance_order: "ascending": InstanceNumber 1 is slice k = 0; "descending": the last slice.
        file_naming: "instance" (``{prefix}{InstanceNumber:04d}.dcm``), "uid" (``{SOPInstanceUID}.dcm``,
            no relation to position) or "shuffled" (numbers in a seeded random order).
        per_slice: ``k -> {keyword: value}`` for attributes that vary by slice (times, ImageIndex, ...).
        uid_entropy: strings that make the generated UIDs deterministic.
        slice_thickness_mm: SliceThickness when it differs from the slice spacing.

    Returns:
        The written paths in slice (k) order.
    """
    modality = modality.upper()
    if modality not in SOP_CLASS_UIDS:
        raise ValueError(f"modality must be one of {sorted(SOP_CLASS_UIDS)}, got {modality!r}")
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be (nz, ny, nx), got shape {vol.shape}")
    if instance_order not in ("ascending", "descending"):
        raise ValueError(f"instance_order must be 'ascending' or 'descending', got {instance_order!r}")
    if file_naming not in ("instance", "uid", "shuffled"):
        raise ValueError(f"unknown file_naming {file_naming!r}")
    if encoding is None:
        encoding = {"CT": PixelEncoding.ct(), "PT": PixelEncoding.per_slice(),
                    "MR": PixelEncoding.unsigned()}[modality]
    nz, ny, nx = vol.shape
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entropy = [str(s) for s in uid_entropy]
    series_uid = series_instance_uid or generate_uid(entropy_srcs=[*entropy, modality, "series"])
    sop_class = SOP_CLASS_UIDS[modality]
    numbers = np.arange(1, nz + 1) if instance_order == "ascending" else np.arange(nz, 0, -1)
    shuffled = np.random.default_rng(shuffle_seed).permutation(nz) + 1
    paths: list[Path] = []
    for k in range(nz):
        sop_uid = generate_uid(entropy_srcs=[series_uid, "instance", str(k)])
        stored, slope, intercept = encoding.encode(vol[k])

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationVersionName = "PETSYNTH"

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        _apply(ds, header)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = int(numbers[k])
        for key, value in slice_geometry(affine, k).items():
            setattr(ds, key, value)
        if slice_thickness_mm is not None:
            ds.SliceThickness = format_ds(slice_thickness_mm, 9)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if encoding.signed else 0
        vr = "SS" if encoding.signed else "US"
        ds.add_new(0x00280106, vr, int(stored.min()))  # SmallestImagePixelValue
        ds.add_new(0x00280107, vr, int(stored.max()))  # LargestImagePixelValue
        ds.RescaleIntercept = format_ds(intercept)
        ds.RescaleSlope = format_ds(slope)
        if modality == "CT":
            ds.RescaleType = "HU"
        if per_slice is not None:
            _apply(ds, per_slice(k))
        ds.PixelData = np.ascontiguousarray(stored).astype(stored.dtype.newbyteorder("<"), copy=False).tobytes()
        ds["PixelData"].VR = "OW"

        if file_naming == "instance":
            name = f"{file_prefix}{int(numbers[k]):04d}.dcm"
        elif file_naming == "uid":
            name = f"{file_prefix}{sop_uid}.dcm"
        else:
            name = f"{file_prefix}{int(shuffled[k]):05d}.dcm"
        path = out / name
        with atomic_file(path) as fh:
            ds.save_as(fh, enforce_file_format=True)
        paths.append(path)
    return paths

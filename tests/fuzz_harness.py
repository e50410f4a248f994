"""Fuzzing of petsynth's DICOM reading: mutate one file of a valid study, then scan, prepare and translate it.

Two families of mutation: bytes (cuts, random header bytes, zeroed or repeated ranges, absurd element lengths,
empty files) and fields (a value that parses but means nothing: NaN, zero, negative or absurd rescale, spacing,
sizes, times and doses; a wrong VR; missing or contradictory geometry).

A case passes when nothing escapes: the scan lists every file as used or ignored with a reason; prepare ends
the study as "ok" with finite arrays, or "failed" with a reason that is not the catch-all "unexpected ..." (an
exception type petsynth did not expect is a bug even when the batch survives it); translate of the mutated
file's series gives a finite synthetic PET or a TranslateError. Used by ``tests/test_fuzz.py`` (a short budget)
and ``benchmarks/fuzz_dicom.py`` (long runs).
"""

from __future__ import annotations

import random
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword

from petsynth.data.dicom_index import scan_dicom
from petsynth.data.prepare import prepare_dataset
from petsynth.data.store import open_dataset

MUTATIONS = ("truncate", "header_bytes", "zero_range", "duplicate_range", "tag_length", "empty")
FIELD_MUTATIONS = ("bad_value", "missing", "wrong_vr", "contradiction")

#: Values that parse but mean nothing, by keyword (set as the element's text or number).
BAD_VALUES: dict[str, list] = {
    "RescaleSlope": ["nan", "inf", "0", "-1", "1e308", "", "1e-300"],
    "RescaleIntercept": ["nan", "-inf", "1e308"],
    "PixelSpacing": [["0", "0"], ["-1", "-1"], ["nan", "1"], ["1"], ["1e308", "1e308"], ["1e-300", "1e-300"]],
    "ImagePositionPatient": [["nan", "0", "0"], ["0", "0"], ["1e308", "0", "0"], ["inf", "inf", "inf"]],
    "ImageOrientationPatient": [["0"] * 6, ["1", "0", "0", "1", "0", "0"], ["nan"] * 6, ["1", "0", "0"],
                                ["1e308", "0", "0", "0", "1", "0"]],
    "SliceThickness": ["0", "-5", "nan"],
    "Rows": [0, 1, 65535], "Columns": [0, 65535],
    "BitsAllocated": [0, 1, 12, 64], "BitsStored": [0, 40], "PixelRepresentation": [2], "SamplesPerPixel": [0, 3],
    "NumberOfFrames": ["0", "2", "1000000", "-1"],
    "PatientWeight": ["0", "-70", "nan", "1e308", "inf"],
    "SeriesTime": ["999999", "ab", "", "235959.999999"], "SeriesDate": ["20241399", "", "00000000"],
    "AcquisitionTime": ["xx", "000000"], "Units": ["XYZ", "", "CNTS"], "DecayCorrection": ["NONE", "", "ADMIN"],
    "KVP": ["nan", "-120", "0", "1e308"],
    "RadionuclideTotalDose": ["0", "nan", "-1", "1e-300", "inf"],
    "RadionuclideHalfLife": ["0", "nan", "-6586"],
    "RadiopharmaceuticalStartDateTime": ["20991231235959", "garbage", ""],
}
#: Attributes whose absence a file may show (deleted).
MISSING = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "RescaleSlope",
           "PatientWeight", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "PixelData",
           "SOPClassUID", "SeriesTime", "Units", "RadiopharmaceuticalInformationSequence", "BitsAllocated",
           "PixelRepresentation", "TransferSyntaxUID")
_VRS = ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OW", "PN", "SH", "SL", "SQ",
        "SS", "ST", "TM", "UI", "UL", "UN", "US", "UT")
_IN_DOSE_ITEM = ("RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartDateTime")


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    """One mutation of a file's bytes: cut it anywhere, overwrite 1-16 bytes of its first 4 KB (the header),
    zero a range, repeat a range, give a data element an absurd length, or empty it."""
    n = len(data)
    if kind == "truncate":
        return data[: rng.randrange(0, n)]
    if kind == "header_bytes":
        out = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            out[rng.randrange(0, min(n, 4096))] = rng.randrange(256)
        return bytes(out)
    if kind == "zero_range":
        a = rng.randrange(0, n)
        b = min(n, a + rng.randint(1, 512))
        return data[:a] + bytes(b - a) + data[b:]
    if kind == "duplicate_range":
        a = rng.randrange(0, n)
        b = min(n, a + rng.randint(1, 512))
        return data[:b] + data[a:b] + data[b:]
    if kind == "tag_length":  # a 2- or 4-byte length field somewhere in the header set to a huge value
        out = bytearray(data)
        at = rng.randrange(132, min(n, 2048) - 4) if n > 140 else 0
        out[at:at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\xff\xff\x00\x00", b"\x00\x00\xff\x7f"])
        return bytes(out)
    if kind == "empty":
        return b""
    raise ValueError(f"unknown mutation {kind!r}")


def mutate_fields(path: Path, kind: str, rng: random.Random, others: list[Path]) -> str:
    """Rewrite one DICOM file with a field mutation (``FIELD_MUTATIONS``); returns what was done."""
    if kind == "wrong_vr":  # the VR characters of one explicit-VR element replaced: the bytes after it misread
        data = bytearray(path.read_bytes())
        keyword = rng.choice([k for k in (*BAD_VALUES, *MISSING) if tag_for_keyword(k) is not None])
        tag = tag_for_keyword(keyword)
        key = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + dictionary_VR(tag)[:2].encode()
        at = data.find(key)
        if at < 0:
            return f"wrong_vr {keyword}: not in the file"
        new_vr = rng.choice(_VRS)
        data[at + 4:at + 6] = new_vr.encode()
        path.write_bytes(bytes(data))
        return f"wrong_vr {keyword} -> {new_vr}"
    ds = pydicom.dcmread(path, force=True)
    if kind == "bad_value":
        keyword = rng.choice(sorted(BAD_VALUES))
        value = rng.choice(BAD_VALUES[keyword])
        where = ds
        if keyword in _IN_DOSE_ITEM and ds.get("RadiopharmaceuticalInformationSequence"):
            where = ds.RadiopharmaceuticalInformationSequence[0]
        where[tag_for_keyword(keyword)] = pydicom.DataElement(tag_for_keyword(keyword),
                                                              dictionary_VR(tag_for_keyword(keyword)), value)
        done = f"bad_value {keyword}={value!r}"
    elif kind == "missing":
        keyword = rng.choice(MISSING)
        if keyword == "TransferSyntaxUID":
            del ds.file_meta.TransferSyntaxUID
        elif keyword in ds:
            delattr(ds, keyword)
        done = f"missing {keyword}"
    elif kind == "contradiction":  # geometry or identity that disagrees with the rest of the series
        other = pydicom.dcmread(rng.choice(others), stop_before_pixels=True)
        choice = rng.choice(("position_of_another", "orientation", "frame_of_reference", "size", "spacing"))
        if choice == "position_of_another":
            ds.ImagePositionPatient = other.ImagePositionPatient
        elif choice == "orientation":
            ds.ImageOrientationPatient = ["0", "1", "0", "0", "0", "-1"]
        elif choice == "frame_of_reference":
            ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
        elif choice == "size":
            ds.Rows = int(ds.Rows) // 2
            ds.PixelData = bytes(ds.PixelData)[: len(ds.PixelData) // 2]
        else:
            ds.PixelSpacing = [float(v) * 1.5 for v in ds.PixelSpacing]
        done = f"contradiction {choice}"
    else:
        raise ValueError(f"unknown field mutation {kind!r}")
    with pydicom.config.disable_value_validation():
        ds.save_as(path)
    return done


@dataclass
class Case:
    """One fuzz case: which file was mutated how, and what went wrong (empty: nothing)."""

    seed: int
    file: str
    kind: str
    problem: str = ""
    translated: bool = False


def run_case(study: Path, work: Path, seed: int, prepare: bool = True, kinds: tuple[str, ...] = MUTATIONS,
             translate_model=None) -> Case:
    """Copy ``study`` into ``work``, mutate one of its DICOM files (chosen and mutated by ``seed``, with a
    mutation of ``kinds``), scan it and, with ``prepare``, prepare it; with ``translate_model`` (a loaded
    method), translate the mutated file's series. Returns the case with its problem, if any."""
    rng = random.Random(seed)
    case_dir = work / f"case-{seed}"
    shutil.copytree(study, case_dir / "study")
    files = sorted((case_dir / "study").rglob("*.dcm"))
    target = rng.choice(files)
    kind = rng.choice(kinds)
    case = Case(seed, str(target.relative_to(case_dir)), kind)
    try:
        if kind in FIELD_MUTATIONS:
            case.kind = mutate_fields(target, kind, rng, [f for f in files if f.parent == target.parent])
        else:
            target.write_bytes(mutate(target.read_bytes(), kind, rng))
        _, skipped = scan_dicom([case_dir / "study"])
        if any(not s.reason for s in skipped):
            case.problem = "a skipped file without a reason"
        if prepare:
            case.problem = case.problem or _prepare_problem(case_dir)
        if translate_model is not None and not case.problem and target.parent.name == "CT":
            case.translated = True
            case.problem = _translate_problem(translate_model, target.parent, case_dir / "out")
    except Exception as err:  # noqa: BLE001 - that is what the harness looks for
        case.problem = f"escaped: {type(err).__name__}: {err}"
    finally:
        shutil.rmtree(case_dir, ignore_errors=True)
    return case


def _prepare_problem(case_dir: Path) -> str:
    report = prepare_dataset([case_dir / "study"], case_dir / "ds", "ct2pet", size=32, key=b"fuzz")
    for r in report.results:
        if r.status == "failed" and r.reason.startswith("unexpected"):
            return r.reason
    if any(r.status == "ok" for r in report.results):
        dataset = open_dataset(case_dir / "ds")
        for i in range(len(dataset)):
            item = dataset[i]
            for key in ("source", "target"):
                if not np.isfinite(np.asarray(item[key])).all():
                    return f"prepare wrote non-finite {key} values (pair {i})"
    return ""


def _translate_problem(model, series: Path, out: Path) -> str:
    from petsynth.io.nifti import read_nifti
    from petsynth.translation import TranslateError, translate

    try:
        result = translate(model, series, out, steps=1, write_dicom=False, progress=None)
    except TranslateError:
        return ""
    synthetic, _ = read_nifti(result.files["nifti"])
    return "" if np.isfinite(synthetic).all() else "translate wrote non-finite SUV"

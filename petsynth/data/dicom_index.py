"""Find PET/CT/MR image series in folders of DICOM files, whatever their names and order.

:func:`scan_dicom` walks folders recursively, reads headers only, keeps image series petsynth can use
(CT, PT, MR) grouped by StudyInstanceUID, and names every file it ignores with the reason: not DICOM,
unreadable, localizer/scout, secondary capture, structured report or dose report, RT objects, no pixel
data, no slice geometry. Nothing here reads pixels; ordering by position is done when a series is loaded.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

#: SOP classes of image storage that petsynth reads, by modality.
IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",     # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.128": "PT",   # Positron Emission Tomography Image Storage
    "1.2.840.10008.5.1.4.1.1.4": "MR",     # MR Image Storage
}
#: SOP class prefixes that are known non-image or derived objects, with the reason reported.
IGNORED_SOP_PREFIXES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
    "1.2.840.10008.5.1.4.1.1.88": "structured report (dose report or other SR)",
    "1.2.840.10008.5.1.4.1.1.481": "RT object (structure set, dose or plan)",
    "1.2.840.10008.5.1.4.1.1.66": "raw data or registration object",
    "1.2.840.10008.5.1.4.1.1.11": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104": "encapsulated document",
}
_HEADER_TAGS = ["SOPClassUID", "Modality", "ImageType", "StudyInstanceUID", "SeriesInstanceUID",
                "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                "CorrectedImage", "SeriesDescription", "Manufacturer", "Units", "Rows", "Columns",
                "NumberOfFrames", "SeriesNumber", "SeriesDate", "SeriesTime", "KVP", "ActualFrameDuration"]


@dataclass
class SkippedFile:
    """A file that is not used, and why."""

    path: Path
    reason: str


@dataclass
class SeriesInfo:
    """One image series: its files (unordered) and the header facts needed to choose it."""

    series_uid: str
    modality: str
    study_uid: str
    frame_of_reference_uid: str
    files: list[Path] = field(default_factory=list)
    description: str = ""
    manufacturer: str = ""
    units: str = ""
    attenuation_corrected: bool = False
    rows: int = 0
    columns: int = 0
    frame_duration_ms: float = 0.0  # ActualFrameDuration (0018,1242); shorter for low-count PET series

    @property
    def num_files(self) -> int:
        return len(self.files)


@dataclass
class StudyInfo:
    """All usable series of one StudyInstanceUID."""

    study_uid: str
    series: list[SeriesInfo] = field(default_factory=list)

    def of_modality(self, modality: str) -> list[SeriesInfo]:
        return [s for s in self.series if s.modality == modality]


def iter_files(paths: Iterable[str | Path]) -> list[Path]:
    """All regular files under the given files/folders, sorted (the order carries no meaning)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"input path does not exist: {p}")
        if p.is_file():
            files.append(p)
            continue
        for root, dirs, names in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files.extend(Path(root) / n for n in names if not n.startswith("."))
    return sorted(files)


def classify_header(ds: pydicom.Dataset) -> str | None:
    """The reason a header is not a usable image slice, or None when it is one (CT, PT or MR)."""
    sop = str(ds.get("SOPClassUID", ""))
    for prefix, reason in IGNORED_SOP_PREFIXES.items():
        if sop.startswith(prefix):
            return reason
    if sop not in IMAGE_SOP_CLASSES:
        modality = ds.get("Modality", "?")
        return f"unsupported object (SOP class {sop or 'missing'}, modality {modality})"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "localizer/scout image"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame image (not supported yet)"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient",
                    "PixelSpacing"):
        if not ds.get(keyword):
            return f"image without {keyword}"
    return None


def read_header(path: Path) -> pydicom.Dataset | None:
    """Header of a DICOM file (no pixels), also without preamble; None when it is not DICOM."""
    with warnings.catch_warnings():  # malformed files warn; what matters is whether they parse
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except InvalidDicomError:
            pass
        # files without preamble/meta: accept them only if they parse as DICOM with a standard SOP class
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=True)
        except Exception:  # noqa: BLE001 - anything that does not parse is not DICOM
            return None
    sop = str(ds.get("SOPClassUID", ""))
    return ds if sop.startswith("1.2.840.10008.") else None


def scan_dicom(paths: Iterable[str | Path], progress: Callable[[int, int], None] | None = None
               ) -> tuple[list[StudyInfo], list[SkippedFile]]:
    """Index DICOM image series under ``paths`` (files or folders, searched recursively).

    Args:
        paths: files and folders.
        progress: called as ``progress(done, total)`` after each file.

    Returns:
        (studies sorted by StudyInstanceUID, skipped files with reasons).
    """
    files = iter_files(paths)
    series: dict[str, SeriesInfo] = {}
    skipped: list[SkippedFile] = []
    for n, path in enumerate(files, 1):
        ds = None
        try:
            ds = read_header(path)
            if ds is None:
                skipped.append(SkippedFile(path, "not a DICOM file"))
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, never fatal
            skipped.append(SkippedFile(path, f"unreadable DICOM: {type(err).__name__}: {err}"))
        if ds is not None:
            reason = classify_header(ds)
            if reason is not None:
                skipped.append(SkippedFile(path, reason))
            else:
                uid = str(ds.SeriesInstanceUID)
                info = series.get(uid)
                if info is None:
                    corrected = [str(v).upper() for v in (ds.get("CorrectedImage") or [])]
                    info = series[uid] = SeriesInfo(
                        series_uid=uid, modality=IMAGE_SOP_CLASSES[str(ds.SOPClassUID)],
                        study_uid=str(ds.StudyInstanceUID),
                        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
                        description=str(ds.get("SeriesDescription", "")),
                        manufacturer=str(ds.get("Manufacturer", "")), units=str(ds.get("Units", "")),
                        attenuation_corrected="ATTN" in corrected,
                        rows=int(ds.get("Rows", 0) or 0), columns=int(ds.get("Columns", 0) or 0),
                        frame_duration_ms=float(ds.get("ActualFrameDuration", 0) or 0))
                info.files.append(path)
        if progress is not None:
            progress(n, len(files))
    studies: dict[str, StudyInfo] = defaultdict(lambda: StudyInfo(""))
    for info in series.values():
        study = studies[info.study_uid]
        study.study_uid = info.study_uid
        study.series.append(info)
    for study in studies.values():
        study.series.sort(key=lambda s: (s.modality, s.series_uid))
    return [studies[k] for k in sorted(studies)], skipped

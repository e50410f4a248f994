"""Find PET/CT/MR image series in folders of DICOM files, whatever their names and order.

:func:`scan_dicom` walks folders recursively, reads headers only, keeps image series petsynth can use
(CT, PT, MR) grouped by StudyInstanceUID, and names every file it ignores with the reason: not DICOM,
unreadable, localizer/scout, secondary capture, structured report or dose report, RT objects, no pixel
data, no slice geometry. Nothing here reads pixels; ordering by position is done when a series is loaded.
Headers are read by :mod:`petsynth.data.dicom_header` (the 30 elements needed, several times faster than
a full parse), and by pydicom for the files that reader leaves.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from petsynth.data.dicom_header import LITTLE_ENDIAN_SYNTAXES, HeaderFields, read_header_fields, wanted_tags
from petsynth.data.multiframe import ENHANCED_SOP_CLASSES, frame_headers, is_enhanced

#: SOP classes of image storage that petsynth reads, by modality: classic single-frame images, and enhanced
#: multi-frame ones (a whole series in one file, read by :mod:`petsynth.data.multiframe`).
IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",     # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.128": "PT",   # Positron Emission Tomography Image Storage
    "1.2.840.10008.5.1.4.1.1.4": "MR",     # MR Image Storage
    **ENHANCED_SOP_CLASSES,
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
                "NumberOfFrames", "SeriesNumber", "SeriesDate", "SeriesTime", "KVP", "ActualFrameDuration",
                # read too so that loading the series need not parse the header again (InstanceHeader)
                "RescaleSlope", "RescaleIntercept", "BitsAllocated", "BitsStored", "PixelRepresentation",
                "SamplesPerPixel", "AcquisitionDate", "AcquisitionTime", "SOPInstanceUID"]
_WANTED = wanted_tags(_HEADER_TAGS)
#: A header as the scan reads it: the fast reader's fields, or a pydicom dataset for the files it leaves.
Header = HeaderFields | pydicom.Dataset


@dataclass
class SkippedFile:
    """A file that is not used, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class InstanceHeader:
    """The header facts of one instance that loading its series needs, kept from the scan (one parse per file).

    ``pixel_offset``/``pixel_dtype``: where the native (uncompressed little-endian) pixel data starts in the
    file and its numpy dtype; -1/"" when the pixels must be decoded by pydicom. ``stat``: (size, mtime_ns) of
    the file when scanned (a file changed since is read again).
    """

    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    rows: int
    columns: int
    slope: float
    intercept: float
    acquisition_date: str | None
    acquisition_time: str | None
    pixel_offset: int
    pixel_dtype: str
    stat: tuple[int, int]


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
    #: images in the series: its files, or the frames of its enhanced multi-frame files
    images: int = 0
    #: file -> its header facts from the scan, so that loading does not parse every file twice
    headers: dict[Path, InstanceHeader] = field(default_factory=dict, repr=False, compare=False)

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


def not_regular(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file (a named pipe, whose read would block forever; a socket or device;
    a broken symbolic link or a loop of them), or None for a regular file (or a link to one)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if os.path.islink(path):
            return "symbolic link loop" if err.errno == errno.ELOOP else "broken symbolic link"
        return f"cannot be read: {err.strerror or type(err).__name__}"
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISFIFO: "named pipe", stat.S_ISSOCK: "socket", stat.S_ISCHR: "character device",
             stat.S_ISBLK: "block device", stat.S_ISDIR: "folder"}
    return "not a regular file: " + next((name for test, name in kinds.items() if test(mode)), "special file")


def _values(value) -> list[str]:
    """A multi-valued code string's values, upper case (one value read as a list of one)."""
    if value is None or value == "":
        return []
    return [str(v).upper() for v in ([value] if isinstance(value, str) else value)]


def classify_header(ds: Header) -> str | None:
    """The reason a header is not a usable image slice, or None when it is one (CT, PT or MR)."""
    sop = str(ds.get("SOPClassUID", ""))
    for prefix, reason in IGNORED_SOP_PREFIXES.items():
        if sop.startswith(prefix):
            return reason
    if sop not in IMAGE_SOP_CLASSES:
        modality = ds.get("Modality", "?")
        return f"unsupported object (SOP class {sop or 'missing'}, modality {modality})"
    image_type = _values(ds.get("ImageType"))
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "localizer/scout image"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 and not is_enhanced(ds):
        return "multi-frame image of a single-frame SOP class (not supported)"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient",
                    "PixelSpacing", "Rows", "Columns"):
        if not ds.get(keyword):
            return f"image without {keyword}"
    return None


def _native_pixels(h: HeaderFields) -> tuple[int, str]:
    """(file offset, numpy dtype) of native single-frame grey pixel data that numpy can read straight from
    the file, or (-1, "") when the pixels need pydicom's decoders (compressed, multi-frame, colour, odd)."""
    if h.pixel_offset < 0 or h.transfer_syntax not in LITTLE_ENDIAN_SYNTAXES or (h.get("SamplesPerPixel") or 1) != 1:
        return -1, ""
    bits, stored = h.get("BitsAllocated"), h.get("BitsStored")
    rows, columns = h.get("Rows") or 0, h.get("Columns") or 0
    if bits not in (8, 16, 32) or stored != bits or not rows or not columns \
            or h.pixel_length != rows * columns * bits // 8:  # else encapsulated, multi-frame or odd
        return -1, ""
    return h.pixel_offset, ("<i" if h.get("PixelRepresentation") == 1 else "<u") + str(bits // 8)


#: An encapsulated (compressed) pixel data element has no declared length.
_UNDEFINED_LENGTH = 0xFFFFFFFF


def truncation(path: Path, ds: Header) -> str | None:
    """Why a file is cut short (its pixel data ends before the length its header declares, as an interrupted
    copy leaves it), or None. Checked where the fast header reader found the pixel data element; files
    pydicom reads instead fail when their pixels are decoded."""
    offset, length = getattr(ds, "pixel_offset", -1), getattr(ds, "pixel_length", _UNDEFINED_LENGTH)
    if offset < 0 or length == _UNDEFINED_LENGTH:
        return None
    missing = offset + length - path.stat().st_size
    return f"truncated: its pixel data ends {missing} bytes short of the {length} its header declares" \
        if missing > 0 else None


def _instance_header(path: Path, ds: Header, offset: int, dtype: str) -> InstanceHeader | None:
    if is_enhanced(ds):  # one file, many frames: loaded from its functional groups
        return None
    try:
        st = os.stat(path)
        date, time = ds.get("AcquisitionDate"), ds.get("AcquisitionTime")
        return InstanceHeader(
            position=tuple(float(v) for v in ds.ImagePositionPatient),
            orientation=tuple(float(v) for v in ds.ImageOrientationPatient),
            rows=int(ds.Rows), columns=int(ds.Columns),
            slope=float(ds.get("RescaleSlope", 1.0) or 1.0), intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
            acquisition_date=None if date is None else str(date), acquisition_time=None if time is None else str(time),
            pixel_offset=offset, pixel_dtype=dtype, stat=(st.st_size, st.st_mtime_ns))
    except (AttributeError, TypeError, ValueError, OSError):  # odd headers are loaded the ordinary way
        return None


def _first_frame(path: Path, fields: Header) -> Header:
    """The classic header of an enhanced image's first frame (its geometry lies in functional groups, which
    the fast reader skips), with the pixel data's offset and length that :func:`truncation` checks."""
    view = frame_headers(pydicom.dcmread(path, stop_before_pixels=True), path)[0]
    view.pixel_offset = getattr(fields, "pixel_offset", -1)
    view.pixel_length = getattr(fields, "pixel_length", _UNDEFINED_LENGTH)
    return view


def _read_header_offset(path: Path) -> tuple[Header | None, int, str]:
    """:func:`read_header`, with the native pixel data's offset and dtype ((-1, "") where there is none).
    The fast reader first (:mod:`petsynth.data.dicom_header`); pydicom for every file it does not handle.
    An enhanced multi-frame image is read whole by pydicom and described by its first frame."""
    fields = read_header_fields(path, _WANTED)
    if fields is not None and is_enhanced(fields):
        return _first_frame(path, fields), -1, ""
    if fields is not None:
        return fields, *_native_pixels(fields)
    with warnings.catch_warnings():  # malformed files warn; what matters is whether they parse
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS), -1, ""
        except InvalidDicomError:
            pass
        # files without preamble/meta: accept them only if they parse as DICOM with a standard SOP class
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=True)
        except Exception:  # noqa: BLE001 - anything that does not parse is not DICOM
            return None, -1, ""
    sop = str(ds.get("SOPClassUID", ""))
    if not sop.startswith("1.2.840.10008."):
        return None, -1, ""
    return (_first_frame(path, ds) if is_enhanced(ds) else ds), -1, ""


def read_header(path: Path) -> Header | None:
    """The header fields the scan uses (``_HEADER_TAGS``) of a DICOM file, also one without preamble;
    None when it is not DICOM."""
    return _read_header_offset(path)[0]


def _index_file(path: Path, ds: Header, offset: int, dtype: str, series: dict[str, SeriesInfo],
                instances: dict[str, Path], skipped: list[SkippedFile]) -> None:
    """Add one file to its series, or to ``skipped`` with the reason it is not used."""
    reason = classify_header(ds) or truncation(path, ds)
    sop = str(ds.get("SOPInstanceUID", "") or "")
    if reason is None and sop and sop in instances:  # one instance, several copies: keep the first
        reason = f"duplicate of {instances[sop].name} (the same SOPInstanceUID)"
    if reason is not None:
        skipped.append(SkippedFile(path, reason))
    else:
        uid = str(ds.SeriesInstanceUID)
        info = series.get(uid)
        if info is None:
            corrected = _values(ds.get("CorrectedImage"))
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
        info.images += int(ds.get("NumberOfFrames", 1) or 1) if is_enhanced(ds) else 1
        if sop:
            instances[sop] = path
        header = _instance_header(path, ds, offset, dtype)
        if header is not None:
            info.headers[path] = header


def scan_dicom(paths: Iterable[str | Path], progress: Callable[[int, int], None] | None = None
               ) -> tuple[list[StudyInfo], list[SkippedFile]]:
    """Index DICOM image series under ``paths`` (files or folders, searched recursively).

    Args:
        paths: files and folders.
        progress: called as ``progress(done, total)`` after each file.

    Returns:
        (studies sorted by StudyInstanceUID, skipped files with reasons). Among the skipped: files whose
        pixel data is shorter than their header declares ("truncated", :func:`truncation`), and every copy
        of an instance after the first (same SOPInstanceUID; files are visited in sorted order, truncated
        copies never kept).
    """
    files = iter_files(paths)
    series: dict[str, SeriesInfo] = {}
    skipped: list[SkippedFile] = []
    instances: dict[str, Path] = {}  # SOPInstanceUID -> the file kept
    for n, path in enumerate(files, 1):
        ds, offset, dtype = None, -1, ""
        try:
            special = not_regular(path)
            if special is not None:
                skipped.append(SkippedFile(path, special))
            else:
                ds, offset, dtype = _read_header_offset(path)
                if ds is None:
                    skipped.append(SkippedFile(path, "not a DICOM file"))
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported, never fatal
            skipped.append(SkippedFile(path, f"unreadable DICOM: {type(err).__name__}: {err}"))
        if ds is not None:
            try:
                _index_file(path, ds, offset, dtype, series, instances, skipped)
            except Exception as err:  # noqa: BLE001 - a header pydicom cannot convert: reported, never fatal
                skipped.append(SkippedFile(path, f"unreadable DICOM header: {type(err).__name__}: {err}"))
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

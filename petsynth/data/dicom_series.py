"""Load one DICOM image series into a volume in physical units, ordered by position.

Slices are ordered by ImagePositionPatient projected on the slice normal (row x column direction of
ImageOrientationPatient), never by file name or InstanceNumber. Each instance's own RescaleSlope and
RescaleIntercept are applied. CT comes out in HU, PET in SUVbw (:mod:`petsynth.data.suv`), MR as stored.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from petsynth.data.dicom_header import HeaderFields
from petsynth.data.dicom_index import InstanceHeader, SeriesInfo
from petsynth.data.geometry import Geometry, resample_affine
from petsynth.data.multiframe import FrameError, frame_headers, is_enhanced
from petsynth.physics.constants import HU_AIR
from petsynth.data.suv import MALFORMED_ERRORS, SUVError, SUVScale, rescaled_pixels, suv_scale

#: Largest disagreement between slice orientations (direction cosines) accepted within one series.
ORIENTATION_TOLERANCE: float = 1e-4
#: Relative deviation of a slice step from the median step above which spacing counts as irregular.
IRREGULAR_STEP_TOLERANCE: float = 0.01


class SeriesError(ValueError):
    """A series cannot be assembled into a volume; the message names the file(s) and the problem."""


@dataclass
class SeriesVolume:
    """A loaded series.

    Attributes:
        array: (nz, ny, nx) float32 in physical units (HU, SUVbw, or MR signal); a :class:`SliceReader`
            with the same shape and values when loaded with ``lazy=True``.
        geometry: regular LPS grid with the median slice step; exact where ``irregular`` is False.
        positions_mm: (nz,) slice positions along the normal, ascending (exact even when irregular).
        irregular: slice steps differ from the median by more than 1 % (e.g. bed joins).
        files: the instance files in slice order.
    """

    modality: str
    array: np.ndarray | SliceReader
    geometry: Geometry
    positions_mm: np.ndarray
    irregular: bool
    files: list[Path]
    units: str = ""
    kvp: float | None = None
    manufacturer: str = ""
    suv: SUVScale | None = None
    meta: dict = field(default_factory=dict)


def _orientation(ds: pydicom.Dataset) -> np.ndarray:
    return _axes(ds.ImageOrientationPatient)


def _axes(orientation) -> np.ndarray:
    iop = np.asarray([float(v) for v in orientation], dtype=np.float64)
    row, col = iop[:3], iop[3:]
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return np.stack([row, col, np.cross(row, col)], axis=1)  # columns: i, j, normal


def load_series(series: SeriesInfo | list[str | Path], modality: str | None = None, *,
                lazy: bool = False) -> SeriesVolume:
    """Read all instances of a series and stack them by position along the slice normal.

    Args:
        series: a :class:`SeriesInfo` from :func:`~petsynth.data.dicom_index.scan_dicom`, or its files.
        modality: "CT", "PT" or "MR" (default: the series' own).
        lazy: for CT and MR series from the scan, let ``array`` be a :class:`SliceReader` that reads each
            slice from its file when asked (a volume's memory is never held; ``np.asarray`` gives the whole).
    """
    files = list(series.files) if isinstance(series, SeriesInfo) else [Path(f) for f in series]
    if not files:
        raise SeriesError("empty series: no files")
    try:
        return _load(series, files, modality, lazy)
    except (SeriesError, SUVError):
        raise
    except (*MALFORMED_ERRORS, AttributeError, struct.error) as err:  # a header pydicom cannot convert
        raise SeriesError(f"a damaged file among the {len(files)} of the series in {files[0].parent}: "
                          f"{type(err).__name__}: {err}") from None


def _load(series: SeriesInfo | list, files: list[Path], modality: str | None, lazy: bool) -> SeriesVolume:
    headers = _scanned_headers(series, files)
    if headers is not None:
        return _load_scanned(series, files, headers, modality, lazy=lazy)
    datasets = [pydicom.dcmread(f) for f in files]
    modality = modality or (series.modality if isinstance(series, SeriesInfo) else str(datasets[0].Modality))
    slices = _slices(datasets, files)  # one per image: an instance, or a frame of an enhanced image
    head = slices[0].header
    axes = _orientation(head)
    for s in slices:
        if np.abs(_orientation(s.header) - axes).max() > ORIENTATION_TOLERANCE:
            raise SeriesError(f"{s.name}: ImageOrientationPatient differs from {slices[0].name} within one series")
        if (s.header.Rows, s.header.Columns) != (head.Rows, head.Columns):
            raise SeriesError(f"{s.name}: {s.header.Rows}x{s.header.Columns} pixels, but {slices[0].name} has "
                              f"{head.Rows}x{head.Columns}")
    normal = axes[:, 2]
    positions = np.array([float(np.dot([float(v) for v in s.header.ImagePositionPatient], normal)) for s in slices])
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    slices = [slices[i] for i in order]
    keep = _one_per_position(slices, positions)
    slices, positions = [slices[i] for i in keep], positions[keep]
    first = slices[0].header
    steps = np.diff(positions)
    step = float(np.median(steps)) if steps.size else float(first.get("SliceThickness", 1.0) or 1.0)
    irregular = bool(steps.size and np.abs(steps - step).max() > IRREGULAR_STEP_TOLERANCE * step)

    suv = suv_scale([s.header for s in slices]) if modality == "PT" else None
    array = np.empty((len(slices), int(first.Rows), int(first.Columns)), dtype=np.float32)
    frames: dict[Path, np.ndarray] = {}  # an enhanced image's stored frames, decoded once
    for k, s in enumerate(slices):
        if s.frame is None:
            _decode(s.dataset, s.path, array[k])
        else:
            if s.path not in frames:
                frames[s.path] = _stored_frames(s.dataset, s.path)
            _decode(s.header, s.path, array[k], stored=frames[s.path][s.frame], name=s.name)
    return _volume(first, modality, array, step, axes, positions, irregular, [s.path for s in slices], suv,
                   last=slices[-1].header.ImagePositionPatient)


@dataclass(frozen=True)
class _Slice:
    """One image of a series: a single-frame instance (``frame`` None, ``header`` its dataset) or frame
    ``frame`` of an enhanced image (``header`` that frame's classic header, :mod:`petsynth.data.multiframe`)."""

    path: Path
    dataset: pydicom.Dataset | None  # None: read from ``path`` when its pixels are compared
    header: pydicom.Dataset | None
    frame: int | None = None

    @property
    def name(self) -> str:
        return str(self.path) if self.frame is None else f"{self.path} (frame {self.frame + 1})"

    def stored_bytes(self) -> bytes:
        """The stored pixels (compared, not rescaled): the file's pixel data, or the decoded frame."""
        ds = self.dataset if self.dataset is not None else pydicom.dcmread(self.path)
        if self.frame is None:
            return bytes(ds.PixelData)
        return _stored_frames(ds, self.path)[self.frame].tobytes()


def _slices(datasets: list[pydicom.Dataset], files: list[Path]) -> list[_Slice]:
    slices = []
    for ds, path in zip(datasets, files):
        if not is_enhanced(ds):
            slices.append(_Slice(path, ds, ds))
            continue
        try:
            views = frame_headers(ds, path)
        except FrameError as err:
            raise SeriesError(str(err)) from None
        slices.extend(_Slice(path, ds, view, k) for k, view in enumerate(views))
    return slices


def _stored_frames(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """(frames, rows, columns) stored values of an enhanced image; a SeriesError naming the file when they
    cannot be decoded."""
    try:
        return ds.pixel_array.reshape(int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns))
    except Exception as err:  # noqa: BLE001 - pydicom's decoders raise many kinds
        raise SeriesError(f"{path}: pixel data cannot be decoded ({type(err).__name__}: {err})") from None


#: Slices closer than this along the normal (mm) lie at the same position.
SAME_POSITION_MM = 1e-3


def _one_per_position(slices: list[_Slice], positions: np.ndarray) -> np.ndarray:
    """Indices of ``slices`` (sorted by ``positions``) to keep: of several images at
    one position, the first when their stored pixels are identical (the same image sent twice under two
    instance UIDs); different pixels at one position are two series mixed, an error naming both."""
    keep = [0] if len(slices) else []
    for k in range(1, len(slices)):
        if positions[k] - positions[keep[-1]] >= SAME_POSITION_MM:
            keep.append(k)
            continue
        kept, other = slices[keep[-1]], slices[k]
        if kept.stored_bytes() != other.stored_bytes():
            raise SeriesError(f"{kept.name} and {other.name} lie at the same position ({positions[k]:.3f} mm along "
                              "the slice normal) with different pixels: two series mixed, or two versions of one "
                              "image; remove one of them")
        warnings.warn(f"{other.name} is a copy of {kept.path.name if kept.frame is None else kept.name} (same "
                      "position, same pixels): used once", stacklevel=3)
    return np.asarray(keep, dtype=np.int64)


def _scanned_headers(series: SeriesInfo | list, files: list[Path]) -> list[InstanceHeader] | None:
    """The headers kept by the scan for every file, when they are all there and no file changed since."""
    if not isinstance(series, SeriesInfo) or not series.headers:
        return None
    headers = [series.headers.get(f) for f in files]
    if any(h is None for h in headers):
        return None
    try:
        for f, h in zip(files, headers):
            st = os.stat(f)
            if (st.st_size, st.st_mtime_ns) != h.stat:
                return None
    except OSError:
        return None
    return headers


def _decode(ds: pydicom.Dataset, path: Path, out: np.ndarray, stored: np.ndarray | None = None,
            name: str | None = None) -> None:
    """Fill ``out`` with the instance's rescaled pixels as pydicom decodes them (or of ``stored``, a decoded
    frame whose header is ``ds``); a SeriesError naming the file (``name``: and frame) when they cannot be
    decoded (damaged, or a compression without an installed decoder) or are not finite."""
    try:
        rescaled_pixels(ds, out=out, stored=stored)
    except Exception as err:  # noqa: BLE001 - pydicom's decoders raise many kinds
        raise SeriesError(f"{name or path}: pixel data cannot be decoded ({type(err).__name__}: {err})") from None
    _require_finite(out, name or path, ds)


def _require_finite(values: np.ndarray, name, header) -> None:
    """A SeriesError naming the image when its rescaled values hold NaN or infinity (a NaN or absurd
    RescaleSlope / RescaleIntercept), which would otherwise flow silently into SUV and HU."""
    if not np.isfinite(values).all():
        raise SeriesError(f"{name}: rescaled pixel values are not finite (RescaleSlope "
                          f"{header.get('RescaleSlope', 1)!s}, RescaleIntercept {header.get('RescaleIntercept', 0)!s})")


class SliceReader:
    """The slices of a series in position order, read from their files on demand.

    ``reader[k]`` is slice k, float32 (rows, columns), rescaled by its instance's slope and intercept: the
    values ``load_series`` stacks. Pixels are read natively where the scan found their offset, else decoded
    by pydicom. ``np.asarray(reader)`` reads the whole (nz, rows, columns) volume.
    """

    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(self, files: list[Path], headers: list[InstanceHeader]):
        self.files, self.headers = files, headers
        self.shape = (len(files), headers[0].rows, headers[0].columns)
        self._scratch: dict[str, np.ndarray] = {}  # dtype -> reused buffer for the stored values

    def __len__(self) -> int:
        return self.shape[0]

    def read_into(self, k: int, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` (rows, columns) float32 with slice ``k``."""
        path, h = self.files[k], self.headers[k]
        if h.pixel_offset < 0 or not self._read_native(path, h, out):
            _decode(pydicom.dcmread(path), path, out)
        else:
            _require_finite(out, path, {"RescaleSlope": h.slope, "RescaleIntercept": h.intercept})
        return out

    def _read_native(self, path: Path, h: InstanceHeader, out: np.ndarray) -> bool:
        count = h.rows * h.columns
        buf = self._scratch.get(h.pixel_dtype)
        if buf is None or buf.size != count:
            buf = self._scratch[h.pixel_dtype] = np.empty(count, dtype=h.pixel_dtype)
        with open(path, "rb", buffering=0) as fh:
            fh.seek(h.pixel_offset)
            if fh.readinto(buf) != buf.nbytes:  # shorter than its header says: pydicom reports it
                return False
        np.multiply(buf.reshape(h.rows, h.columns), np.float32(h.slope), out=out)  # as rescaled_pixels does
        if h.intercept != 0.0:
            out += np.float32(h.intercept)
        return True

    def __getitem__(self, k):
        if isinstance(k, (int, np.integer)):
            return self.read_into(int(k), np.empty(self.shape[1:], dtype=np.float32))
        indices = np.arange(self.shape[0])[k]
        out = np.empty((indices.size, *self.shape[1:]), dtype=np.float32)
        for n, i in enumerate(np.atleast_1d(indices)):
            self.read_into(int(i), out[n])
        return out if indices.ndim else out[0]

    def __array__(self, dtype=None, copy=None):
        volume = self[:]
        return volume if dtype is None else volume.astype(dtype, copy=False)


def _load_scanned(series: SeriesInfo, files: list[Path], headers: list[InstanceHeader],
                  modality: str | None, lazy: bool = False) -> SeriesVolume:
    """:func:`load_series` from the headers kept by the scan: each file's pixels are read once, natively
    where the transfer syntax allows (else decoded by pydicom); only the first instance's header is read
    again in full (spacing, SUV and scanner facts). Same checks, order and values as reading every file."""
    modality = modality or series.modality
    axes = _axes(headers[0].orientation)
    h0 = headers[0]
    for h, f in zip(headers, files):
        if h.orientation != h0.orientation and np.abs(_axes(h.orientation) - axes).max() > ORIENTATION_TOLERANCE:
            raise SeriesError(f"{f}: ImageOrientationPatient differs from {files[0]} within one series")
        if (h.rows, h.columns) != (h0.rows, h0.columns):
            raise SeriesError(f"{f}: {h.rows}x{h.columns} pixels, but {files[0]} has {h0.rows}x{h0.columns}")
    normal = axes[:, 2]
    positions = np.array([float(np.dot(list(h.position), normal)) for h in headers])
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    headers = [headers[i] for i in order]
    files = [files[i] for i in order]
    keep = _one_per_position([_Slice(f, None, None) for f in files], positions)
    headers, files, positions = [headers[i] for i in keep], [files[i] for i in keep], positions[keep]
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    steps = np.diff(positions)
    step = float(np.median(steps)) if steps.size else float(first.get("SliceThickness", 1.0) or 1.0)
    irregular = bool(steps.size and np.abs(steps - step).max() > IRREGULAR_STEP_TOLERANCE * step)

    suv = None
    if modality == "PT":
        others = [HeaderFields({k: v for k, v in (("AcquisitionDate", h.acquisition_date),  # read like headers
                                                   ("AcquisitionTime", h.acquisition_time)) if v is not None})
                  for h in headers[1:]]
        suv = suv_scale([first, *others])
    reader = SliceReader(files, headers)
    array = reader if lazy and suv is None else np.asarray(reader)
    return _volume(first, modality, array, step, axes, positions, irregular, files, suv, last=headers[-1].position)


def _volume(first: pydicom.Dataset, modality: str, array: np.ndarray, step: float, axes: np.ndarray,
            positions: np.ndarray, irregular: bool, files: list[Path], suv: SUVScale | None,
            last: Sequence[float]) -> SeriesVolume:
    """The :class:`SeriesVolume` of a stacked series (``array`` rescaled, SUV factor not yet applied) whose
    first and last images in slice order are ``first`` and at ImagePositionPatient ``last``. A sheared stack
    (a gantry-tilted CT) is resampled onto an orthogonal grid (:func:`unsheared`)."""
    if suv is not None:
        array *= np.float32(suv.factor)
        if not np.isfinite(array).all():  # an absurd weight or dose (e.g. 1e-300 Bq) overflows float32
            raise SUVError(f"{files[0]}: SUV values overflow: the SUV factor {suv.factor:.3g} (PatientWeight "
                           f"{suv.weight_kg} kg, RadionuclideTotalDose {suv.dose_bq} Bq) is absurd")
    dy, dx = (float(v) for v in first.PixelSpacing)
    origin = np.array([float(v) for v in first.ImagePositionPatient])
    geometry = Geometry(shape=array.shape, spacing=(step, dy, dx), origin=tuple(origin),
                        direction=tuple(axes.ravel()))
    meta = {}
    table_step = sheared_step(origin, np.array([float(v) for v in last]), axes, len(positions), min(dy, dx))
    if table_step is not None:
        tilt = float(np.degrees(np.arccos(abs(np.dot(table_step, axes[:, 2])) / np.linalg.norm(table_step))))
        array, geometry = unsheared(np.asarray(array), origin, table_step, axes, (dy, dx),
                                    fill=HU_AIR if modality == "CT" else 0.0)
        normal = geometry.direction_matrix[:, 2]
        positions = float(np.dot(geometry.origin, normal)) + geometry.spacing[0] * np.arange(geometry.shape[0])
        meta["gantry_tilt_deg"] = round(tilt, 3)
        warnings.warn(f"{files[0].name} and the other {len(files) - 1} slices of the series are tilted by {tilt:.2f} "
                      "degrees against the table (gantry tilt): resampled onto an orthogonal grid in world coordinates"
                      + (" with their mean step (the steps are irregular)" if irregular else ""), stacklevel=4)
    kvp = float(first.KVP) if modality == "CT" and first.get("KVP") not in (None, "") else None
    return SeriesVolume(modality=modality, array=array, geometry=geometry, positions_mm=positions,
                        irregular=irregular, files=files, units=str(first.get("Units", "")), kvp=kvp,
                        manufacturer=str(first.get("Manufacturer", "")), suv=suv, meta=meta)


#: In-plane drift of a slice stack (over the whole series, in pixels) above which it counts as sheared.
SHEAR_TOLERANCE_PIXELS = 0.1


def sheared_step(first_mm: np.ndarray, last_mm: np.ndarray, axes: np.ndarray, slices: int,
                 pixel_mm: float) -> np.ndarray | None:
    """The mean step from slice to slice (LPS mm, 3-vector) when it leaves the slice normal (``axes[:, 2]``)
    far enough that the stack drifts in-plane by more than :data:`SHEAR_TOLERANCE_PIXELS` of a pixel from
    first to last slice, as a CT acquired with the gantry tilted does; else None."""
    if slices < 2:
        return None
    step = (last_mm - first_mm) / (slices - 1)
    normal = axes[:, 2]
    drift = (step - np.dot(step, normal) * normal) * (slices - 1)
    return step if np.linalg.norm(drift) > SHEAR_TOLERANCE_PIXELS * pixel_mm else None


def unsheared(array: np.ndarray, first_mm: np.ndarray, step_mm: np.ndarray, axes: np.ndarray,
              pixel_mm: tuple[float, float], fill: float) -> tuple[np.ndarray, Geometry]:
    """Resample a sheared stack onto an orthogonal grid, trilinearly in world coordinates.

    ``array`` (nz, ny, nx): slice k lies at ``first_mm + k * step_mm``, its rows along ``axes[:, 0]`` and its
    columns along ``axes[:, 1]`` at ``pixel_mm`` = (dy, dx). The grid's slices are perpendicular to the step
    (the table's axis) at its length, its rows along the original row direction made perpendicular to the
    step, with the original pixel size, and it covers the whole stack; outside the stack is ``fill``.
    Returns (resampled float32 array, its grid).
    """
    dy, dx = pixel_mm
    src = np.eye(4)
    src[:3, 0], src[:3, 1], src[:3, 2], src[:3, 3] = dx * axes[:, 0], dy * axes[:, 1], step_mm, first_mm
    table = step_mm / np.linalg.norm(step_mm)
    row = axes[:, 0] - np.dot(axes[:, 0], table) * table
    row /= np.linalg.norm(row)
    direction = np.stack([row, np.cross(table, row), table], axis=1)  # columns: i, j, k
    nz, ny, nx = array.shape
    corners = np.array([[i, j, k, 1.0] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)]) @ src.T
    local = (corners[:, :3] - first_mm) @ direction  # along i, j, k of the new grid
    lo, hi = local.min(axis=0), local.max(axis=0)
    spacing_ijk = np.array([dx, dy, np.linalg.norm(step_mm)])
    size_ijk = np.floor((hi - lo) / spacing_ijk + 1e-6).astype(int) + 1
    geometry = Geometry(shape=tuple(size_ijk[::-1]), spacing=tuple(spacing_ijk[::-1]),
                        origin=tuple(first_mm + direction @ lo), direction=tuple(direction.ravel()))
    return resample_affine(array, src, geometry, fill=fill), geometry

"""Load one DICOM image series into a volume in physical units, ordered by position.

Slices are ordered by ImagePositionPatient projected on the slice normal (row x column direction of
ImageOrientationPatient), never by file name or InstanceNumber. Each instance's own RescaleSlope and
RescaleIntercept are applied. CT comes out in HU, PET in SUVbw (:mod:`petsynth.data.suv`), MR as stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from petsynth.data.dicom_index import SeriesInfo
from petsynth.data.geometry import Geometry
from petsynth.data.suv import SUVScale, rescaled_pixels, suv_scale

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
        array: (nz, ny, nx) float32 in physical units (HU, SUVbw, or MR signal).
        geometry: regular LPS grid with the median slice step; exact where ``irregular`` is False.
        positions_mm: (nz,) slice positions along the normal, ascending (exact even when irregular).
        irregular: slice steps differ from the median by more than 1 % (e.g. bed joins).
        files: the instance files in slice order.
    """

    modality: str
    array: np.ndarray
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
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    row, col = iop[:3], iop[3:]
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    return np.stack([row, col, np.cross(row, col)], axis=1)  # columns: i, j, normal


def load_series(series: SeriesInfo | list[str | Path], modality: str | None = None) -> SeriesVolume:
    """Read all instances of a series and stack them by position along the slice normal.

    Args:
        series: a :class:`SeriesInfo` from :func:`~petsynth.data.dicom_index.scan_dicom`, or its files.
        modality: "CT", "PT" or "MR" (default: the series' own).
    """
    files = list(series.files) if isinstance(series, SeriesInfo) else [Path(f) for f in series]
    if not files:
        raise SeriesError("empty series: no files")
    datasets = [pydicom.dcmread(f) for f in files]
    modality = modality or (series.modality if isinstance(series, SeriesInfo) else str(datasets[0].Modality))
    axes = _orientation(datasets[0])
    for ds, f in zip(datasets, files):
        if np.abs(_orientation(ds) - axes).max() > ORIENTATION_TOLERANCE:
            raise SeriesError(f"{f}: ImageOrientationPatient differs from {files[0]} within one series")
        if (ds.Rows, ds.Columns) != (datasets[0].Rows, datasets[0].Columns):
            raise SeriesError(f"{f}: {ds.Rows}x{ds.Columns} pixels, but {files[0]} has "
                              f"{datasets[0].Rows}x{datasets[0].Columns}")
    normal = axes[:, 2]
    positions = np.array([float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)) for ds in datasets])
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    datasets = [datasets[i] for i in order]
    files = [files[i] for i in order]
    steps = np.diff(positions)
    if steps.size and steps.min() < 1e-3:
        k = int(np.argmin(steps))
        raise SeriesError(f"{files[k]} and {files[k + 1]} lie at the same position ({positions[k]:.3f} mm "
                          "along the slice normal): duplicate instances or two series mixed")
    step = float(np.median(steps)) if steps.size else float(datasets[0].get("SliceThickness", 1.0) or 1.0)
    irregular = bool(steps.size and np.abs(steps - step).max() > IRREGULAR_STEP_TOLERANCE * step)

    suv = suv_scale(datasets) if modality == "PT" else None
    array = np.empty((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), dtype=np.float32)
    for k, ds in enumerate(datasets):
        rescaled_pixels(ds, out=array[k])
    if suv is not None:
        array *= np.float32(suv.factor)
    first = datasets[0]
    dy, dx = (float(v) for v in first.PixelSpacing)
    geometry = Geometry(shape=array.shape, spacing=(step, dy, dx),
                        origin=tuple(float(v) for v in first.ImagePositionPatient),
                        direction=tuple(axes.ravel()))
    kvp = float(first.KVP) if modality == "CT" and first.get("KVP") not in (None, "") else None
    return SeriesVolume(modality=modality, array=array, geometry=geometry, positions_mm=positions,
                        irregular=irregular, files=files, units=str(first.get("Units", "")), kvp=kvp,
                        manufacturer=str(first.get("Manufacturer", "")), suv=suv)

"""Pair a target series (PET) with a source series (CT, MR, low-dose PET) slice by slice, in world space.

A pair is one target slice position. The source is resampled in world coordinates onto that slice's own
grid (the autoPET "CTres" convention), outside the source's field filled with ``fill`` (air for CT);
target slices whose centre lies outside the source's slice coverage are dropped. Both then go to the
output size in-plane (bilinear, area-preserving for downsampling), and the pixel spacing is updated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from petsynth.data.dicom_series import SeriesVolume
from petsynth.data.geometry import Geometry, resample


@dataclass
class PairedSlices:
    """Paired slices of one study, in slice order.

    Attributes:
        source, target: (n, size, size) float32 in physical units (``target`` may be a view of the target
            series' array: copy before changing it in place).
        target_index: (n,) index of each pair's slice in the target series.
        z_mm: (n,) position of each slice along the target's slice normal, mm.
        spacing_mm: (row, column) pixel spacing after resizing, mm.
        coverage: (n,) fraction of each (cropped) target slice's area inside the source's in-plane field
            (:func:`inplane_coverage`); outside it the source is ``fill``.
    """

    source: np.ndarray
    target: np.ndarray
    target_index: np.ndarray
    z_mm: np.ndarray
    spacing_mm: tuple[float, float]
    coverage: np.ndarray


def slice_geometry(series: SeriesVolume, k: int) -> Geometry:
    """The one-slice grid of slice ``k`` of a series (its exact position, even when steps are irregular)."""
    g = series.geometry
    normal = g.direction_matrix[:, 2]
    origin = np.asarray(g.origin) + (series.positions_mm[k] - series.positions_mm[0]) * normal
    return Geometry(shape=(1, *g.shape[1:]), spacing=g.spacing, origin=tuple(origin), direction=g.direction)


def _slice_centres(series: SeriesVolume) -> np.ndarray:
    """(nz, 3) world centres of every slice, as ``slice_geometry(series, k).center()`` computes them."""
    g = series.geometry
    nz, ny, nx = g.shape
    normal = g.direction_matrix[:, 2]
    origins = np.asarray(g.origin) + (series.positions_mm[:, None] - series.positions_mm[0]) * normal[None, :]
    a = Geometry(shape=(1, ny, nx), spacing=g.spacing, origin=g.origin, direction=g.direction).affine
    offset = np.array([(nx - 1) / 2, (ny - 1) / 2, 0.0]) @ a[:3, :3].T
    return offset + origins


def covered(source: SeriesVolume, points_mm: np.ndarray) -> np.ndarray:
    """Whether each world point (N, 3) lies within the source's slice coverage (half a step beyond the ends)."""
    normal = source.geometry.direction_matrix[:, 2]
    along = points_mm @ normal
    first = float(np.dot(source.geometry.origin, normal))
    lo = first - 0.5 * source.geometry.spacing[0]
    hi = first + (source.positions_mm[-1] - source.positions_mm[0]) + 0.5 * source.geometry.spacing[0]
    return (along >= lo) & (along <= hi)


#: Points per side of the lattice on which :func:`inplane_coverage` measures a slice's area.
COVERAGE_SAMPLES = 64


def inplane_coverage(target: SeriesVolume, source: SeriesVolume, index: np.ndarray,
                     samples: int = COVERAGE_SAMPLES) -> np.ndarray:
    """(len(index),) fraction of the area of each target slice ``index`` that lies inside the source's
    in-plane field of view (its rows and columns, half a pixel beyond the outer centres), measured on a
    ``samples`` x ``samples`` lattice of points spread over the slice. Slice coverage along the normal is
    :func:`covered`'s business. A CT reconstructed on a small field (a limb, a cropped series) covers little
    of a whole-body PET slice: the rest of its pairs is air."""
    index = np.asarray(index, dtype=np.int64)
    g = target.geometry
    _, ny, nx = g.shape
    frac = (np.arange(samples) + 0.5) / samples
    jj, ii = np.meshgrid(frac * ny - 0.5, frac * nx - 0.5, indexing="ij")
    a = g.affine
    inplane = np.stack([ii.ravel(), jj.ravel()], axis=1) @ a[:3, :2].T  # (s*s, 3) offsets from a slice origin
    normal = g.direction_matrix[:, 2]
    origins = np.asarray(g.origin) + (target.positions_mm[index, None] - target.positions_mm[0]) * normal[None, :]
    out = np.empty(index.size, dtype=np.float64)
    sy, sx = source.geometry.shape[1:]
    for n, origin in enumerate(origins):
        ijk = source.geometry.world_to_index(inplane + origin)
        inside = (ijk[:, 0] > -0.5) & (ijk[:, 0] < sx - 0.5) & (ijk[:, 1] > -0.5) & (ijk[:, 1] < sy - 0.5)
        out[n] = inside.mean()
    return out


def resize_inplane(stack: np.ndarray, size: int, mode: str = "bilinear") -> np.ndarray:
    """(n, ny, nx) -> (n, size, size): bilinear when enlarging, antialiased when shrinking; or
    ``mode="nearest"`` (labels)."""
    if stack.shape[1:] == (size, size):
        return stack.astype(np.float32, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    if mode == "nearest":
        out = F.interpolate(t, size=(size, size), mode="nearest-exact")
    else:
        shrinking = size < max(stack.shape[1:])
        out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)
    return out[:, 0].numpy()


def centre_square(series: SeriesVolume) -> SeriesVolume:
    """A series whose in-plane grid is not square, cropped to its centred square (side: the shorter one);
    the geometry follows (origin moved along the row and column directions). Square series as they are."""
    nz, ny, nx = series.array.shape
    if ny == nx:
        return series
    n = min(ny, nx)
    y0, x0 = (ny - n) // 2, (nx - n) // 2
    g = series.geometry
    origin = g.index_to_world(np.array([x0, y0, 0.0]))
    geometry = Geometry(shape=(nz, n, n), spacing=g.spacing, origin=tuple(float(v) for v in origin),
                        direction=g.direction)
    return dataclasses.replace(series, array=series.array[:, y0:y0 + n, x0:x0 + n], geometry=geometry)


def _as_run(index: np.ndarray) -> slice | np.ndarray:
    """A run of consecutive indices (the usual case) as a slice, so that taking it gives a view, not a copy."""
    if index.size and index[-1] - index[0] + 1 == index.size:
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def resample_onto(target: SeriesVolume, source: SeriesVolume, index: np.ndarray, *, fill: float,
                  size: int | None = None, mode: str = "bilinear") -> np.ndarray:
    """``source`` resampled in world space onto the ``target`` slices ``index`` (ascending), then resized to
    ``size`` (a non-square target cropped first, as :func:`pair_slices` does): (len(index), size, size)
    float32, ``fill`` outside the source's field. The one resampling step of every array of a pair."""
    if source.irregular:
        raise ValueError("the source series has irregular slice steps; resampling it needs a regular grid")
    if size is not None:
        target = centre_square(target)
    index = np.asarray(index, dtype=np.int64)
    if not target.irregular:  # one pass over the source for all slices
        src = resample(source.array, source.geometry, target.geometry, fill=fill, mode=mode)[_as_run(index)]
    elif index.size:  # exact per-slice grids (e.g. bed joins)
        src = np.stack([resample(source.array, source.geometry, slice_geometry(target, int(k)),
                                 fill=fill, mode=mode)[0] for k in index])
    else:
        src = np.zeros((0, *target.array.shape[1:]), np.float32)
    if size is not None:
        src = resize_inplane(src, size, mode=mode)
    return src.astype(np.float32, copy=False)


def pair_slices(target: SeriesVolume, source: SeriesVolume, *, fill: float, size: int | None = None,
                mode: str = "bilinear") -> PairedSlices:
    """Resample ``source`` onto every ``target`` slice it covers and resize both to ``size`` (default: keep).
    Further arrays of the same pairs (guidance, truth) follow with :func:`resample_onto` on ``target_index``.

    Args:
        target: the series whose slice positions define the pairs (PET).
        source: the series resampled onto them (CT in HU, MR, low-dose PET).
        fill: value outside the source's field (-1000 HU for CT, 0 for PET/MR).
        size: output side in pixels; a target grid that is not square is first cropped to its centred
            square (:func:`centre_square`: every value kept is measured, none is padded in).
        mode: "bilinear", or "nearest" for label sources.
    """
    if size is not None:
        target = centre_square(target)
    keep_idx = np.nonzero(covered(source, _slice_centres(target)))[0].astype(np.int64)
    src = resample_onto(target, source, keep_idx, fill=fill, size=size, mode=mode)
    tgt = target.array[_as_run(keep_idx)]
    dy, dx = target.geometry.spacing[1:]
    if size is not None:
        ny, nx = target.array.shape[1:]
        tgt = resize_inplane(tgt, size)
        dy, dx = dy * ny / size, dx * nx / size
    return PairedSlices(source=src, target=tgt.astype(np.float32, copy=False), target_index=keep_idx,
                        z_mm=target.positions_mm[keep_idx], spacing_mm=(dy, dx),
                        coverage=inplane_coverage(target, source, keep_idx))

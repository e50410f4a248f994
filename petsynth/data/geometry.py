"""Voxel grids in DICOM patient coordinates (LPS, millimetres), and world-space resampling.

Shared by the phantom simulator, dataset preparation and the writers.

Conventions used throughout petsynth:

- A volume is a numpy array indexed ``[k, j, i]`` = (slice, row, column), shape ``(nz, ny, nx)``.
- Its 4x4 ``affine`` maps the voxel index vector ``(i, j, k, 1)`` (column, row, slice) to LPS millimetres:
  +x towards the patient's left, +y posterior, +z superior (head). This is exactly what DICOM encodes:
  ImageOrientationPatient = the unit directions of ``i`` (along a row) and ``j`` (down a column),
  PixelSpacing = (row spacing = |j step|, column spacing = |i step|), ImagePositionPatient of slice k =
  ``affine @ (0, 0, k, 1)``.
- NIfTI stores RAS; :mod:`petsynth.io.nifti` converts explicitly (x and y change sign).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Geometry:
    """A regular voxel grid.

    Attributes:
        shape: (nz, ny, nx).
        spacing: (dz, dy, dx) in mm, all positive (the slice spacing along ``direction[:, 2]``).
        origin: LPS position in mm (x, y, z) of the centre of voxel [0, 0, 0].
        direction: 3x3, row-major flattened; its columns are the LPS unit vectors of the i, j, k axes.
            The identity is an axial grid with k increasing towards the head.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = field(default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))

    def __post_init__(self):
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be three positive sizes, got {self.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be three positive lengths, got {self.spacing}")
        d = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-6):
            raise ValueError("direction must be orthonormal")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(s) for s in self.origin))
        object.__setattr__(self, "direction", tuple(float(v) for v in d.ravel()))

    @classmethod
    def axial(cls, size: tuple[int, int], pixel_mm: tuple[float, float], z_positions_mm,
              center_xy_mm: tuple[float, float] = (0.0, 0.0)) -> "Geometry":
        """Axial grid of ``size`` = (ny, nx) pixels of ``pixel_mm`` = (dy, dx), centred on ``center_xy_mm``,
        with slices at the (evenly spaced, ascending) ``z_positions_mm``."""
        z = np.asarray(z_positions_mm, dtype=np.float64)
        if z.ndim != 1 or z.size < 1:
            raise ValueError("z_positions_mm must be a non-empty 1-D sequence")
        dz = float(z[1] - z[0]) if z.size > 1 else 1.0
        if z.size > 1 and (dz <= 0 or not np.allclose(np.diff(z), dz, atol=1e-6 * max(1.0, abs(dz)))):
            raise ValueError("z positions must be ascending and evenly spaced")
        ny, nx = size
        dy, dx = pixel_mm
        ox = center_xy_mm[0] - (nx - 1) / 2 * dx
        oy = center_xy_mm[1] - (ny - 1) / 2 * dy
        return cls((z.size, ny, nx), (dz, dy, dx), (ox, oy, float(z[0])))

    # --- derived quantities ---------------------------------------------------------------------------
    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def affine(self) -> np.ndarray:
        """4x4 map from (i, j, k, 1) to LPS mm."""
        a = np.eye(4)
        dz, dy, dx = self.spacing
        a[:3, :3] = self.direction_matrix * np.array([dx, dy, dz])[None, :]
        a[:3, 3] = self.origin
        return a

    @property
    def is_axis_aligned(self) -> bool:
        return bool(np.allclose(self.direction_matrix, np.eye(3)))

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (x of each column, y of each row, z of each slice) for an identity direction."""
        if not self.is_axis_aligned:
            raise ValueError("axes() needs an axis-aligned grid (identity direction)")
        nz, ny, nx = self.shape
        dz, dy, dx = self.spacing
        ox, oy, oz = self.origin
        return ox + dx * np.arange(nx), oy + dy * np.arange(ny), oz + dz * np.arange(nz)

    def z_positions(self) -> np.ndarray:
        """LPS z of each slice centre (k order)."""
        pts = self.affine @ np.stack([np.zeros(self.shape[0]), np.zeros(self.shape[0]),
                                      np.arange(self.shape[0]), np.ones(self.shape[0])])
        return pts[2]

    def world_to_index(self, points_mm: np.ndarray) -> np.ndarray:
        """(..., 3) LPS points -> (..., 3) continuous (i, j, k) indices."""
        inv = np.linalg.inv(self.affine)
        p = np.asarray(points_mm, dtype=np.float64)
        return p @ inv[:3, :3].T + inv[:3, 3]

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        a = self.affine
        q = np.asarray(ijk, dtype=np.float64)
        return q @ a[:3, :3].T + a[:3, 3]

    def center(self) -> np.ndarray:
        nz, ny, nx = self.shape
        return self.index_to_world(np.array([(nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2]))

    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def refined(self, factors: tuple[int, int, int]) -> "Geometry":
        """The same field of view with each voxel split into fz x fy x fx sub-voxels."""
        fz, fy, fx = (int(f) for f in factors)
        nz, ny, nx = self.shape
        dz, dy, dx = self.spacing
        d = self.direction_matrix
        # voxel [0,0,0] of the fine grid sits at -(f-1)/(2f) coarse voxels from the coarse centre
        shift = np.array([-(fx - 1) / (2 * fx), -(fy - 1) / (2 * fy), -(fz - 1) / (2 * fz)])
        origin = self.index_to_world(shift)
        return Geometry((nz * fz, ny * fy, nx * fx), (dz / fz, dy / fy, dx / fx), tuple(origin),
                        tuple(d.ravel()))

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "spacing_mm": list(self.spacing), "origin_mm": list(self.origin),
                "direction": list(self.direction), "affine_lps": self.affine.round(6).tolist()}

    @classmethod
    def from_affine(cls, shape: tuple[int, int, int], affine_lps: np.ndarray) -> "Geometry":
        """Grid of ``shape`` (nz, ny, nx) whose 4x4 LPS affine maps (i, j, k, 1) to mm (as read from NIfTI)."""
        a = np.asarray(affine_lps, dtype=np.float64)
        cols = a[:3, :3]
        steps = np.linalg.norm(cols, axis=0)  # |i|, |j|, |k| steps
        if (steps <= 0).any():
            raise ValueError("affine has a zero-length axis")
        return cls(tuple(shape), (steps[2], steps[1], steps[0]), tuple(a[:3, 3]), tuple((cols / steps).ravel()))

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(d["shape"]), tuple(d["spacing_mm"]), tuple(d["origin_mm"]), tuple(d["direction"]))


def block_mean(volume: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Average non-overlapping fz x fy x fx blocks (the inverse of :meth:`Geometry.refined`)."""
    fz, fy, fx = factors
    nz, ny, nx = volume.shape
    if nz % fz or ny % fy or nx % fx:
        raise ValueError(f"shape {volume.shape} is not divisible by {factors}")
    v = np.asarray(volume, dtype=np.float32)
    if fx > 1:
        v = v.reshape(nz, ny, nx // fx, fx).sum(axis=3, dtype=np.float32)
    if fy > 1:
        v = v.reshape(nz, ny // fy, fy, -1).sum(axis=2, dtype=np.float32)
    if fz > 1:
        v = v.reshape(nz // fz, fz, *v.shape[1:]).sum(axis=1, dtype=np.float32)
    return (v / np.float32(fz * fy * fx)).astype(np.float32, copy=False)


def ball_mm(spacing: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """Ellipsoidal structuring element (bool) of ``radius_mm`` on a grid of ``spacing`` (dz, dy, dx): the voxels
    whose centres lie within ``radius_mm`` of the central one, for morphology in millimetres."""
    r = [max(0, int(np.floor(radius_mm / s + 1e-9))) for s in spacing]
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    return (zz * spacing[0]) ** 2 + (yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2 <= radius_mm ** 2 + 1e-9


def gaussian_blur(volume: np.ndarray, fwhm_mm: float | tuple[float, float, float],
                  spacing: tuple[float, float, float]) -> np.ndarray:
    """Separable Gaussian blur of a (nz, ny, nx) float volume; FWHM in mm per axis (z, y, x); zero padding
    is avoided by reflecting at the borders. Returns float32."""
    from scipy.ndimage import gaussian_filter

    f = (fwhm_mm,) * 3 if np.isscalar(fwhm_mm) else tuple(fwhm_mm)
    sigma = [fw / (2 * math.sqrt(2 * math.log(2))) / sp if fw > 0 else 0.0 for fw, sp in zip(f, spacing)]
    return gaussian_filter(np.asarray(volume, dtype=np.float32), sigma=sigma, mode="nearest",
                           truncate=3.0).astype(np.float32)


def resample(volume: np.ndarray, src: Geometry, dst: Geometry, *, mode: str = "bilinear",
             fill: float = 0.0, chunk_slices: int = 32) -> np.ndarray:
    """Sample ``volume`` (on ``src``) at the voxel centres of ``dst``, in world coordinates.

    ``volume``: (nz, ny, nx) array, or a lazy reader of its slices (``shape``, ``volume[k]``, ``np.asarray``;
    parallel axis-aligned grids read it slice by slice, other cases read it whole).
    ``mode``: "bilinear" (trilinear) or "nearest" (labels). Points outside ``src`` get ``fill``.
    Works for any pair of orientations; done in slabs of ``chunk_slices`` destination slices.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if src.shape == dst.shape and np.allclose(src.affine, dst.affine, rtol=0, atol=1e-6):
        return np.array(volume, dtype=np.float32)  # the same grid: sampling at the voxel centres is a copy
    if (src.is_axis_aligned and dst.is_axis_aligned and src.shape[0] == dst.shape[0]
            and np.allclose(src.z_positions(), dst.z_positions(), atol=1e-4)):
        return _resample_inplane(volume, src, dst, mode=mode, fill=fill)
    return resample_affine(volume, src.affine, dst, mode=mode, fill=fill, chunk_slices=chunk_slices)


def resample_affine(volume: np.ndarray, src_affine: np.ndarray, dst: Geometry, *, mode: str = "bilinear",
                    fill: float = 0.0, chunk_slices: int = 32) -> np.ndarray:
    """:func:`resample` from a source grid given by any invertible 4x4 ``src_affine`` ((i, j, k, 1) -> LPS mm),
    such as the sheared stack of a gantry-tilted CT, whose axes are not orthogonal."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    src_affine = np.asarray(src_affine, dtype=np.float64)
    nz, ny, nx = dst.shape
    sz, sy, sx = volume.shape
    # dst index (i, j, k, 1) -> src index (x, y, z) -> grid_sample's normalised coordinates (align_corners=True:
    # -1 at index 0, +1 at index n-1), folded into one affine so each slab is a single float32 matmul
    to_norm = np.diag([2.0 / max(sx - 1, 1), 2.0 / max(sy - 1, 1), 2.0 / max(sz - 1, 1), 1.0])
    to_norm[:3, 3] = -1.0
    m = to_norm @ np.linalg.inv(src_affine) @ dst.affine
    # a source axis of one voxel: inside within half a voxel of its centre, else outside (2 is off the grid)
    single = [n == 1 for n in (sx, sy, sz)]
    if not any(single) and not (m[:3, :3] - np.diag(np.diag(m[:3, :3]))).any():
        return _resample_separable(volume, m, volume.shape, dst.shape, mode=mode, fill=fill)
    src_t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    m_index = np.linalg.inv(src_affine) @ dst.affine
    ij = torch.stack(torch.meshgrid(torch.arange(ny, dtype=torch.float64), torch.arange(nx, dtype=torch.float64),
                                    indexing="ij")[::-1], dim=-1)  # (ny, nx, 2): (i, j)
    base = (ij @ torch.from_numpy(m[:3, :2].T) + torch.from_numpy(m[:3, 3])).float()  # (ny, nx, 3)
    base_index = (ij @ torch.from_numpy(m_index[:3, :2].T) + torch.from_numpy(m_index[:3, 3])).float() \
        if any(single) else None
    out = np.empty(dst.shape, dtype=np.float32)
    shifted = src_t - fill if fill != 0 else src_t  # once, not per slab: outside the source reads as fill
    step = torch.from_numpy(m[:3, 2]).float()
    for k0 in range(0, nz, chunk_slices):
        k1 = min(nz, k0 + chunk_slices)
        kk = torch.arange(k0, k1, dtype=torch.float32)[:, None, None, None]
        grid = base[None] + kk * step  # (k, ny, nx, 3)
        if base_index is not None:
            index = base_index[None] + kk * torch.from_numpy(m_index[:3, 2]).float()
            for axis, is_single in enumerate(single):
                if is_single:
                    grid[..., axis] = torch.where(index[..., axis].abs() <= 0.5, 0.0, 2.0)
        vals = F.grid_sample(shifted, grid[None], mode=mode, padding_mode="zeros", align_corners=True)
        if fill != 0:
            vals += fill
        out[k0:k1] = vals[0, 0].numpy()
    return out


def _resample_inplane(volume: np.ndarray, src: Geometry, dst: Geometry, *, mode: str, fill: float,
                      chunk_slices: int = 64) -> np.ndarray:
    """:func:`resample` when both grids are axial with the same slices: 2-D sampling per slice."""
    xs, ys, _ = dst.axes()
    sx0, sy0, _ = src.origin
    _, sdy, sdx = src.spacing
    _, sny, snx = src.shape
    ii = (xs - sx0) / sdx  # continuous source column of each destination column
    jj = (ys - sy0) / sdy
    gx = torch.from_numpy((2 * ii / max(snx - 1, 1) - 1).astype(np.float32))
    gy = torch.from_numpy((2 * jj / max(sny - 1, 1) - 1).astype(np.float32))
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)[None]  # (1, ny, nx, 2)
    out = np.empty(dst.shape, dtype=np.float32)
    nz = dst.shape[0]
    for k0 in range(0, nz, chunk_slices):
        k1 = min(nz, k0 + chunk_slices)
        src_t = torch.from_numpy(np.ascontiguousarray(volume[k0:k1], dtype=np.float32))[:, None]
        if fill != 0:  # (subtracting and adding 0 would only copy)
            src_t = src_t - fill
        vals = F.grid_sample(src_t, grid.expand(k1 - k0, -1, -1, -1), mode=mode, padding_mode="zeros",
                             align_corners=True)
        if fill != 0:
            vals += fill
        out[k0:k1] = vals[:, 0].numpy()
    return out


def _axis_taps(norm: np.ndarray, size: int, mode: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The source indices and weights along one axis of grid_sample (align_corners=True, zero padding) at the
    float32 normalised coordinates ``norm``, computed as its CPU kernel does: one (index, weight) pair per
    tap, weight 0 (index clipped) where the tap falls off the grid."""
    norm = np.asarray(norm, dtype=np.float32)
    pos = ((norm + np.float32(1)) / np.float32(2)) * np.float32(size - 1)
    if mode == "nearest":
        taps = [(np.rint(pos).astype(np.int64), np.ones_like(pos))]
    else:
        lo = np.floor(pos)
        taps = [(lo.astype(np.int64), (lo + np.float32(1)) - pos), (lo.astype(np.int64) + 1, pos - lo)]
    out = []
    for index, weight in taps:
        inside = (index >= 0) & (index < size)
        out.append((np.clip(index, 0, size - 1), np.where(inside, weight, np.float32(0)).astype(np.float32)))
    return out


def _support(taps: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, int]:
    """The range of destination positions where some tap has a weight (elsewhere the result is 0)."""
    hit = np.nonzero(np.any([w != 0 for _, w in taps], axis=0))[0]
    return (int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, 0)


def _resample_separable(volume, m: np.ndarray, src_shape: tuple[int, int, int],
                        dst_shape: tuple[int, int, int], *, mode: str, fill: float) -> np.ndarray:
    """:func:`resample` when each destination axis maps onto one source axis (``m`` diagonal: axis-aligned,
    parallel grids): the same trilinear (or nearest) sampling as ``grid_sample`` from the same float32
    coordinates, done axis by axis: each source slice that is used is resampled in-plane (rows, then
    columns) when the first destination slice needs it and dropped after the last, so only a couple of
    source slices are held at once (``volume`` may be any sequence of (ny, nx) slices, e.g. a lazy reader).

    Off the source the taps weigh 0 (``grid_sample``'s zero padding of ``volume - fill``); ``fill`` comes back
    as ``fill * (1 - total weight)``, so the volume itself is never shifted (nor copied)."""
    sz, sy, sx = src_shape
    nz, ny, nx = dst_shape
    # normalised coordinates as the 3-D path builds its grid (float64 affine rounded to float32, then k steps
    # added in float32)
    gx = (np.arange(nx, dtype=np.float64) * m[0, 0] + m[0, 3]).astype(np.float32)
    gy = (np.arange(ny, dtype=np.float64) * m[1, 1] + m[1, 3]).astype(np.float32)
    gz = np.float32(m[2, 3]) + np.arange(nz, dtype=np.float32) * np.float32(m[2, 2])
    tx, ty, tz = _axis_taps(gx, sx, mode), _axis_taps(gy, sy, mode), _axis_taps(gz, sz, mode)
    # only the destination rows and columns that see the source (the rest stay 0, i.e. fill)
    y0, y1 = _support(ty)
    x0, x1 = _support(tx)
    # total weight in-plane: < 1 where taps fall off the source
    fill_weight = np.float32(fill) * sum(w for _, w in ty)[:, None] * sum(w for _, w in tx)[None, :]
    ty = [(i[y0:y1], w[y0:y1, None]) for i, w in ty]
    tx = [(i[x0:x1], w[x0:x1]) for i, w in tx]
    # every temporary is allocated once and reused: fresh memory costs page faults, the main cost here
    read_into = getattr(volume, "read_into", None)  # a lazy reader fills a buffer; an array gives views
    source = np.empty((sy, sx), dtype=np.float32) if read_into is not None else None
    rows, rows_part = (np.empty((y1 - y0, sx), dtype=np.float32) for _ in range(2))
    cols_part = np.empty((y1 - y0, x1 - x0), dtype=np.float32)
    scratch = np.empty((ny, nx), dtype=np.float32)
    planes: dict[int, np.ndarray] = {}  # source slice -> resampled in-plane, while destination slices need it
    spare: list[np.ndarray] = []  # planes no longer needed, reused

    def plane(j: int) -> np.ndarray:
        if j not in planes:
            p = spare.pop() if spare else np.empty((ny, nx), dtype=np.float32)
            p.fill(0)
            if y1 > y0 and x1 > x0:
                src = read_into(j, source) if read_into is not None else np.asarray(volume[j], dtype=np.float32)
                _weighted_taps(src, ty, 0, rows, rows_part)
                _weighted_taps(rows, tx, 1, p[y0:y1, x0:x1], cols_part)
            planes[j] = p
        return planes[j]

    out = np.empty(dst_shape, dtype=np.float32)
    for k in range(nz):
        taps = [(int(i[k]), w[k]) for i, w in tz if w[k] != 0]
        if not taps:
            out[k] = 0
        else:
            (j, w), *rest = taps
            np.multiply(plane(j), w, out=out[k])
            for j, w in rest:
                out[k] += np.multiply(plane(j), w, out=scratch)
        needed = {j for j, _ in taps}
        for j in [j for j in planes if j not in needed]:  # monotonic in k: not needed again
            spare.append(planes.pop(j))
        if fill != 0:  # + fill * (1 - total weight)
            out[k] += np.float32(fill)
            if taps:
                out[k] -= np.multiply(fill_weight, sum(w for _, w in taps), out=scratch)
    return out


def _weighted_taps(array: np.ndarray, taps: list[tuple[np.ndarray, np.ndarray]], axis: int,
                   out: np.ndarray, part: np.ndarray) -> np.ndarray:
    """``out = sum_t take(array, index_t, axis) * weight_t`` (weights broadcast against ``out``), with ``part``
    a buffer of ``out``'s shape."""
    (i, w), *rest = taps
    np.take(array, i, axis=axis, out=out)
    out *= w
    for i, w in rest:
        np.take(array, i, axis=axis, out=part)
        part *= w
        out += part
    return out

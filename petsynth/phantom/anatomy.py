"""Analytic shapes in patient coordinates (LPS, mm) and a painter that rasterises them into label volumes.

A phantom is an ordered list of :class:`Shape` objects, each carrying an integer label; painting them in
order onto a grid (later shapes overwrite earlier ones) gives the organ label volume from which CT, PET and
MR are all derived. Shapes are evaluated only inside their bounding boxes, slab by slab, so fine grids
(CT resolution) stay affordable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from petsynth.data.geometry import Geometry

Clip = tuple[tuple[float, float, float], float]  # plane: keep points p with dot(n, p) <= offset


def rotation(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix R = Rz(yaw) @ Ry(pitch) @ Rx(roll); its columns are the shape's local axes in LPS."""
    a, b, c = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


@dataclass
class Shape:
    """Base class: a labelled region of space. Subclasses implement ``bounds`` and ``contains``."""

    label: int
    clip: list[Clip] = field(default_factory=list, kw_only=True)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def mask(self, x, y, z) -> np.ndarray:
        m = self.contains(x, y, z)
        for n, off in self.clip:
            m &= (n[0] * x + n[1] * y + n[2] * z) <= off
        return m


@dataclass
class Ellipsoid(Shape):
    """Ellipsoid with semi-axes ``radii`` (mm) along the columns of ``rot`` (identity: x, y, z)."""

    center: Sequence[float]
    radii: Sequence[float]
    rot: np.ndarray | None = None

    def __post_init__(self):
        self.center = np.asarray(self.center, dtype=np.float64)
        self.radii = np.maximum(np.asarray(self.radii, dtype=np.float64), 1e-3)
        self.rot = np.eye(3) if self.rot is None else np.asarray(self.rot, dtype=np.float64)

    def bounds(self):
        half = np.sqrt(((self.rot * self.radii[None, :]) ** 2).sum(axis=1))
        return self.center - half, self.center + half

    def contains(self, x, y, z):
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        if np.allclose(self.rot, np.eye(3)):
            q = (dx / self.radii[0]) ** 2 + (dy / self.radii[1]) ** 2 + (dz / self.radii[2]) ** 2
            return q <= 1.0
        q = 0.0
        for a in range(3):
            u = self.rot[0, a] * dx + self.rot[1, a] * dy + self.rot[2, a] * dz
            q = q + (u / self.radii[a]) ** 2
        return q <= 1.0


@dataclass
class ZProfile(Shape):
    """A body-like solid: at each height z, the superellipse |x-cx|^p/ax^p + |y-cy|^p/ay^p <= 1 whose centre
    (cx, cy) and semi-axes (ax, ay) are interpolated linearly between knots ``zs`` (ascending)."""

    zs: Sequence[float]
    cx: Sequence[float]
    cy: Sequence[float]
    ax: Sequence[float]
    ay: Sequence[float]
    power: float = 2.0

    def __post_init__(self):
        self.zs = np.asarray(self.zs, dtype=np.float64)
        if np.any(np.diff(self.zs) <= 0):
            raise ValueError("ZProfile knots must be strictly ascending")
        self.cx, self.cy, self.ax, self.ay = (np.broadcast_to(np.asarray(v, dtype=np.float64), self.zs.shape).copy()
                                              for v in (self.cx, self.cy, self.ax, self.ay))

    def params(self, z: np.ndarray):
        z = np.asarray(z, dtype=np.float64)
        vals = [np.interp(z, self.zs, v) for v in (self.cx, self.cy, self.ax, self.ay)]
        inside_z = (z >= self.zs[0]) & (z <= self.zs[-1])
        return vals, inside_z

    def bounds(self):
        lo = np.array([np.min(self.cx - self.ax), np.min(self.cy - self.ay), self.zs[0]])
        hi = np.array([np.max(self.cx + self.ax), np.max(self.cy + self.ay), self.zs[-1]])
        return lo, hi

    def contains(self, x, y, z):
        (cx, cy, ax, ay), inside_z = self.params(z)
        ax = np.maximum(ax, 1e-6)
        ay = np.maximum(ay, 1e-6)
        ex = np.abs((x - cx) / ax)
        ey = np.abs((y - cy) / ay)
        if self.power == 2.0:
            q = ex * ex + ey * ey
        else:
            q = ex ** self.power + ey ** self.power
        return (q <= 1.0) & inside_z & (np.minimum(ax, ay) > 1e-3)


@dataclass
class Tube(Shape):
    """Union of capsules along a polyline ``points`` (n, 3) with radius interpolated between ``radii`` (n,)."""

    points: Sequence[Sequence[float]]
    radii: Sequence[float]

    def __post_init__(self):
        self.points = np.asarray(self.points, dtype=np.float64)
        self.radii = np.broadcast_to(np.asarray(self.radii, dtype=np.float64), (len(self.points),)).copy()

    def bounds(self):
        r = self.radii[:, None]
        return (self.points - r).min(axis=0), (self.points + r).max(axis=0)

    def contains(self, x, y, z):
        inside = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=bool)
        for a, b, ra, rb in zip(self.points[:-1], self.points[1:], self.radii[:-1], self.radii[1:]):
            lo = np.minimum(a, b) - max(ra, rb)
            hi = np.maximum(a, b) + max(ra, rb)
            # cheap rejection on the slab's extent
            if (np.max(x) < lo[0] or np.min(x) > hi[0] or np.max(y) < lo[1] or np.min(y) > hi[1]
                    or np.max(z) < lo[2] or np.min(z) > hi[2]):
                continue
            d = b - a
            L2 = float(d @ d) or 1e-12
            t = ((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / L2
            t = np.clip(t, 0.0, 1.0)
            px, py, pz = x - (a[0] + t * d[0]), y - (a[1] + t * d[1]), z - (a[2] + t * d[2])
            r = ra + t * (rb - ra)
            inside |= (px * px + py * py + pz * pz) <= r * r
        return inside


def _index_range(lo: float, hi: float, origin: float, step: float, n: int) -> tuple[int, int]:
    a = int(np.floor((lo - origin) / step)) - 1
    b = int(np.ceil((hi - origin) / step)) + 2
    return max(a, 0), min(b, n)


def paint(shapes: Sequence[Shape], geometry: Geometry, *, background: int = 0,
          dtype=np.uint8, chunk_slices: int = 8) -> np.ndarray:
    """Rasterise ``shapes`` in order (later ones win) at the voxel centres of an axis-aligned ``geometry``.

    Returns the label volume (nz, ny, nx) of ``dtype``.
    """
    if not geometry.is_axis_aligned:
        raise ValueError("paint() needs an axis-aligned geometry; paint on one and resample")
    xs, ys, zs = geometry.axes()
    nz, ny, nx = geometry.shape
    dz, dy, dx = geometry.spacing
    ox, oy, oz = geometry.origin
    out = np.full(geometry.shape, background, dtype=dtype)
    boxes = [s.bounds() for s in shapes]
    for k0 in range(0, nz, chunk_slices):
        k1 = min(nz, k0 + chunk_slices)
        zlo, zhi = zs[k0], zs[k1 - 1]
        slab = out[k0:k1]
        for shape, (lo, hi) in zip(shapes, boxes):
            if hi[2] < zlo or lo[2] > zhi:
                continue
            i0, i1 = _index_range(lo[0], hi[0], ox, dx, nx)
            j0, j1 = _index_range(lo[1], hi[1], oy, dy, ny)
            if i0 >= i1 or j0 >= j1:
                continue
            ka, kb = _index_range(lo[2], hi[2], zs[k0], dz, k1 - k0)
            if ka >= kb:
                continue
            x = xs[None, None, i0:i1]
            y = ys[None, j0:j1, None]
            z = zs[k0 + ka:k0 + kb, None, None]
            m = shape.mask(x, y, z)
            if m.any():
                slab[ka:kb, j0:j1, i0:i1][m] = shape.label
    return out

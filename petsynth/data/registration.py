"""Rigid registration of a PET to an MR (mutual information, SimpleITK), and resampling through the result.

Convention. A :class:`RigidTransform` maps a point of the FIXED image's world frame (LPS mm; here the MR's)
to the corresponding point of the MOVING image's frame (the PET's); this is the direction ITK and SimpleITK
use for a registration transform. The PET brought onto the MR grid is the PET sampled at ``T(x)`` for
each MR voxel centre ``x``: :func:`resample_through`.

Method (:func:`register_rigid`). Euler3D (3 rotations + 3 translations), initialised by the centres of
mass (image moments; of the brain masks when both are given), Mattes mutual information with random
sampling (seeded, so a run is reproducible for a given number of threads), regular step gradient descent
with physical shift scales, three resolution levels (shrink 4, 2, 1, capped so a shrunk voxel stays at
most ``max_level_voxel_mm``; Gaussian smoothing given in mm), linear interpolation. A brain mask of the
fixed image (dilated by ``mask_margin_mm``) restricts where the metric is sampled. The result is checked:
too large a rotation, too little mutual information, or (with both masks) a Dice of the fixed brain mask
and the moving image's own brain mask brought through the transform below ``min_mask_dice`` raise
:class:`RegistrationError`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from petsynth.data.geometry import Geometry, ball_mm, resample, resample_affine


class RegistrationError(ValueError):
    """Registration could not run, failed, or gave an implausible result; the message says which."""


@dataclass
class RigidTransform:
    """A 4x4 homogeneous map from the fixed image's world frame (LPS mm) to the moving image's.

    ``matrix @ (x, y, z, 1)`` is the moving-frame point corresponding to the fixed-frame point (x, y, z).
    """

    matrix: np.ndarray = field(default_factory=lambda: np.eye(4))

    def __post_init__(self):
        m = np.array(self.matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.isfinite(m).all():
            raise ValueError(f"matrix must be a finite 4x4 array, got shape {m.shape}")
        if not np.allclose(m[3], (0.0, 0.0, 0.0, 1.0)):
            raise ValueError("matrix must be homogeneous (last row 0, 0, 0, 1)")
        self.matrix = m

    @classmethod
    def identity(cls) -> "RigidTransform":
        return cls(np.eye(4))

    @classmethod
    def from_rotation(cls, axis, angle_deg: float, translation_mm=(0.0, 0.0, 0.0),
                      center_mm=(0.0, 0.0, 0.0)) -> "RigidTransform":
        """``x -> R (x - c) + c + t``: a rotation of ``angle_deg`` about ``axis`` through ``center_mm``,
        then a shift of ``translation_mm``."""
        a = np.asarray(axis, dtype=np.float64)
        a = a / np.linalg.norm(a)
        th = math.radians(angle_deg)
        k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
        return cls.about(np.eye(3) + math.sin(th) * k + (1 - math.cos(th)) * (k @ k), translation_mm, center_mm)

    @classmethod
    def about(cls, rotation, translation_mm=(0.0, 0.0, 0.0), center_mm=(0.0, 0.0, 0.0)) -> "RigidTransform":
        """``x -> R (x - c) + c + t`` for a 3x3 rotation matrix ``R`` about ``center_mm``, then ``translation_mm``."""
        r = np.asarray(rotation, dtype=np.float64)
        c = np.asarray(center_mm, dtype=np.float64)
        m = np.eye(4)
        m[:3, :3] = r
        m[:3, 3] = c - r @ c + np.asarray(translation_mm, dtype=np.float64)
        return cls(m)

    @property
    def rotation(self) -> np.ndarray:
        return self.matrix[:3, :3].copy()

    @property
    def rotation_deg(self) -> float:
        """The total rotation angle (degrees, 0..180) of the rotation part."""
        c = (np.trace(self.matrix[:3, :3]) - 1.0) / 2.0
        return float(math.degrees(math.acos(min(1.0, max(-1.0, c)))))

    @property
    def translation_mm(self) -> np.ndarray:
        """The translation column of the matrix: where the world origin (0, 0, 0) goes. For a rotation
        about a point away from the origin this includes the shift the rotation gives the origin; use
        :meth:`displacement_mm` for the motion of the anatomy itself."""
        return self.matrix[:3, 3].copy()

    def apply(self, points_mm) -> np.ndarray:
        """(..., 3) fixed-frame points -> (..., 3) moving-frame points."""
        p = np.asarray(points_mm, dtype=np.float64)
        return p @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def inverse(self) -> "RigidTransform":
        return RigidTransform(np.linalg.inv(self.matrix))

    def compose(self, first: "RigidTransform") -> "RigidTransform":
        """``self`` after ``first``: x -> self(first(x))."""
        return RigidTransform(self.matrix @ first.matrix)

    def displacement_mm(self, points_mm, other: "RigidTransform | None" = None) -> float:
        """Largest distance between where this transform and ``other`` (default: the identity) take the
        given points."""
        p = np.asarray(points_mm, dtype=np.float64).reshape(-1, 3)
        q = other.apply(p) if other is not None else p
        return float(np.linalg.norm(self.apply(p) - q, axis=1).max())

    def is_rigid(self, atol: float = 1e-6) -> bool:
        r = self.matrix[:3, :3]
        return bool(np.allclose(r.T @ r, np.eye(3), atol=atol) and np.linalg.det(r) > 0)

    def to_dict(self) -> dict:
        return {"matrix": self.matrix.tolist(), "rotation_deg": self.rotation_deg,
                "translation_mm": self.translation_mm.tolist(),
                "convention": "fixed (MR) world LPS mm -> moving (PET) world LPS mm"}

    @classmethod
    def from_dict(cls, d: dict) -> "RigidTransform":
        return cls(np.asarray(d["matrix"], dtype=np.float64))


@dataclass
class RegistrationResult:
    """The outcome of :func:`register_rigid`.

    ``metric``: the final Mattes mutual information as SimpleITK reports it (negative; lower is better).
    ``iterations``: optimizer iterations over all levels. ``mask_dice``: Dice of the fixed brain mask and the
    moving image's brain mask brought through the transform (None without both masks).
    """

    transform: RigidTransform
    metric: float
    iterations: int
    stop_condition: str
    mask_dice: float | None
    seconds: float
    levels: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"transform": self.transform.to_dict(), "metric_mattes_mi": self.metric,
                "iterations": self.iterations, "stop_condition": self.stop_condition,
                "mask_dice": self.mask_dice, "seconds": round(self.seconds, 3), "levels": self.levels}


# --- conversions -----------------------------------------------------------------------------------------
def to_sitk(volume: np.ndarray, geometry: Geometry, dtype=np.float32):
    """A SimpleITK image of a (nz, ny, nx) numpy volume on ``geometry`` (size (nx, ny, nz), LPS)."""
    import SimpleITK as sitk

    v = np.asarray(volume)
    if v.shape != geometry.shape:
        raise ValueError(f"volume shape {v.shape} does not match its geometry {geometry.shape}")
    img = sitk.GetImageFromArray(np.ascontiguousarray(v, dtype=dtype))
    dz, dy, dx = geometry.spacing
    img.SetSpacing((dx, dy, dz))
    img.SetOrigin(tuple(geometry.origin))
    img.SetDirection(tuple(geometry.direction))  # row-major; columns are the i, j, k directions, as in ITK
    return img


def _transform_matrix(tx) -> np.ndarray:
    """The 4x4 matrix of any affine SimpleITK transform (also composites), from the images of 4 points."""
    pts = np.array([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 100.0]])
    out = np.array([tx.TransformPoint(tuple(p)) for p in pts])
    m = np.eye(4)
    m[:3, 3] = out[0]
    m[:3, :3] = (out[1:] - out[0]).T / 100.0
    return m


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / s if s else 0.0


def _check_image(name: str, volume: np.ndarray, geometry: Geometry) -> np.ndarray:
    v = np.asarray(volume, dtype=np.float32)
    if v.shape != geometry.shape:
        raise RegistrationError(f"{name} image shape {v.shape} does not match its geometry {geometry.shape}")
    if v.size == 0 or not np.isfinite(v).all():
        raise RegistrationError(f"{name} image is empty or has non-finite values")
    lo, hi = float(v.min()), float(v.max())
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        raise RegistrationError(f"{name} image is constant ({lo:g}): nothing to register")
    return v


def _check_mask(name: str, mask, geometry: Geometry) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask, dtype=bool)
    if m.shape != geometry.shape:
        raise RegistrationError(f"{name} mask shape {m.shape} does not match its image {geometry.shape}")
    if not m.any():
        raise RegistrationError(f"{name} mask is empty")
    return m


def _dilate_mm(mask: np.ndarray, spacing, radius_mm: float) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, structure=ball_mm(spacing, radius_mm)) if radius_mm > 0 else mask


# --- registration ----------------------------------------------------------------------------------------
def register_rigid(fixed: np.ndarray, fixed_geometry: Geometry, moving: np.ndarray, moving_geometry: Geometry,
                   *, fixed_mask: np.ndarray | None = None, moving_mask: np.ndarray | None = None,
                   seed: int = 0, bins: int = 24, shrink_factors=(4, 2, 1), smoothing_mm=(4.0, 2.0, 1.0),
                   max_level_voxel_mm: float = 8.0, samples_per_level: int = 100000,
                   iterations: int = 200, learning_rate: float = 2.0, min_step: float = 1e-4,
                   mask_margin_mm: float = 8.0, max_rotation_deg: float = 30.0, min_mask_dice: float = 0.5,
                   min_mutual_information: float = 0.02, threads: int | None = None) -> RegistrationResult:
    """Rigidly register ``moving`` (a PET) to ``fixed`` (an MR): see the module docstring for the method.

    Args:
        fixed, fixed_geometry: the fixed image (nz, ny, nx) and its grid; usually the T1w MR.
        moving, moving_geometry: the moving image and its grid; usually the PET (SUV).
        fixed_mask: optional brain mask of ``fixed`` (bool, its shape); the metric is sampled within it,
            dilated by ``mask_margin_mm``. With ``moving_mask`` it also gives the Dice check.
        moving_mask: optional brain mask of ``moving`` (e.g. :func:`~petsynth.data.brain_mask.pet_brain_mask`).
        seed: seed of the metric's random sampling (the result is reproducible for a given seed and
            thread count).
        bins: Mattes histogram bins.
        shrink_factors, smoothing_mm: per resolution level; a shrink factor is capped so the shrunk fixed
            voxel is at most ``max_level_voxel_mm``; smoothing sigmas are in mm.
        samples_per_level: about this many random samples of the fixed image per level.
        iterations, learning_rate, min_step: regular step gradient descent (steps in mm via the physical
            shift scales).
        max_rotation_deg: a result rotating more than this raises :class:`RegistrationError`.
        min_mask_dice: with both masks, a Dice below this raises :class:`RegistrationError`.
        min_mutual_information: a final mutual information (-metric) below this raises
            :class:`RegistrationError` (the images share no structure).
        threads: SimpleITK threads for the registration (default: SimpleITK's global default).

    Returns a :class:`RegistrationResult` whose transform maps fixed-frame points to moving-frame points.
    """
    import SimpleITK as sitk

    t0 = time.perf_counter()
    fixed = _check_image("fixed", fixed, fixed_geometry)
    moving = _check_image("moving", moving, moving_geometry)
    fixed_mask = _check_mask("fixed", fixed_mask, fixed_geometry)
    moving_mask = _check_mask("moving", moving_mask, moving_geometry)
    if len(shrink_factors) != len(smoothing_mm) or not shrink_factors:
        raise ValueError("shrink_factors and smoothing_mm need one entry per level")

    f_img = to_sitk(fixed, fixed_geometry)
    m_img = to_sitk(moving, moving_geometry)
    # the moments initialiser: of the brain masks when both are given (the head's centre of mass moves
    # with the field of view and the scalp, the brain's does not), else of the images
    if fixed_mask is not None and moving_mask is not None:
        init_f, init_m = to_sitk(fixed_mask, fixed_geometry), to_sitk(moving_mask, moving_geometry)
    else:
        init_f, init_m = f_img, m_img
    try:
        initial = sitk.CenteredTransformInitializer(init_f, init_m, sitk.Euler3DTransform(),
                                                    sitk.CenteredTransformInitializerFilter.MOMENTS)
    except RuntimeError as e:
        raise RegistrationError(f"initialisation failed: {_first_line(e)}") from None

    min_sp = min(fixed_geometry.spacing)
    shrinks = [int(max(1, min(int(f), math.floor(max_level_voxel_mm / min_sp + 1e-9)))) for f in shrink_factors]
    sample_region = fixed_mask
    if fixed_mask is not None:
        sample_region = _dilate_mm(fixed_mask, fixed_geometry.spacing, mask_margin_mm)
    n_region = int(sample_region.sum()) if sample_region is not None else int(np.prod(fixed_geometry.shape))
    n_total = int(np.prod(fixed_geometry.shape))
    percentages = []
    for s in shrinks:
        n_level = n_total / s ** 3  # voxels of the shrunk image; samples land in the region with this share
        want = samples_per_level * n_total / max(n_region, 1)
        percentages.append(float(min(1.0, max(1e-4, want / n_level))))

    reg = sitk.ImageRegistrationMethod()
    if threads is not None:
        reg.SetNumberOfThreads(int(threads))
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(bins))
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentagePerLevel(percentages, int(seed) & 0x7FFFFFFF or 1)
    if sample_region is not None:
        reg.SetMetricFixedMask(to_sitk(sample_region, fixed_geometry, dtype=np.uint8))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=float(learning_rate), minStep=float(min_step),
                                                 numberOfIterations=int(iterations),
                                                 gradientMagnitudeTolerance=1e-8, relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([int(s) for s in shrinks])
    reg.SetSmoothingSigmasPerLevel([float(s) for s in smoothing_mm])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)

    levels: list[dict] = []
    state = {"iterations": 0, "level_start": 0}

    def on_iteration():
        state["iterations"] += 1

    def on_level():
        if levels:
            levels[-1]["iterations"] = state["iterations"] - state["level_start"]
        state["level_start"] = state["iterations"]
        k = len(levels)
        levels.append({"shrink": shrinks[k] if k < len(shrinks) else None,
                       "smoothing_mm": float(smoothing_mm[k]) if k < len(smoothing_mm) else None,
                       "sampling_percentage": percentages[k] if k < len(percentages) else None})

    reg.AddCommand(sitk.sitkIterationEvent, on_iteration)
    reg.AddCommand(sitk.sitkMultiResolutionIterationEvent, on_level)
    try:
        final = reg.Execute(f_img, m_img)
    except RuntimeError as e:
        raise RegistrationError(f"SimpleITK registration failed (do the images overlap?): {_first_line(e)}") \
            from None
    if levels:
        levels[-1]["iterations"] = state["iterations"] - state["level_start"]
    metric = float(reg.GetMetricValue())
    stop = str(reg.GetOptimizerStopConditionDescription())
    transform = RigidTransform(_transform_matrix(final))

    if not math.isfinite(metric) or -metric < min_mutual_information:
        raise RegistrationError(f"implausible registration: mutual information {-metric:.4f} is below "
                                f"{min_mutual_information} (do the images show the same anatomy?); stop: {stop}")
    if transform.rotation_deg > max_rotation_deg:
        raise RegistrationError(f"implausible registration: rotation {transform.rotation_deg:.1f} deg exceeds "
                                f"{max_rotation_deg} deg; stop: {stop}")
    dice = None
    if fixed_mask is not None and moving_mask is not None:
        brought = resample_through(moving_mask.astype(np.float32), moving_geometry, transform, fixed_geometry,
                                   mode="nearest") > 0.5
        dice = _dice(fixed_mask, brought)
        if dice < min_mask_dice:
            raise RegistrationError(f"implausible registration: Dice of the brain masks {dice:.3f} is below "
                                    f"{min_mask_dice}; stop: {stop}")
    return RegistrationResult(transform, metric, int(state["iterations"]), stop, dice,
                              time.perf_counter() - t0, levels)


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # ITK messages: "... itk::ERROR: ...: <the reason>" on one of the lines
    for ln in lines:
        if "ERROR" in ln:
            return ln
    return lines[0] if lines else type(e).__name__


# --- resampling ------------------------------------------------------------------------------------------
def resample_through(moving: np.ndarray, moving_geometry: Geometry, transform: RigidTransform | np.ndarray,
                     target_geometry: Geometry, *, fill: float = 0.0, mode: str = "bilinear") -> np.ndarray:
    """``moving`` (on ``moving_geometry``) sampled at ``transform(x)`` for each voxel centre ``x`` of
    ``target_geometry``; e.g. the PET on the MR grid with the transform from :func:`register_rigid`.

    Points off the moving grid get ``fill``; ``mode`` "nearest" for labels and masks. A rigid transform
    moves the moving grid onto the target frame as another regular grid (affine ``inv(T) @ moving.affine``),
    so this is :func:`~petsynth.data.geometry.resample` between two grids (with its fast paths, and exactly
    ``resample`` for the identity); any other affine matrix goes through ``resample_affine``.
    """
    t = transform if isinstance(transform, RigidTransform) else RigidTransform(np.asarray(transform))
    src_affine = np.linalg.inv(t.matrix) @ moving_geometry.affine
    if t.is_rigid():
        src = Geometry.from_affine(moving_geometry.shape, src_affine)
        if np.allclose(src.affine, src_affine, rtol=0, atol=1e-6):
            return resample(moving, src, target_geometry, mode=mode, fill=fill)
    return resample_affine(moving, src_affine, target_geometry, mode=mode, fill=fill)

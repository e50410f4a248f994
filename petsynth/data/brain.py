"""Brain PET/MR pairs (task mr2pet) as users have them: registration, brain mask, planes, PET units.

JDAM's data (seed ``jdam-mri-to-pet.txt``, section 3.1) are a T1w MR and an FDG PET from different visits: the PET
is registered rigidly to the MR, non-brain tissue is removed from both with the MR's brain mask, and slices of the
axial, coronal and sagittal planes are taken. ``prepare --task mr2pet`` does the same, per study:

1. **Registration** (``register="rigid"``, the default): when the MR and the PET come from different studies or
   frames of reference, or arrive as separate NIfTI files, the PET is registered rigidly to the MR by mutual
   information (:func:`petsynth.data.registration.register_rigid`); the transform and its quality (final metric,
   Dice of the MR's and the PET's brain masks) go into the study's metadata and the prepare report.
   ``register="none"`` trusts the headers (and refuses series in different frames of reference).
2. **The MR defines the space.** Every image of the pair is resampled onto one grid of the MR's frame: an LPS
   axis-aligned cube of ``size`` voxels over ``fov_mm`` (spacing ``fov_mm / size``), centred on the brain (the
   mask's bounding box) or on the MR's field when there is no mask. The PET goes there through the transform.
3. **Brain mask** (``brain_mask="auto"``: :func:`petsynth.data.brain_mask.auto_brain_mask`, no downloaded
   weights; ``"none"``; or a file name looked up in the study's folder, a mask on the MR's grid): both MR and PET
   are set to 0 outside it, as in the seed; the mask is stored with the pair (array ``mask``).
4. **Planes**: the cube's axial (rows anterior -> posterior, columns right -> left, as a viewer shows them),
   coronal and sagittal (rows superior -> inferior) slices, each pair recording its ``plane``, its slice
   ``index`` on that plane's axis of the cube and ``z_mm``, its position along the plane's normal (LPS z, y or
   x). By default every slice that holds brain (or, with no mask, the MR's field); ``slice_ranges`` picks
   ``index`` ranges per plane (the seed takes slices 30-60 of each plane of a 109 x 109 x 91 grid).
5. **PET units** (``pet_normalise``): ``"suv"`` needs SUV (DICOM headers, a NIfTI taken as SUV, or a BIDS
   sidecar with the injected activity and body weight); ``"global"`` divides the PET by its mean inside the brain
   mask (SUVR to the whole brain, dimensionless); ``"auto"`` is SUV where the inputs allow and global SUVR
   otherwise; ``"none"`` keeps the values as read. What was done is recorded (study metadata ``units`` and
   ``pet_normalisation``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from petsynth.data.dicom_series import SeriesVolume
from petsynth.data.geometry import Geometry, gaussian_blur, resample
from petsynth.data.store import UINT8_ARRAYS

PLANES = ("axial", "coronal", "sagittal")
REGISTER_MODES = ("rigid", "none")
PET_NORMALISATIONS = ("auto", "suv", "global", "none")
#: Side of the cube the pairs are cut from, mm: an adult brain (about 170 x 140 x 130 mm) with a margin; the seed's
#: MNI grid is 109 x 109 x 91 voxels of 2 mm (218 x 218 x 182 mm).
DEFAULT_FOV_MM = 220.0
#: A slice holds brain when at least this fraction of its pixels lies in the mask.
MIN_BRAIN_FRACTION = 0.01
#: Largest gap (days) between an MR and a PET of the same patient in different studies for them to be paired.
DEFAULT_MAX_GAP_DAYS = 365.0


class BrainPrepError(ValueError):
    """A brain study cannot be prepared (the message says why; the batch goes on)."""


@dataclass(frozen=True)
class BrainOptions:
    """How ``prepare --task mr2pet`` builds its pairs (see the module docstring).

    Attributes:
        register: "rigid" (register the PET to the MR where they do not share a frame) or "none".
        brain_mask: "auto", "none" or the name of a mask file in each study's folder (on the MR's grid).
        planes: some of :data:`PLANES`.
        slice_ranges: plane -> (first, last) slice index on the cube, inclusive; planes not named keep every slice
            that holds brain.
        fov_mm: side of the cube, mm (the pixel spacing is ``fov_mm / size``).
        pet_normalise: one of :data:`PET_NORMALISATIONS`.
        max_gap_days: largest time between an MR and a PET of one patient in different DICOM studies.
    """

    register: str = "rigid"
    brain_mask: str = "auto"
    planes: tuple[str, ...] = ("axial",)
    slice_ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    fov_mm: float = DEFAULT_FOV_MM
    pet_normalise: str = "auto"
    max_gap_days: float = DEFAULT_MAX_GAP_DAYS

    def __post_init__(self):
        if self.register not in REGISTER_MODES:
            raise ValueError(f"register must be one of {REGISTER_MODES}, got {self.register!r}")
        if not self.brain_mask:
            raise ValueError("brain_mask must be 'auto', 'none' or a file name")
        bad = [p for p in self.planes if p not in PLANES]
        if bad or not self.planes:
            raise ValueError(f"planes must be some of {', '.join(PLANES)}; got {', '.join(self.planes) or 'none'}")
        for plane, (lo, hi) in self.slice_ranges.items():
            if plane not in PLANES or not 0 <= lo <= hi:
                raise ValueError(f"bad slice range {plane}={lo}:{hi}: a plane of {PLANES} and 0 <= first <= last")
        if not self.fov_mm > 0:
            raise ValueError(f"fov_mm must be positive, got {self.fov_mm}")
        if self.pet_normalise not in PET_NORMALISATIONS:
            raise ValueError(f"pet_normalise must be one of {PET_NORMALISATIONS}, got {self.pet_normalise!r}")
        if not self.max_gap_days >= 0:
            raise ValueError(f"max_gap_days must be >= 0, got {self.max_gap_days}")

    def to_dict(self) -> dict[str, Any]:
        return {"register": self.register, "brain_mask": self.brain_mask, "planes": list(self.planes),
                "slice_ranges": {p: list(r) for p, r in self.slice_ranges.items()}, "fov_mm": self.fov_mm,
                "pet_normalise": self.pet_normalise, "max_gap_days": self.max_gap_days}


def parse_planes(text: str | Sequence[str]) -> tuple[str, ...]:
    """'axial,coronal' -> ("axial", "coronal"); ValueError for an unknown plane."""
    items = text.split(",") if isinstance(text, str) else list(text)
    planes = tuple(dict.fromkeys(p.strip().lower() for p in items if p.strip()))
    bad = [p for p in planes if p not in PLANES]
    if bad or not planes:
        raise ValueError(f"unknown plane {', '.join(bad) or '(none given)'}; choose from {', '.join(PLANES)}")
    return planes


def parse_slice_ranges(text: str | Sequence[str] | None) -> dict[str, tuple[int, int]]:
    """'axial=30:60,coronal=40:70' (or a list of such items) -> {"axial": (30, 60), ...}; indices inclusive."""
    if not text:
        return {}
    items = text.split(",") if isinstance(text, str) else [x for t in text for x in str(t).split(",")]
    out: dict[str, tuple[int, int]] = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        plane, _, rng = item.partition("=")
        lo, _, hi = rng.partition(":")
        try:
            value = (int(lo), int(hi))
        except ValueError:
            raise ValueError(f"cannot read slice range {item!r}: write PLANE=FIRST:LAST, e.g. axial=30:60") from None
        if plane.strip().lower() not in PLANES or value[0] < 0 or value[1] < value[0]:
            raise ValueError(f"bad slice range {item!r}: a plane of {', '.join(PLANES)} and 0 <= FIRST <= LAST")
        out[plane.strip().lower()] = value
    return out


# ---------------------------------------------------------------------------------------------------------------
# the cube and its planes

def brain_cube(center_mm: Sequence[float], size: int, fov_mm: float) -> Geometry:
    """An LPS axis-aligned cube of ``size``^3 voxels of ``fov_mm / size`` mm centred on ``center_mm``."""
    s = float(fov_mm) / int(size)
    origin = np.asarray(center_mm, dtype=np.float64) - s * (size - 1) / 2
    return Geometry(shape=(size, size, size), spacing=(s, s, s), origin=tuple(origin))


def mask_center_mm(mask: np.ndarray | None, geometry: Geometry) -> np.ndarray:
    """World centre (LPS mm) of the bounding box of a mask's voxels; of the whole grid without a mask or when
    it is empty."""
    idx = np.argwhere(mask) if mask is not None else np.empty((0, 3))
    if idx.size == 0:
        nz, ny, nx = geometry.shape
        return geometry.index_to_world(np.array([[(nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2]]))[0]
    corners = np.array([[i, j, k] for k in (idx[:, 0].min(), idx[:, 0].max())
                        for j in (idx[:, 1].min(), idx[:, 1].max()) for i in (idx[:, 2].min(), idx[:, 2].max())],
                       dtype=np.float64)
    world = geometry.index_to_world(corners)
    return (world.min(axis=0) + world.max(axis=0)) / 2


def plane_stack(volume: np.ndarray, plane: str) -> np.ndarray:
    """The cube's slices of one plane, (n, rows, columns), as a viewer shows them: axial (k; rows anterior ->
    posterior, columns right -> left), coronal (j; rows superior -> inferior, columns right -> left), sagittal
    (i; rows superior -> inferior, columns anterior -> posterior)."""
    if plane == "axial":
        return volume
    if plane == "coronal":
        return np.ascontiguousarray(volume[::-1].transpose(1, 0, 2))
    if plane == "sagittal":
        return np.ascontiguousarray(volume[::-1].transpose(2, 0, 1))
    raise ValueError(f"unknown plane {plane!r}; choose from {PLANES}")


def plane_positions_mm(cube: Geometry, plane: str) -> np.ndarray:
    """(n,) position of each slice of :func:`plane_stack` along the plane's normal: LPS z, y or x in mm."""
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    n = cube.shape[2 - axis]
    return cube.origin[axis] + cube.spacing[2 - axis] * np.arange(n)


def _onto_cube(volume: np.ndarray, geometry: Geometry, cube: Geometry, *, mode: str = "bilinear",
               fill: float = 0.0) -> np.ndarray:
    """``volume`` on the cube; blurred first where its voxels are much finer than the cube's (no aliasing)."""
    if mode == "bilinear":
        fine = max(geometry.spacing)
        if cube.spacing[0] > 1.5 * fine:
            fwhm = math.sqrt(cube.spacing[0] ** 2 - fine**2)
            volume = gaussian_blur(np.asarray(volume, dtype=np.float32), fwhm, geometry.spacing)
    return resample(volume, geometry, cube, mode=mode, fill=fill)


# ---------------------------------------------------------------------------------------------------------------
# one study

@dataclass
class BrainPairs:
    """The pairs of one brain study (arrays (n, size, size) and per-pair metadata) and what was done (study
    metadata, with the registration's record when one ran)."""

    arrays: dict[str, np.ndarray]
    slice_meta: dict[str, list]
    study_meta: dict[str, Any]


def _brain_mask(mr: np.ndarray, geometry: Geometry, how: str, mask_file: Path | None) -> np.ndarray | None:
    if how == "none":
        return None
    if how == "auto":
        from petsynth.data.brain_mask import auto_brain_mask

        mask = auto_brain_mask(mr, geometry)
    else:
        if mask_file is None or not mask_file.is_file():
            raise BrainPrepError(f"no brain mask file {how!r} in the study's folder (--brain-mask names a file "
                                 "found beside each study's images)")
        from petsynth.data.nifti_layouts import load_nifti_volume

        given = load_nifti_volume(mask_file, "MASK")
        mask = resample(given.array, given.geometry, geometry, mode="nearest") > 0.5
    if mask.sum() == 0:
        raise BrainPrepError("the brain mask is empty (auto: the MR does not look like a T1-weighted head; "
                             "give a mask file or --brain-mask none)")
    return mask


def build_brain_pairs(mr: SeriesVolume, pet: SeriesVolume, *, size: int, options: BrainOptions,
                      register: bool, pet_is_suv: bool, truth: Mapping[str, SeriesVolume] | None = None,
                      mask_file: Path | None = None, seed: int = 0) -> BrainPairs:
    """Register (when ``register``), mask and slice one MR/PET study; see the module docstring.

    ``pet_is_suv``: the PET's values are SUVbw (for ``pet_normalise`` "suv" / "auto"). ``truth``: phantom truth
    volumes ("truth": SUV, "labels") in the MR's frame, resampled like the PET (labels by nearest neighbour).
    """
    from petsynth.data.registration import RegistrationError, RigidTransform, register_rigid, resample_through

    mr_array = np.asarray(mr.array, dtype=np.float32)
    pet_array = np.asarray(pet.array, dtype=np.float32)
    mask_mr = _brain_mask(mr_array, mr.geometry, options.brain_mask, mask_file)
    transform, registration = RigidTransform.identity(), None  # registration: its record, when one ran
    if register:
        pet_mask = None
        if mask_mr is not None:
            from petsynth.data.brain_mask import pet_brain_mask

            pet_mask = pet_brain_mask(pet_array, pet.geometry)
        try:
            result = register_rigid(mr_array, mr.geometry, pet_array, pet.geometry, fixed_mask=mask_mr,
                                    moving_mask=pet_mask, seed=seed)
        except RegistrationError as err:
            raise BrainPrepError(f"registration of the PET to the MR failed: {err}") from None
        transform, registration = result.transform, result.to_dict()

    center = mask_center_mm(mask_mr, mr.geometry)
    cube = brain_cube(center, size, options.fov_mm)
    vols = {"source": _onto_cube(mr_array, mr.geometry, cube)}
    vols["target"] = resample_through(pet_array, pet.geometry, transform, cube)
    if mask_mr is not None:
        vols["mask"] = resample(mask_mr.astype(np.float32), mr.geometry, cube, mode="nearest") > 0.5
    for name, tvol in (truth or {}).items():
        mode = "nearest" if name == "labels" else "bilinear"
        vols[name] = resample(np.asarray(tvol.array, dtype=np.float32), tvol.geometry, cube, mode=mode)

    units, normalisation = _normalise(vols, options.pet_normalise, pet_is_suv, pet.units)
    if "mask" in vols:
        for name in ("source", "target", "truth"):
            if name in vols:
                vols[name] = np.where(vols["mask"], vols[name], 0.0).astype(np.float32)

    arrays: dict[str, list[np.ndarray]] = {}
    meta: dict[str, list] = {"index": [], "z_mm": [], "plane": []}
    for plane in options.planes:
        stacks = {name: plane_stack(v, plane) for name, v in vols.items()}
        chosen = _chosen_slices(stacks, plane, options.slice_ranges.get(plane))
        for name, stack in stacks.items():
            arrays.setdefault(name, []).append(stack[chosen])
        meta["index"] += [int(k) for k in chosen]
        meta["z_mm"] += [float(z) for z in plane_positions_mm(cube, plane)[chosen]]
        meta["plane"] += [plane] * len(chosen)
    if not meta["index"]:
        raise BrainPrepError("no slice of the requested planes and ranges holds brain")
    out = {name: np.concatenate(parts).astype(np.uint8 if name in UINT8_ARRAYS else np.float32)
           for name, parts in arrays.items()}
    study_meta = {"spacing_mm": [cube.spacing[1], cube.spacing[2]], "units": units,
                  "pet_normalisation": normalisation, "planes": list(options.planes),
                  "brain_mask": options.brain_mask if mask_mr is not None else "none",
                  "cube": {"size": size, "fov_mm": options.fov_mm, "center_mm": [round(float(c), 3) for c in center]}}
    if registration is not None:
        study_meta["registration"] = registration
    return BrainPairs(out, meta, study_meta)


def _chosen_slices(stacks: Mapping[str, np.ndarray], plane: str, rng: tuple[int, int] | None) -> np.ndarray:
    n = stacks["source"].shape[0]
    if rng is not None:
        lo, hi = rng
        if lo >= n:
            raise BrainPrepError(f"slice range {plane}={lo}:{hi} lies beyond the cube's {n} {plane} slices")
        return np.arange(lo, min(hi, n - 1) + 1)
    if "mask" in stacks:
        frac = stacks["mask"].reshape(n, -1).mean(axis=1)
        return np.nonzero(frac >= MIN_BRAIN_FRACTION)[0]
    inside = stacks["source"].reshape(n, -1).max(axis=1) > 0  # the MR's field (0 outside it)
    return np.nonzero(inside)[0]


def _normalise(vols: dict[str, np.ndarray], how: str, pet_is_suv: bool, pet_units: str) -> tuple[str, dict]:
    """Apply ``pet_normalise`` to the target (and truth) in place; returns (units, record)."""
    if how == "none":
        return (pet_units or "as read"), {"method": "none", "note": "PET values as read"}
    if how == "suv" or (how == "auto" and pet_is_suv):
        if not pet_is_suv:
            raise BrainPrepError("the PET is not in SUV and its headers do not allow converting it (no injected "
                                 "activity or body weight): use --pet-normalise global, or none")
        return "SUV", {"method": "suv", "note": "SUVbw from the PET's headers"}
    mask = vols.get("mask")
    if mask is None:
        raise BrainPrepError("global SUVR needs a brain mask (--brain-mask auto or a file), or use "
                             "--pet-normalise none")
    level = float(vols["target"][mask].mean())
    if not level > 0:
        raise BrainPrepError("the PET has no positive signal inside the brain mask: cannot normalise it")
    vols["target"] = vols["target"] / level
    if "truth" in vols:
        vols["truth"] = vols["truth"] / level
    return "SUVR", {"method": "global", "reference": "whole-brain mean (the brain mask)", "divided_by": level,
                    "note": "the PET is not in SUV" if how == "auto" else "asked for"}

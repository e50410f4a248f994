"""NIfTI-1 writing and reading with an explicit LPS <-> RAS conversion.

petsynth keeps volumes as numpy arrays indexed ``[k, j, i]`` (slice, row, column) with a 4x4 LPS affine
mapping ``(i, j, k, 1)`` to DICOM patient coordinates in mm (see :mod:`petsynth.data.geometry`).
NIfTI's world space is RAS (+x towards the patient's Right, +y Anterior, +z Superior): a point (x, y, z)
in LPS is (-x, -y, z) in RAS. So the NIfTI affine is ``diag(-1, -1, 1, 1) @ affine_lps``, and the
NIfTI data array is the volume transposed to ``[i, j, k]``. Both qform and sform are written with code 1
(scanner anatomical), units mm.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

#: LPS <-> RAS flip (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras_affine(affine_lps: np.ndarray) -> np.ndarray:
    """4x4 voxel->LPS affine to the voxel->RAS affine that NIfTI stores."""
    return LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)


def ras_to_lps_affine(affine_ras: np.ndarray) -> np.ndarray:
    """4x4 voxel->RAS affine (as read from NIfTI) to voxel->LPS."""
    return LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)


def lps_to_ras_points(points: np.ndarray) -> np.ndarray:
    """(..., 3) LPS mm -> RAS mm (also RAS -> LPS: the flip is its own inverse)."""
    p = np.array(points, dtype=np.float64, copy=True)
    p[..., :2] *= -1
    return p


ras_to_lps_points = lps_to_ras_points


def write_nifti(path: str | Path, volume: np.ndarray, affine_lps: np.ndarray, *,
                dtype: np.dtype | type | None = np.float32, description: str = "") -> Path:
    """Write ``volume`` (nz, ny, nx) with its LPS affine as NIfTI-1 (``.nii`` or ``.nii.gz``).

    Args:
        dtype: stored data type (float32 by default; pass e.g. ``np.int16`` / ``np.uint8`` for labels,
            or None to keep the array's own type).
        description: free text for the header's ``descrip`` field (80 characters at most).
    Returns the path. Output is deterministic (gzip with a zero timestamp).
    """
    path = Path(path)
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume must be 3-D (nz, ny, nx), got shape {vol.shape}")
    if dtype is not None:
        vol = vol.astype(dtype, copy=False)
    data = np.ascontiguousarray(vol.transpose(2, 1, 0))  # [i, j, k]
    aff = lps_to_ras_affine(affine_lps)
    img = nib.Nifti1Image(data, aff)
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=1)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    img.header["descrip"] = description.encode("ascii", "replace")[:79]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def read_nifti(path: str | Path, dtype: np.dtype | type | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file -> (volume (nz, ny, nx), affine_lps). Scaling (scl_slope/inter) is applied.

    The sform is used when its code is non-zero, else the qform (nibabel's ``affine``).
    """
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D image, got shape {data.shape}")
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    vol = np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0))
    return vol, ras_to_lps_affine(img.affine)

"""NIfTI-1 writing and reading with an explicit LPS <-> RAS conversion.

petsynth keeps volumes as numpy arrays indexed ``[k, j, i]`` (slice, row, column) with a 4x4 LPS affine
mapping ``(i, j, k, 1)`` to DICOM patient coordinates in mm (see :mod:`petsynth.data.geometry`).
NIfTI's world space is RAS (+x towards the patient's Right, +y Anterior, +z Superior): a point (x, y, z)
in LPS is (-x, -y, z) in RAS. So the NIfTI affine is ``diag(-1, -1, 1, 1) @ affine_lps``, and the
NIfTI data array is the volume transposed to ``[i, j, k]``. Both qform and sform are written with code 1
(scanner anatomical), units mm.
"""

from __future__ import annotations

import contextlib
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from petsynth.utils.files import atomic_file

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


def nifti_header(shape: tuple[int, int, int], dtype: np.dtype | type, affine_lps: np.ndarray,
                 description: str = "") -> nib.Nifti1Header:
    """The NIfTI-1 header of a (nz, ny, nx) volume of ``dtype`` with its LPS affine, as nibabel writes it for
    an image made from such an array (qform and sform code 1, mm, values as stored: scl_slope 1, scl_inter 0)."""
    nz, ny, nx = shape
    aff = lps_to_ras_affine(affine_lps)
    header = nib.Nifti1Header()
    header.set_data_shape((nx, ny, nz))
    header.set_data_dtype(dtype)
    header.set_qform(aff, code=1)
    header.set_sform(aff, code=1)
    header.set_xyzt_units(xyz="mm", t="sec")
    header.set_slope_inter(1.0, 0.0)
    header["vox_offset"] = NIFTI_DATA_OFFSET
    header["descrip"] = description.encode("ascii", "replace")[:79]
    return header


#: Where the voxels of a single-file NIfTI-1 start: after the 348-byte header and 4 bytes saying "no extension".
NIFTI_DATA_OFFSET = 352
#: gzip level nibabel writes .nii.gz with (fast; a level-9 file is 10 % smaller and 5x slower to write).
GZIP_LEVEL = 1


def write_nifti(path: str | Path, volume, affine_lps: np.ndarray, *,
                dtype: np.dtype | type | None = np.float32, description: str = "") -> Path:
    """Write ``volume`` (nz, ny, nx) with its LPS affine as NIfTI-1 (``.nii`` or ``.nii.gz``), atomically
    (:func:`~petsynth.utils.files.atomic_file`).

    ``volume``: an array, or a lazy reader of its slices (``shape``, ``dtype``, ``volume[k]``, e.g. a
    :class:`~petsynth.data.dicom_series.SliceReader`): it is written slice by slice (NIfTI stores i fastest,
    then j, then k, so slice k of the ``[k, j, i]`` volume is one block of the file), never copied whole.
    The bytes are those ``nibabel.save`` writes for the same image (gzip level 1 with a zero timestamp and no
    file name: the output is deterministic).

    Args:
        dtype: stored data type (float32 by default; pass e.g. ``np.int16`` / ``np.uint8`` for labels,
            or None to keep the volume's own type).
        description: free text for the header's ``descrip`` field (80 characters at most).
    Returns the path.
    """
    path = Path(path)
    shape = tuple(volume.shape)
    if len(shape) != 3:
        raise ValueError(f"volume must be 3-D (nz, ny, nx), got shape {shape}")
    stored = np.dtype(dtype if dtype is not None else volume.dtype)
    header = nifti_header(shape, stored, affine_lps, description)
    with atomic_file(path, "wb") as fh:
        gz = gzip.GzipFile(filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=fh, mtime=0) \
            if path.name.endswith(".gz") else contextlib.nullcontext(fh)
        with gz as out:
            header.write_to(out)  # with the 4 bytes saying "no extension": the voxels follow
            for k in range(shape[0]):
                out.write(np.ascontiguousarray(volume[k]).astype(stored, copy=False).tobytes())
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

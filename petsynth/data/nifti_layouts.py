"""Studies given as NIfTI volumes, in three layouts, as inputs of ``petsynth prepare``.

- autoPET: ``<study>/CTres.nii.gz`` (CT in HU on the PET grid) + ``SUV.nii.gz`` (+ optional ``SEG.nii.gz``, the
  lesion mask: kept as the study's labels, label 1 named "lesion").
- HECKTOR: ``<id>__CT.nii.gz`` + ``<id>__PT.nii.gz`` (PET in SUV) side by side in a folder.
- plain: one folder per study with ``pet.nii.gz`` (SUV) and ``ct.nii.gz`` (HU), ``mr.nii.gz`` and/or
  ``pet_low_<fraction>.nii.gz`` (SUV of a low-dose reconstruction, e.g. ``pet_low_0.1.nii.gz``).

PET volumes are taken to be SUVbw already (as these public datasets distribute them) and CT to be HU.
NIfTI carries no kVp: it is left unknown. Volumes are read with their affine (RAS on disk, LPS inside).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from petsynth.data.dicom_series import SeriesVolume
from petsynth.data.geometry import Geometry
from petsynth.io.nifti import read_nifti

LAYOUTS = ("autopet", "hecktor", "plain")
_LOW_DOSE = re.compile(r"^pet_low_(.+)\.nii(\.gz)?$")
#: Label table of an autoPET SEG.nii.gz (0 background, 1 lesion).
AUTOPET_SEG_TABLE = ({"label": 1, "name": "lesion", "kind": "lesion"},)


@dataclass
class NiftiStudy:
    """One NIfTI study: an identifier (relative folder, used only to derive a pseudonym) and its files."""

    study_id: str
    layout: str
    target: Path
    sources: dict[str, Path]          # "CT", "MR", "PT_low" -> file
    dose_fraction: float | None = None
    labels: Path | None = None        # a label volume (autoPET SEG.nii.gz), named by label_table
    label_table: list[dict] = field(default_factory=list)


def load_nifti_volume(path: str | Path, modality: str) -> SeriesVolume:
    """A NIfTI file as a :class:`SeriesVolume` in LPS (values as stored, float32)."""
    path = Path(path)
    try:
        vol, affine = read_nifti(path)
    except Exception as err:  # noqa: BLE001 - nibabel raises many kinds; name the file
        raise ValueError(f"{path}: not a readable 3-D NIfTI image ({err})") from None
    geom = Geometry.from_affine(vol.shape, affine)
    normal = geom.direction_matrix[:, 2]
    positions = np.asarray(geom.origin) @ normal + geom.spacing[0] * np.arange(vol.shape[0])
    return SeriesVolume(modality=modality, array=vol.astype(np.float32, copy=False), geometry=geom,
                        positions_mm=positions, irregular=False, files=[path], units="GML" if modality == "PT" else "")


def _fraction(text: str) -> float | None:
    try:
        num, _, den = text.replace("-", "/").partition("/")
        return float(num) / float(den) if den else float(num)
    except ValueError:
        return None


def find_nifti_studies(paths: list[str | Path]) -> list[NiftiStudy]:
    """All NIfTI studies under ``paths`` (recursively), in any of the three layouts."""
    studies: list[NiftiStudy] = []
    for root in map(Path, paths):
        if not root.is_dir():
            continue
        for folder, _dirs, names in os.walk(root):
            folder_p = Path(folder)
            rel = str(folder_p.relative_to(root.parent))
            names = set(names)
            if {"CTres.nii.gz", "SUV.nii.gz"} <= names:
                seg = "SEG.nii.gz" in names
                studies.append(NiftiStudy(rel, "autopet", folder_p / "SUV.nii.gz", {"CT": folder_p / "CTres.nii.gz"},
                                          labels=folder_p / "SEG.nii.gz" if seg else None,
                                          label_table=[dict(r) for r in AUTOPET_SEG_TABLE] if seg else []))
                continue
            if "pet.nii.gz" in names:
                sources = {m: folder_p / f for m, f in (("CT", "ct.nii.gz"), ("MR", "mr.nii.gz")) if f in names}
                lows = [(f, _fraction(_LOW_DOSE.match(f).group(1))) for f in names if _LOW_DOSE.match(f)]
                fraction = None
                if lows:
                    name, fraction = min(lows, key=lambda x: (x[1] is None, x[1] if x[1] is not None else 0, x[0]))
                    sources["PT_low"] = folder_p / name
                studies.append(NiftiStudy(rel, "plain", folder_p / "pet.nii.gz", sources, fraction))
                continue
            for f in sorted(names):
                if f.endswith("__PT.nii.gz") and f.replace("__PT.", "__CT.") in names:
                    ident = f[: -len("__PT.nii.gz")]
                    studies.append(NiftiStudy(f"{rel}/{ident}", "hecktor", folder_p / f,
                                              {"CT": folder_p / f.replace("__PT.", "__CT.")}))
    return sorted(studies, key=lambda s: s.study_id)

"""Studies given as NIfTI volumes, in three layouts, as inputs of ``petsynth prepare``.

- autoPET: ``<study>/CTres.nii.gz`` (CT in HU on the PET grid) + ``SUV.nii.gz`` (+ optional ``SEG.nii.gz``, the
  lesion mask: kept as the study's labels, label 1 named "lesion").
- HECKTOR: ``<id>__CT.nii.gz`` + ``<id>__PT.nii.gz`` (PET in SUV) side by side in a folder.
- plain: one folder per study with ``pet.nii.gz`` (SUV) and ``ct.nii.gz`` (HU), ``mr.nii.gz`` (or ``t1.nii.gz``,
  a T1w brain MR) and/or ``pet_low_<fraction>.nii.gz`` (SUV of a low-dose reconstruction, e.g.
  ``pet_low_0.1.nii.gz``).
- BIDS (brain PET/MR): ``sub-<id>[/ses-<id>]/anat/*_T1w.nii[.gz]`` and ``.../pet/*_pet.nii[.gz]`` with its JSON
  sidecar. A session with a PET but no T1w takes the subject's T1w from its other session (the first, sorted).
  The PET is SUV when the sidecar allows (``Units`` Bq/mL, ``InjectedRadioactivity`` with its units, ``BodyWeight``
  in kg; decayed from ``InjectionStart`` to ``ImageDecayCorrectionTime`` when both are given), otherwise the
  values as read (:attr:`NiftiStudy.pet_is_suv` False: ``prepare`` then normalises as told).

PET volumes of the other layouts are taken to be SUVbw already (as these public datasets distribute them) and CT
to be HU.
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
from petsynth.data.suv import suvbw_factor
from petsynth.io.nifti import read_nifti
from petsynth.physics.constants import F18_HALF_LIFE_S

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
    pet_suv_factor: float | None = 1.0  # SUV per stored PET value; None when the values are not convertible
    pet_suv_note: str = "taken as SUVbw (layout convention)"

    @property
    def pet_is_suv(self) -> bool:
        """Whether the PET's values are SUVbw once multiplied by :attr:`pet_suv_factor`."""
        return self.pet_suv_factor is not None


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
            if folder_p.name == "pet" and folder_p.parent.name.startswith(("sub-", "ses-")):
                bids = _bids_study(folder_p, root)
                if bids is not None:
                    studies.append(bids)
                continue
            if "pet.nii.gz" in names:
                sources = {m: folder_p / f for m, f in (("CT", "ct.nii.gz"), ("MR", "mr.nii.gz"), ("MR", "t1.nii.gz"))
                           if f in names}
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


BQ_PER_UNIT = {"bq": 1.0, "kbq": 1e3, "mbq": 1e6, "gbq": 1e9, "mci": 3.7e7, "uci": 3.7e4}


def _nifti_files(folder: Path, suffix: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"*_{suffix}.nii*") if p.name.endswith((".nii", ".nii.gz")))


def _bids_study(pet_folder: Path, root: Path) -> NiftiStudy | None:
    """The BIDS study of a ``pet/`` folder: its first PET, the session's (or the subject's) T1w."""
    pets = _nifti_files(pet_folder, "pet")
    if not pets:
        return None
    session = pet_folder.parent
    t1s = _nifti_files(session / "anat", "T1w")
    if not t1s and session.name.startswith("ses-"):
        t1s = [t for ses in sorted(session.parent.glob("ses-*")) for t in _nifti_files(ses / "anat", "T1w")]
    sources = {"MR": t1s[0]} if t1s else {}
    factor, note = bids_suv_factor(pets[0])
    return NiftiStudy(str(session.relative_to(root.parent)), "bids", pets[0], sources,
                      pet_suv_factor=factor, pet_suv_note=note)


def bids_suv_factor(pet: Path) -> tuple[float | None, str]:
    """SUV per stored value of a BIDS PET from its JSON sidecar, and how it was found; (None, why) when the
    sidecar does not allow it."""
    import json

    name = pet.name[: -len(".nii.gz")] if pet.name.endswith(".nii.gz") else pet.name[: -len(".nii")]
    sidecar = pet.with_name(name + ".json")
    if not sidecar.is_file():
        return None, "no JSON sidecar: values as read"
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as err:
        return None, f"unreadable JSON sidecar ({err}): values as read"
    units = str(meta.get("Units", "")).replace(" ", "").lower()
    if units in ("suv", "g/ml", "suvbw"):
        return 1.0, "sidecar Units is SUV"
    per_ml = {"bq/ml": 1.0, "kbq/ml": 1e3, "mbq/ml": 1e6}.get(units)
    dose_unit = BQ_PER_UNIT.get(str(meta.get("InjectedRadioactivityUnits", "")).lower())
    try:
        dose, weight = float(meta["InjectedRadioactivity"]), float(meta["BodyWeight"])
    except (KeyError, TypeError, ValueError):
        return None, "sidecar lacks InjectedRadioactivity or BodyWeight: values as read"
    if per_ml is None or dose_unit is None or not dose > 0 or not weight > 0:
        return None, f"sidecar units {meta.get('Units')!r} / {meta.get('InjectedRadioactivityUnits')!r} not convertible"
    note = "SUVbw from the sidecar (InjectedRadioactivity, BodyWeight)"
    try:  # F-18 unless the sidecar names the tracer's half-life
        elapsed = float(meta["ImageDecayCorrectionTime"]) - float(meta["InjectionStart"])
        half_life = float(meta.get("TracerRadionuclideHalfLife", F18_HALF_LIFE_S))
        note += f", dose decayed {elapsed:g} s to the decay-correction time"
    except (KeyError, TypeError, ValueError):
        elapsed, half_life = 0.0, F18_HALF_LIFE_S
        note += ", dose not decayed (no InjectionStart / ImageDecayCorrectionTime)"
    return per_ml * suvbw_factor(weight, dose * dose_unit, elapsed, half_life), note

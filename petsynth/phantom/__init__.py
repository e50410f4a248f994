"""Digital phantoms: paired PET/CT, PET/MR and low-dose/standard-dose PET studies with ground truth.

Every study starts from an organ label volume built from analytic shapes (:mod:`.anatomy`, :mod:`.torso`,
:mod:`.brain`; label table in :mod:`.tissues`). CT (HU, :mod:`.ct`), T1w MRI and PET (SUVbw, through an
emission simulation with attenuation, Poisson counts and reconstruction, :mod:`.pet`) are derived from the
labels. Studies are written as DICOM series or NIfTI volumes with their truth (:mod:`.writer`).

Public API::

    write_studies(out_dir, task="ct2pet", studies=1, seed=0, fmt="dicom", preset="default", ...)
        -> list of study folders
    make_torso(seed, index=0, task="ct2pet"|"lpet2spet", preset=..., dose_fractions=...,
               arms="random"|"raised"|"sides", contrast="none"|"venous"|"random") -> PhantomStudy
    make_brain(seed, index=0, preset=..., field_tesla=3.0, pattern=None, pet_displacement=None) -> PhantomStudy
    make_brain_fields(seed, index, fields=(1.5, 3, 5, 7), **make_brain_kw) -> one PhantomStudy per field
    make_study(task, seed, index, ...) -> PhantomStudy;  write_study(study, out_dir, fmt=...) -> Path

Same (seed, index) -> identical arrays and UIDs; presets ``default`` (clinical grids), ``small``, ``tiny``
(64x64 PET, 128x128 CT, 16 slices: for tests).
"""

from petsynth.data.geometry import Geometry
from petsynth.phantom.brain import PATTERNS, make_brain, make_brain_fields
from petsynth.phantom.pet import PETSimConfig
from petsynth.phantom.presets import FLAVOURS, PRESETS, Flavour, Preset
from petsynth.phantom.study import Acquisition, Image, PhantomStudy
from petsynth.phantom.tissues import LESION_BASE, TISSUES, label_table
from petsynth.phantom.torso import ARMS_CHOICES, CONTRAST_CHOICES, make_torso
from petsynth.phantom.writer import (
    DEFAULT_DOSE_FRACTIONS,
    FORMATS,
    TASKS,
    make_study,
    parse_dose_fractions,
    parse_fields,
    write_studies,
    write_study,
)

__all__ = [
    "ARMS_CHOICES", "Acquisition", "CONTRAST_CHOICES", "DEFAULT_DOSE_FRACTIONS", "FLAVOURS", "FORMATS", "Flavour",
    "Geometry", "Image", "LESION_BASE", "PATTERNS", "PETSimConfig", "PRESETS", "PhantomStudy", "Preset", "TASKS", "TISSUES",
    "label_table", "make_brain", "make_brain_fields", "make_study", "make_torso", "parse_dose_fractions",
    "parse_fields", "write_studies", "write_study",
]

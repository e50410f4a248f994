"""Enhanced (multi-frame) CT, PET and MR images, read frame by frame as classic single-frame headers.

An enhanced image is one file holding a whole series: ``NumberOfFrames`` frames, whose per-frame facts sit in
functional groups (DICOM PS3.3 C.7.6.16): the Shared Functional Groups Sequence (5200,9229) for what all frames
share, the Per-Frame Functional Groups Sequence (5200,9230) for each frame. Each functional group is a macro, a
sequence of one item holding the classic attributes: Plane Position (ImagePositionPatient), Plane Orientation
(ImageOrientationPatient), Pixel Measures (PixelSpacing, SliceThickness), Pixel Value Transformation
(RescaleSlope, RescaleIntercept, RescaleType), Frame Content (FrameAcquisitionDateTime), and, in legacy converted
images, the Unassigned Shared / Per-Frame Converted Attributes (any classic attribute).

:func:`frame_headers` flattens them into one classic header per frame (top level, then shared, then that frame's
groups, later ones winning), so that ordering by position, rescaling and SUV need no second code path. Enhanced
PET states what classic PET puts in Units and DecayCorrection differently; the classic names are filled in:

- Units (0054,1001) from RescaleType (0028,1054) (BQML, CNTS, GML, ...),
- DecayCorrection START from Decay Corrected (0018,9758) YES (the time the frames are decay corrected to is
  Decay Correction DateTime (0018,9701), which :func:`petsynth.data.suv.suv_scale` uses), NONE from NO,
- CorrectedImage ATTN/DECY from Attenuation Corrected (0018,9759) and Decay Corrected,
- AcquisitionDate/AcquisitionTime from the frame's FrameAcquisitionDateTime (0018,9074).
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

#: Multi-frame image storage SOP classes petsynth reads, by modality.
ENHANCED_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2.1": "CT",    # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2": "CT",    # Legacy Converted Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.130": "PT",    # Enhanced PET Image Storage
    "1.2.840.10008.5.1.4.1.1.128.1": "PT",  # Legacy Converted Enhanced PET Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1": "MR",    # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4": "MR",    # Legacy Converted Enhanced MR Image Storage
}
_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
_PIXELS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: What every frame needs, and the functional group that gives it.
_REQUIRED = (("ImagePositionPatient", "Plane Position Sequence (0020,9113)"),
             ("ImageOrientationPatient", "Plane Orientation Sequence (0020,9116)"),
             ("PixelSpacing", "Pixel Measures Sequence (0028,9110)"))


class FrameError(ValueError):
    """An enhanced image whose functional groups do not describe its frames."""


def is_enhanced(ds: Dataset) -> bool:
    """Whether ``ds`` is a multi-frame image of an enhanced SOP class (its frames are read by this module)."""
    return str(ds.get("SOPClassUID", "")) in ENHANCED_SOP_CLASSES


def _merge_group(view: Dataset, item: Dataset) -> None:
    """Copy a functional groups item's macros into ``view``: every sequence of one item contributes that item's
    attributes (PlanePositionSequence -> ImagePositionPatient, ...)."""
    for element in item:
        if element.VR == "SQ" and isinstance(element.value, Sequence) and len(element.value) == 1:
            for inner in element.value[0]:
                view[inner.tag] = inner


def _classic_pet_names(view: Dataset) -> None:
    """Fill in the classic PET attributes an enhanced PET header states by other names (module docstring)."""
    if "Units" not in view and view.get("RescaleType"):
        view.Units = str(view.RescaleType)
    decay_corrected = str(view.get("DecayCorrected", "")).upper()
    if "DecayCorrection" not in view and decay_corrected:
        view.DecayCorrection = "START" if decay_corrected == "YES" else "NONE"
    if "CorrectedImage" not in view:
        corrected = [name for name, keyword in (("ATTN", "AttenuationCorrected"), ("DECY", "DecayCorrected"))
                     if str(view.get(keyword, "")).upper() == "YES"]
        if corrected:
            view.CorrectedImage = corrected


def _frame_time(view: Dataset) -> None:
    stamp = str(view.get("FrameAcquisitionDateTime", "") or view.get("AcquisitionDateTime", "") or "")
    if len(stamp) >= 14 and "AcquisitionTime" not in view:
        view.AcquisitionDate, view.AcquisitionTime = stamp[:8], stamp[8:].split("+")[0].split("-")[0]


def frame_headers(ds: Dataset, path: str | Path | None = None) -> list[Dataset]:
    """One classic single-frame header per frame of an enhanced image, in frame order (module docstring).

    The headers share the top-level elements (not copied) and carry no pixel data; ``filename`` is ``path``
    (or the dataset's own) so that errors name the file. Raises :class:`FrameError` when the per-frame groups
    do not match ``NumberOfFrames``.
    """
    where = str(path or getattr(ds, "filename", None) or "<dataset>")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise FrameError(f"{where}: NumberOfFrames (0028,0008) is {ds.get('NumberOfFrames')!r}") from None
    if frames < 1:
        raise FrameError(f"{where}: NumberOfFrames (0028,0008) is {frames}")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame and len(per_frame) != frames:
        raise FrameError(f"{where}: {frames} frames but {len(per_frame)} items in the Per-Frame Functional "
                         "Groups Sequence (5200,9230)")
    base = Dataset()
    for element in ds:
        if element.keyword not in (*_GROUPS, *_PIXELS):
            base[element.tag] = element
    for item in ds.get("SharedFunctionalGroupsSequence") or []:
        _merge_group(base, item)
    views = []
    for k in range(frames):
        view = Dataset()
        view.update(base)
        if per_frame:
            _merge_group(view, per_frame[k])
        _frame_time(view)
        if ENHANCED_SOP_CLASSES.get(str(ds.get("SOPClassUID", ""))) == "PT":
            _classic_pet_names(view)
        view.filename = where
        for keyword, group in _REQUIRED:
            if not view.get(keyword):
                raise FrameError(f"{where}: frame {k + 1} of {frames} has no {keyword} (its {group} is missing)")
        views.append(view)
    return views

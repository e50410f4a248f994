"""Rewrite a classic phantom series as the DICOM variants archives hold: other transfer syntaxes, one enhanced
multi-frame file (built here from the DICOM functional group macros, or by highdicom's legacy converter), a
gantry-tilted CT. The classic series is the truth each variant is loaded against (``tests/test_dicom_variants.py``).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

#: Enhanced image storage SOP classes by modality.
ENHANCED_SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2.1", "PT": "1.2.840.10008.5.1.4.1.1.130",
                      "MR": "1.2.840.10008.5.1.4.1.1.4.1"}
#: Classic attributes that move into functional groups (or lose their meaning) in an enhanced image.
_PER_IMAGE = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "RescaleSlope",
              "RescaleIntercept", "RescaleType", "SliceLocation", "InstanceNumber", "AcquisitionDate",
              "AcquisitionTime", "PixelData", "WindowCenter", "WindowWidth", "SmallestImagePixelValue",
              "LargestImagePixelValue", "Units", "DecayCorrection", "CorrectedImage", "ImageComments")
_RESCALE_TYPE = {"CT": "HU", "PT": "BQML", "MR": "US"}


def series_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.dcm"))


def rewrite(files: list[Path], out: Path, transfer_syntax: str) -> list[Path]:
    """Each file saved under ``transfer_syntax`` (compressed by pydicom's encoders, or re-encoded) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        ds = pydicom.dcmread(path)
        syntax = pydicom.uid.UID(transfer_syntax)
        if syntax.is_compressed:
            ds.compress(syntax)
        elif not syntax.is_little_endian:  # pydicom swaps the header's values; the pixels' bytes are ours to swap
            stored = np.frombuffer(ds.PixelData, dtype=f"<{'i' if ds.PixelRepresentation else 'u'}{ds.BitsAllocated // 8}")
            ds.PixelData = stored.byteswap().tobytes()
            ds["PixelData"].VR = "OW"
            ds.file_meta.TransferSyntaxUID = syntax
            pydicom.dcmwrite(out / path.name, ds, implicit_vr=False, little_endian=False, force_encoding=True)
            written.append(out / path.name)
            continue
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(out / path.name, enforce_file_format=True)
        written.append(out / path.name)
    return written


def _item(**values) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def enhanced_image(files: list[Path], out: Path, seed: int = 0) -> Path:
    """One Enhanced CT / PET / MR file holding the classic instances ``files`` as frames, in a shuffled order
    (``seed``): geometry and rescale per frame in the functional groups, PET's units and decay correction as
    the Enhanced PET IOD states them (RescaleType, Decay Corrected, Decay Correction DateTime)."""
    datasets = [pydicom.dcmread(f) for f in files]
    random.Random(seed).shuffle(datasets)
    first = datasets[0]
    modality = str(first.Modality)
    ds = Dataset()
    for element in first:
        if element.keyword not in _PER_IMAGE:
            ds[element.tag] = copy.deepcopy(element)
    ds.SOPClassUID = ENHANCED_SOP_CLASS[modality]
    ds.SOPInstanceUID = generate_uid()
    ds.NumberOfFrames = len(datasets)
    if modality == "PT":
        ds.DecayCorrected = "YES" if str(first.DecayCorrection) == "START" else "NO"
        ds.DecayCorrectionDateTime = f"{first.SeriesDate}{first.SeriesTime}"
        ds.AttenuationCorrected = "YES" if "ATTN" in list(first.get("CorrectedImage", [])) else "NO"
    shared = _item(PixelMeasuresSequence=[_item(PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness)],
                   PlaneOrientationSequence=[_item(ImageOrientationPatient=first.ImageOrientationPatient)])
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [
        _item(PlanePositionSequence=[_item(ImagePositionPatient=f.ImagePositionPatient)],
              PixelValueTransformationSequence=[_item(RescaleSlope=f.get("RescaleSlope", 1),
                                                      RescaleIntercept=f.get("RescaleIntercept", 0),
                                                      RescaleType=_RESCALE_TYPE[modality])],
              FrameContentSequence=[_item(FrameAcquisitionDateTime=f"{f.AcquisitionDate}{f.AcquisitionTime}")])
        for f in datasets]
    ds.PixelData = b"".join(bytes(f.PixelData) for f in datasets)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def legacy_converted(files: list[Path], out: Path) -> Path:
    """One Legacy Converted Enhanced CT / PET / MR file made by highdicom from the classic ``files``."""
    from highdicom.legacy import (LegacyConvertedEnhancedCTImage, LegacyConvertedEnhancedMRImage,
                                  LegacyConvertedEnhancedPETImage)

    kinds = {"CT": LegacyConvertedEnhancedCTImage, "PT": LegacyConvertedEnhancedPETImage,
             "MR": LegacyConvertedEnhancedMRImage}
    datasets = [pydicom.dcmread(f) for f in files]
    image = kinds[str(datasets[0].Modality)](datasets, series_instance_uid=generate_uid(), series_number=901,
                                             sop_instance_uid=generate_uid(), instance_number=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(out, enforce_file_format=True)
    return out


def tilted_ct(out: Path, tilt_deg: float, *, shape=(24, 48, 48), pixel_mm=2.0, table_step_mm=3.0,
              value=None) -> tuple[list[Path], callable]:
    """A CT series acquired with the gantry tilted by ``tilt_deg`` about the patient's left-right axis: each
    slice's columns run along (0, cos t, sin t) while the table moves the slices along z only (the slice
    stack is sheared). Pixels sample ``value(x, y, z)`` (HU, LPS mm; by default a ball of 300 HU in water,
    -1000 HU outside a cylinder) at each pixel's true position. Returns (files, value)."""
    if value is None:
        def value(x, y, z):
            body = np.where(x ** 2 + y ** 2 < 40.0 ** 2, 0.0, -1000.0)
            return np.where((x - 6) ** 2 + (y + 4) ** 2 + (z - 30) ** 2 < 14.0 ** 2, 300.0, body)
    t = np.deg2rad(tilt_deg)
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(t), np.sin(t)])
    nz, ny, nx = shape
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out.mkdir(parents=True, exist_ok=True)
    files = []
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    for k in range(nz):
        corner = (np.array([0.0, 0.0, k * table_step_mm])  # the centre row of slice k at the isocentre, z = k step
                  - (nx - 1) / 2 * pixel_mm * row - (ny - 1) / 2 * pixel_mm * col)
        points = corner + (ii[..., None] * row + jj[..., None] * col) * pixel_mm  # (ny, nx, 3)
        hu = value(points[..., 0], points[..., 1], points[..., 2])
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "CT", study, series, frame
        ds.PatientName, ds.PatientID, ds.ImageType = "TILT^PHANTOM", "tilt", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.GantryDetectorTilt = tilt_deg
        ds.ImagePositionPatient = [f"{v:.6f}" for v in corner]
        ds.ImageOrientationPatient = [f"{v:.9f}" for v in (*row, *col)]
        ds.PixelSpacing, ds.SliceThickness = [pixel_mm, pixel_mm], table_step_mm * np.cos(t)
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ny, nx, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.KVP = 1, -1024, 120
        ds.PixelData = (np.rint(hu) + 1024).astype("<i2").tobytes()
        path = out / f"CT{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files, value

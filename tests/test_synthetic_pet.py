"""The synthetic PET DICOM writer (petsynth.io.synthetic_pet): values, geometry, UIDs, labels, standard modules.

Truth is independent of the writer: pixel values and positions are recomputed here from the input array and
affine; the mandatory attributes are listed from PS3.3; dciodvfy (dicom3tools) checks the IOD when installed.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

from petsynth import __version__
from petsynth.data.dicom_index import scan_dicom
from petsynth.data.dicom_series import load_series
from petsynth.io.synthetic_pet import SYNTHETIC_SERIES_DESCRIPTION, write_synthetic_pet

SHAPE = (5, 10, 12)  # nz, ny, nx: ny != nx so a row/column swap shows
DX, DY, DZ = 1.5, 2.0, 3.0
ORIGIN = (-100.25, -80.5, 300.0)
MODEL = "phantom-cpdm"


def axial_affine(descending: bool = False) -> np.ndarray:
    """LPS affine of an axial grid; k towards the head (ascending z) or towards the feet."""
    a = np.diag([DX, DY, -DZ if descending else DZ, 1.0])
    a[:3, 3] = ORIGIN
    return a


def known_suv(seed: int = 0) -> np.ndarray:
    """SUV-like values with the awkward cases: a negative value, an all-zero slice, a hot slice."""
    rng = np.random.default_rng(seed)
    suv = rng.gamma(2.0, 0.8, SHAPE)
    suv[0, 0, 0] = -0.3  # must come back as 0
    suv[2] = 0.0
    suv[3, 4, 5] = 41.7
    return suv


def ct_reference(**overrides) -> Dataset:
    """The header of one CT instance, as ``translate`` passes it (no pixel data)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = "Müller^Anna"
    ds.PatientID = "MRN-0042"
    ds.PatientBirthDate = "19600131"
    ds.PatientSex = "F"
    ds.PatientAge = "064Y"
    ds.PatientWeight = "61.5"
    ds.PatientSize = "1.68"
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime = "20240916", "101500"
    ds.StudyID = "7781"
    ds.AccessionNumber = "ACC123"
    ds.ReferringPhysicianName = "Doe^John"
    ds.StudyDescription = "PET-CT WB"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 2
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = "XY"
    ds.Manufacturer = "ACME"
    ds.StationName = "CT01"
    ds.PatientPosition = "HFS"
    ds.KVP = "120"
    for key, value in overrides.items():
        setattr(ds, key, value)
    return ds


def read_all(paths) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in paths]


DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_messages(path, kind: str) -> list[str]:
    """dciodvfy's lines starting with ``kind`` ("Error" or "Warning") for one file."""
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = [line.strip() for line in (run.stdout + run.stderr).splitlines()]
    assert "PETImage" in lines, lines  # recognised as the PET Image IOD
    return [line for line in lines if line.startswith(kind)]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One series written with a CT reference (ascending affine): (reference, input SUV, datasets, paths)."""
    ref = ct_reference()
    suv = known_suv()
    paths = write_synthetic_pet(tmp_path_factory.mktemp("syn") / "dicom", suv, axial_affine(), reference=ref,
                                model_name=MODEL, derivation="Synthesized from CT, 20 sampling steps")
    return ref, suv, read_all(paths), paths


@pytest.fixture(scope="module")
def written_no_ref(tmp_path_factory):
    paths = write_synthetic_pet(tmp_path_factory.mktemp("syn_noref") / "dicom", known_suv(1), axial_affine(),
                                reference=None, model_name=MODEL)
    return read_all(paths), paths


# --- (1) round trip with pydicom ----------------------------------------------------------------------
@pytest.mark.parametrize("descending", [False, True], ids=["k-to-head", "k-to-feet"])
def test_pydicom_round_trip_values_and_geometry(tmp_path, descending):
    suv = known_suv()
    affine = axial_affine(descending)
    paths = write_synthetic_pet(tmp_path / "out", suv, affine, reference=ct_reference(), model_name=MODEL)
    assert [p.name for p in paths] == [f"{k + 1:04d}.dcm" for k in range(SHAPE[0])]
    expected = np.clip(suv, 0.0, None)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)  # no force: needs the preamble and file meta
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == PositronEmissionTomographyImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.InstanceNumber == k + 1 and ds.ImageIndex == k + 1
        stored = ds.pixel_array
        assert stored.dtype in (np.int16, np.uint16) and stored.shape == SHAPE[1:]
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        assert intercept == 0.0 and slope > 0
        values = stored.astype(np.float64) * slope
        assert np.abs(values - expected[k]).max() <= 0.5 * slope * (1 + 1e-9) + 1e-12
        assert values.min() >= 0.0
        # geometry, recomputed from the affine
        position = (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], position, atol=1e-4)
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0], atol=1e-7)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([DY, DX])  # (row spacing, column spacing)
        assert float(ds.SliceThickness) == pytest.approx(DZ)
        assert (ds.Rows, ds.Columns) == SHAPE[1:]
        assert ds.NumberOfSlices == SHAPE[0]
    # the affine rebuilt from the headers alone equals the input
    first, last = pydicom.dcmread(paths[0]), pydicom.dcmread(paths[-1])
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    dy, dx = (float(v) for v in first.PixelSpacing)
    p0 = np.array([float(v) for v in first.ImagePositionPatient])
    p1 = np.array([float(v) for v in last.ImagePositionPatient])
    rebuilt = np.eye(4)
    rebuilt[:3, 0], rebuilt[:3, 1] = iop[:3] * dx, iop[3:] * dy
    rebuilt[:3, 2], rebuilt[:3, 3] = (p1 - p0) / (SHAPE[0] - 1), p0
    np.testing.assert_allclose(rebuilt, affine, atol=1e-4)


# --- (2) round trip with the package's own reader ---------------------------------------------------
@pytest.mark.parametrize("descending", [False, True], ids=["k-to-head", "k-to-feet"])
def test_package_reader_gives_the_same_suv_and_geometry(tmp_path, descending):
    suv = known_suv(2)
    affine = axial_affine(descending)
    ref = ct_reference()
    write_synthetic_pet(tmp_path / "out", suv, affine, reference=ref, model_name=MODEL)
    studies, skipped = scan_dicom([tmp_path / "out"])
    assert skipped == [] and len(studies) == 1 and studies[0].study_uid == ref.StudyInstanceUID
    (info,) = studies[0].series
    assert info.modality == "PT" and info.units == "GML" and info.num_files == SHAPE[0]
    assert info.frame_of_reference_uid == ref.FrameOfReferenceUID
    vol = load_series(info)
    assert vol.suv is not None and vol.suv.units == "GML" and vol.suv.factor == 1.0  # GML: already SUVbw
    # the reader orders slices by position along the normal: ascending z
    expected = np.clip(suv, 0.0, None)
    expected_affine = affine
    if descending:
        expected = expected[::-1]
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1.0, SHAPE[0] - 1
        expected_affine = affine @ flip
    assert vol.array.shape == SHAPE and not vol.irregular
    slopes = np.array([float(pydicom.dcmread(f, stop_before_pixels=True).RescaleSlope) for f in vol.files])
    err = np.abs(vol.array.astype(np.float64) - expected).reshape(SHAPE[0], -1).max(axis=1)
    assert (err <= 0.5 * slopes * (1 + 1e-6) + 1e-5 * expected.reshape(SHAPE[0], -1).max(axis=1) + 1e-9).all()
    np.testing.assert_allclose(vol.geometry.affine, expected_affine, atol=1e-4)
    np.testing.assert_allclose(vol.positions_mm, np.sort(ORIGIN[2] + (-DZ if descending else DZ)
                                                         * np.arange(SHAPE[0])), atol=1e-4)


def test_next_to_a_phantom_study_it_joins_the_study_but_is_never_a_training_target(tmp_path):
    """A phantom PET/CT study (tiny) as the source: the synthetic PET lands in its study and frame of
    reference, and the prepare step still picks the real PET (the synthetic one has no ATTN)."""
    from petsynth.data.prepare import plan_study
    from petsynth.phantom import make_torso
    from petsynth.phantom.writer import write_study

    study = make_torso(3, preset="tiny")
    folder = write_study(study, tmp_path / "raw")
    ct_file = sorted((folder / "CT").glob("*.dcm"))[0]
    ref = pydicom.dcmread(ct_file, stop_before_pixels=True)
    pet = study.images["PT"]
    paths = write_synthetic_pet(folder / "SYNTH", pet.volume, pet.geometry.affine, reference=ref,
                                model_name=MODEL)
    studies, _ = scan_dicom([folder])
    assert len(studies) == 1
    by_uid = {s.series_uid: s for s in studies[0].series}
    synth = by_uid[pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID]
    assert synth.modality == "PT" and synth.frame_of_reference_uid == ref.FrameOfReferenceUID
    assert not synth.attenuation_corrected
    assert plan_study(studies[0], "ct2pet").target.series_uid != synth.series_uid
    vol = load_series(synth)
    assert np.abs(vol.array - np.clip(pet.volume, 0, None)).max() <= 0.5 * np.abs(pet.volume).max() / 32767 * 1.01
    np.testing.assert_allclose(vol.geometry.affine, pet.geometry.affine, atol=1e-4)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert ds.BodyPartExamined == ref.BodyPartExamined and "Laterality" not in ds  # an unpaired body part
    if DCIODVFY is not None:
        assert dciodvfy_messages(paths[0], "Error") == []
        assert dciodvfy_messages(paths[0], "Warning") == []  # complete reference: not even a warning


# --- (3) the reference's study, patient and frame of reference; new series and instances ------------
def test_same_study_patient_and_frame_of_reference_new_series_and_instances(written):
    ref, _, dss, _ = written
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "PositionReferenceIndicator", "PatientName",
                    "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight", "PatientSize",
                    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "StudyDescription"):
        assert {str(ds[keyword].value) for ds in dss} == {str(ref[keyword].value)}, keyword
    assert str(dss[0].PatientName) == "Müller^Anna"  # the character set travels with the name
    series_uids = {ds.SeriesInstanceUID for ds in dss}
    sop_uids = [ds.SOPInstanceUID for ds in dss]
    assert len(series_uids) == 1 and ref.SeriesInstanceUID not in series_uids
    assert len(set(sop_uids)) == len(dss) and ref.SOPInstanceUID not in sop_uids
    assert all(pydicom.uid.UID(u).is_valid for u in [*series_uids, *sop_uids])
    assert {ds.SeriesNumber for ds in dss} == {ref.SeriesNumber + 1000}
    # the CT's equipment is not the synthetic series' equipment
    assert {ds.Manufacturer for ds in dss} == {"petsynth"} and "StationName" not in dss[0] and "KVP" not in dss[0]
    # PatientPosition HFS becomes the NM/PET orientation codes (the two must not coexist in PET)
    ds = dss[0]
    assert "PatientPosition" not in ds
    orient = ds.PatientOrientationCodeSequence[0]
    assert orient.CodeMeaning == "recumbent"
    assert orient.PatientOrientationModifierCodeSequence[0].CodeMeaning == "supine"
    assert ds.PatientGantryRelationshipCodeSequence[0].CodeMeaning == "headfirst"
    # body part unknown (the CT has none): Laterality present and empty (General Series type 2C)
    assert "BodyPartExamined" not in ds and ds.Laterality == ""


def test_uids_random_by_default_and_reproducible_with_entropy(tmp_path):
    ref, suv = ct_reference(), known_suv()

    def series(name, **kw):
        paths = write_synthetic_pet(tmp_path / name, suv, axial_affine(), reference=ref, model_name=MODEL, **kw)
        return [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in read_all(paths)]

    a, b = series("a"), series("b")
    assert a[0][0] != b[0][0] and not {u for _, u in a} & {u for _, u in b}
    c, d = series("c", uid_entropy=["run-1"]), series("d", uid_entropy=["run-1"])
    e = series("e", uid_entropy=["run-2"])
    assert c == d and c[0][0] != e[0][0]


# --- (4) no reference: a new study, no patient identifiers -----------------------------------------
def test_without_reference_a_new_study_with_empty_patient_identifiers(written, written_no_ref):
    ref = written[0]
    dss, _ = written_no_ref
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
                    "AccessionNumber"):
        assert all(keyword in ds and str(ds[keyword].value or "") == "" for ds in dss), keyword
    for keyword in ("PatientAge", "PatientWeight", "PatientSize", "OtherPatientIDs", "IssuerOfPatientID"):
        assert keyword not in dss[0], keyword
    assert len({ds.StudyInstanceUID for ds in dss}) == 1 and len({ds.FrameOfReferenceUID for ds in dss}) == 1
    ds = dss[0]
    assert pydicom.uid.UID(ds.StudyInstanceUID).is_valid and pydicom.uid.UID(ds.FrameOfReferenceUID).is_valid
    assert ds.StudyInstanceUID not in (ref.StudyInstanceUID, ds.SeriesInstanceUID)
    assert ds.FrameOfReferenceUID != ref.FrameOfReferenceUID
    assert ds.SeriesDescription == SYNTHETIC_SERIES_DESCRIPTION
    assert ds.PatientOrientationCodeSequence == [] and "PatientPosition" not in ds
    assert ds.StudyID == "petsynth"
    # a second run is a second new study
    other = write_synthetic_pet(written_no_ref[1][0].parent.parent / "again", known_suv(1), axial_affine(),
                                reference=None, model_name=MODEL)
    assert pydicom.dcmread(other[0]).StudyInstanceUID != ds.StudyInstanceUID


# --- (5) labels: synthetic, derived, not for diagnosis ---------------------------------------------
def test_series_is_labelled_synthetic_derived_and_not_for_diagnosis(written):
    _, _, dss, _ = written
    assert len(SYNTHETIC_SERIES_DESCRIPTION) <= 64
    assert "SYNTHETIC" in SYNTHETIC_SERIES_DESCRIPTION.upper()
    assert "NOT FOR DIAGNOSIS" in SYNTHETIC_SERIES_DESCRIPTION.upper()
    for ds in dss:
        assert ds.SeriesDescription == SYNTHETIC_SERIES_DESCRIPTION
        assert list(ds.ImageType)[:2] == ["DERIVED", "PRIMARY"]  # PET Image: value 2 must be PRIMARY
        assert ds.Manufacturer == "petsynth" and ds.SoftwareVersions == __version__
        assert ds.ManufacturerModelName == MODEL
        assert ds.BurnedInAnnotation == "NO" and ds.ContentQualification == "RESEARCH"
        text = ds.DerivationDescription
        assert "petsynth" in text and MODEL in text and "20 sampling steps" in text
        assert "not for diagnosis" in text.lower() and "not for diagnosis" in ds.ImageComments.lower()
        assert ds.Units == "GML" and ds.Modality == "PT"


def test_derivation_keeps_a_text_that_already_names_petsynth_and_the_model(tmp_path):
    text = f"Synthesized from CT by petsynth {__version__}, model {MODEL} (cpdm), 50 sampling steps"
    paths = write_synthetic_pet(tmp_path / "o", known_suv(), axial_affine(), reference=None, model_name=MODEL,
                                derivation=text)
    got = pydicom.dcmread(paths[0]).DerivationDescription
    assert got.startswith(text) and got.count(MODEL) == 1 and got.count("petsynth") == 1


# --- (6) bad input ----------------------------------------------------------------------------------
def _bad_affine(kind):
    a = axial_affine()
    if kind == "3x3":
        return a[:3, :3]
    if kind == "nan":
        a[0, 3] = np.nan
        return a
    if kind == "last-row":
        a[3, 2] = 1.0
        return a
    if kind == "zero-axis":
        a[:3, 1] = 0.0
        return a
    if kind == "oblique-shear":
        a[:3, 1] = [1.0, 2.0, 0.0]
        return a
    raise AssertionError(kind)


@pytest.mark.parametrize("suv, affine, model, match", [
    (np.ones((10, 12)), axial_affine(), MODEL, "3-D"),
    (np.ones((2, 5, 10, 12)), axial_affine(), MODEL, "3-D"),
    (np.ones((0, 10, 12)), axial_affine(), MODEL, "empty"),
    (np.where(np.arange(5)[:, None, None] == 3, np.nan, np.ones(SHAPE)), axial_affine(), MODEL, "non-finite.*slice 3"),
    (np.full(SHAPE, np.inf), axial_affine(), MODEL, "non-finite"),
    (np.ones(SHAPE, dtype=complex), axial_affine(), MODEL, "real numbers"),
    (np.ones(SHAPE), _bad_affine("3x3"), MODEL, "4x4"),
    (np.ones(SHAPE), _bad_affine("nan"), MODEL, "non-finite"),
    (np.ones(SHAPE), _bad_affine("last-row"), MODEL, "last row"),
    (np.ones(SHAPE), _bad_affine("zero-axis"), MODEL, "zero-length"),
    (np.ones(SHAPE), _bad_affine("oblique-shear"), MODEL, "orthogonal"),
    (np.ones(SHAPE), axial_affine(), "  ", "model_name"),
], ids=["2d", "4d", "empty", "nan", "inf", "complex", "affine-3x3", "affine-nan", "affine-last-row",
        "affine-zero-axis", "affine-not-orthogonal", "no-model-name"])
def test_bad_input_raises_value_error_naming_the_problem(tmp_path, suv, affine, model, match):
    with pytest.raises(ValueError, match=match):
        write_synthetic_pet(tmp_path / "o", suv, affine, reference=ct_reference(), model_name=model)
    assert not (tmp_path / "o").exists()  # nothing written


def test_reference_without_study_uid_and_occupied_folder_are_refused(tmp_path):
    ref = ct_reference()
    del ref.StudyInstanceUID
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        write_synthetic_pet(tmp_path / "o", known_suv(), axial_affine(), reference=ref, model_name=MODEL)
    write_synthetic_pet(tmp_path / "p", known_suv(), axial_affine(), reference=None, model_name=MODEL)
    with pytest.raises(FileExistsError):
        write_synthetic_pet(tmp_path / "p", known_suv(), axial_affine(), reference=None, model_name=MODEL)


# --- standard modules: mandatory attributes (PS3.3) -------------------------------------------------
#: module -> (type 1 keywords: present and not empty, type 2 keywords: present, may be empty)
MANDATORY = {
    "Patient C.7.1.1": ((), ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")),
    "General Study C.7.2.1": (("StudyInstanceUID",),
                              ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")),
    "General Series C.7.3.1": (("Modality", "SeriesInstanceUID"), ("SeriesNumber",)),
    "PET Series C.8.9.1": (("SeriesDate", "SeriesTime", "Units", "CountsSource", "SeriesType", "NumberOfSlices",
                            "DecayCorrection"), ("CorrectedImage", "CollimatorType")),
    "PET Isotope C.8.9.2": ((), ("RadiopharmaceuticalInformationSequence",)),
    "NM/PET Patient Orientation C.8.4.6": ((), ("PatientOrientationCodeSequence",
                                                "PatientGantryRelationshipCodeSequence")),
    "Frame of Reference C.7.4.1": (("FrameOfReferenceUID",), ("PositionReferenceIndicator",)),
    "General Equipment C.7.5.1": ((), ("Manufacturer",)),
    "General Image C.7.6.1": ((), ("InstanceNumber",)),
    "Image Plane C.7.6.2": (("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient"),
                            ("SliceThickness",)),
    "Image Pixel C.7.6.3": (("SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
                             "BitsStored", "HighBit", "PixelRepresentation", "PixelData"), ()),
    "PET Image C.8.9.4": (("ImageType", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
                           "BitsStored", "HighBit", "RescaleIntercept", "RescaleSlope", "FrameReferenceTime",
                           "ImageIndex"), ("AcquisitionDate", "AcquisitionTime", "ActualFrameDuration")),
    "SOP Common C.12.1": (("SOPClassUID", "SOPInstanceUID"), ()),
}


@pytest.mark.parametrize("which", ["reference", "no-reference"])
def test_mandatory_attributes_of_the_pet_image_iod(written, written_no_ref, which):
    dss = written[2] if which == "reference" else written_no_ref[0]
    for ds in dss:
        for module, (type1, type2) in MANDATORY.items():
            for keyword in type1:
                assert keyword in ds and ds[keyword].value not in (None, "", b"", []), f"{module}: {keyword}"
            for keyword in type2:
                assert keyword in ds, f"{module}: {keyword}"
        # conditional and enumerated values (C.8.9.1, C.8.9.4)
        assert ds.DecayCorrection in ("NONE", "START", "ADMIN")
        if ds.DecayCorrection != "NONE":
            assert float(ds.DecayFactor) > 0  # 1C: required unless DecayCorrection is NONE
        assert ds.CountsSource in ("EMISSION", "TRANSMISSION")
        assert ds.SeriesType[0] in ("STATIC", "DYNAMIC", "GATED", "WHOLE BODY")
        assert ds.SeriesType[1] in ("IMAGE", "REPROJECTION")
        assert ds.ImageType[0] in ("ORIGINAL", "DERIVED") and ds.ImageType[1] == "PRIMARY"
        assert (ds.SamplesPerPixel, ds.PhotometricInterpretation) == (1, "MONOCHROME2")
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 16, 15)
        assert float(ds.RescaleIntercept) == 0.0
        assert ds.NumberOfSlices == len(dss) and ds.SpecificCharacterSet
    assert sorted(ds.ImageIndex for ds in dss) == list(range(1, len(dss) + 1))


# --- dciodvfy (dicom3tools) -------------------------------------------------------------------------
@pytest.mark.skipif(DCIODVFY is None, reason="dicom3tools' dciodvfy is not on PATH: install it with "
                    "`apt-get install dicom3tools` (Debian/Ubuntu) or from https://www.dclunie.com/dicom3tools.html")
def test_dciodvfy_finds_no_errors(written, written_no_ref):
    for path in [*written[3], *written_no_ref[1]]:
        assert dciodvfy_messages(path, "Error") == [], path.name
    # the warnings left are the expected ones: empty Laterality (the CTs here name no body part) and, for
    # the new study, the empty PatientID
    allowed = ("attribute <Laterality>", "needed to build DICOMDIR - Patient ID")
    for path in (written[3][0], written_no_ref[1][0]):
        assert [w for w in dciodvfy_messages(path, "Warning") if not w.endswith(allowed)] == [], path.name

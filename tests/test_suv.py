"""SUVbw (QIBA vendor-neutral logic) against real GE data and hand-computed values."""

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from petsynth.data.suv import SUVError, rescaled_pixels, suv_image, suv_scale

DATA = Path(__file__).parent / "data" / "tcia-sts-001"


def _read(folder: str) -> list[pydicom.Dataset]:
    return sorted((pydicom.dcmread(f) for f in (DATA / folder).glob("*.dcm")),
                  key=lambda d: float(d.ImagePositionPatient[2]))


def test_real_ge_bqml_series_gives_the_published_factor_and_the_mirp_suv():
    raw, cropped = _read("raw_pet"), _read("cropped_pet")
    scale = suv_scale(raw)
    # README facts: 71 kg, 388.78 MBq, 2711 s injection -> series, half-life 6588 s
    assert scale.units == "BQML" and scale.decay_time_s == pytest.approx(2711.0)
    assert scale.factor == pytest.approx(0.00024290, rel=2e-5)
    for r, c in zip(raw, cropped):
        assert float(r.ImagePositionPatient[2]) == pytest.approx(float(c.ImagePositionPatient[2]))
        col = round((float(c.ImagePositionPatient[0]) - float(r.ImagePositionPatient[0])) / float(r.PixelSpacing[1]))
        row = round((float(c.ImagePositionPatient[1]) - float(r.ImagePositionPatient[1])) / float(r.PixelSpacing[0]))
        ours = suv_image(r, scale)[row:row + c.Rows, col:col + c.Columns]
        reference = rescaled_pixels(c)  # GML: already SUV
        assert suv_scale(c).factor == 1.0
        assert np.abs(ours - reference).max() <= 1e-4 * reference.max()
        assert 5.0 < reference.max() < 8.0


def _bqml(**overrides) -> Dataset:
    radio = Dataset()
    radio.RadionuclideTotalDose = "370000000"
    radio.RadionuclideHalfLife = "6586.2"
    radio.RadiopharmaceuticalStartTime = "093000"
    ds = Dataset()
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["ATTN", "DECY"]
    ds.PatientWeight = "80"
    ds.SeriesDate = "20240102"
    ds.SeriesTime = "103000"
    ds.AcquisitionDate = "20240102"
    ds.AcquisitionTime = "103000"
    ds.RadiopharmaceuticalInformationSequence = Sequence([radio])
    for key, value in overrides.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def test_bqml_decay_to_series_time():
    expected = 80 * 1000 / (370e6 * 2 ** (-3600 / 6586.2))
    assert suv_scale(_bqml()).factor == pytest.approx(expected, rel=1e-12)


def test_start_datetime_is_preferred_and_admin_means_no_decay():
    ds = _bqml()
    ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime = "20240102100000"
    assert suv_scale(ds).decay_time_s == 1800
    assert suv_scale(_bqml(DecayCorrection="ADMIN")).factor == pytest.approx(80 * 1000 / 370e6)


def test_series_time_after_acquisition_uses_earliest_acquisition():
    a = _bqml(SeriesTime="110000", AcquisitionTime="104000")
    b = _bqml(SeriesTime="110000", AcquisitionTime="102000")
    assert suv_scale([a, b]).decay_time_s == 3000  # 09:30 -> 10:20


def test_injection_across_midnight_uses_start_datetime():
    ds = _bqml(SeriesDate="20240103", SeriesTime="003000", AcquisitionDate="20240103", AcquisitionTime="003000")
    ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime = "20240102233000"
    assert suv_scale(ds).decay_time_s == 3600


def test_gml_and_philips_cnts():
    assert suv_scale(_bqml(Units="GML", PatientWeight=None)).factor == 1.0
    ds = _bqml(Units="CNTS")
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    block.add_new(0x00, "DS", "0.000123")
    assert suv_scale(ds).factor == pytest.approx(0.000123)
    with pytest.raises(SUVError, match=r"\(7053,1000\)"):
        suv_scale(_bqml(Units="CNTS"))


@pytest.mark.parametrize("keyword, tag", [("PatientWeight", "(0010,1030)"), ("SeriesTime", "(0008,0031)"),
                                          ("RadiopharmaceuticalInformationSequence", "(0054,0016)")])
def test_missing_tags_are_named(keyword, tag):
    with pytest.raises(SUVError, match=rf"{keyword} \{tag[:-1]}\)"):
        suv_scale(_bqml(**{keyword: None}))


def test_missing_dose_or_times_and_bad_values_are_named():
    ds = _bqml()
    del ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose
    with pytest.raises(SUVError, match=r"RadionuclideTotalDose \(0018,1074\)"):
        suv_scale(ds)
    ds = _bqml()
    del ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime
    with pytest.raises(SUVError, match=r"\(0018,1072\)"):
        suv_scale(ds)
    with pytest.raises(SUVError, match="must be positive"):
        suv_scale(_bqml(PatientWeight="0"))
    with pytest.raises(SUVError, match="NONE"):
        suv_scale(_bqml(DecayCorrection="NONE"))
    with pytest.raises(SUVError, match="precedes"):
        suv_scale(_bqml(SeriesTime="090000", AcquisitionTime="090000"))
    with pytest.raises(SUVError, match="PROPCNTS"):
        suv_scale(_bqml(Units="PROPCNTS"))


def test_rescale_is_applied_per_instance():
    raw = _read("raw_pet")
    slopes = [float(d.RescaleSlope) for d in raw]
    assert len(set(slopes)) == len(slopes)  # real GE data: the slope changes from slice to slice
    for d in raw:
        np.testing.assert_allclose(rescaled_pixels(d), d.pixel_array * float(d.RescaleSlope), rtol=1e-6)
    changed = copy.deepcopy(raw[0])
    changed.RescaleSlope = float(raw[0].RescaleSlope) * 2
    np.testing.assert_allclose(rescaled_pixels(changed), 2 * rescaled_pixels(raw[0]), rtol=1e-6)


def test_phantom_dicom_study_is_found_and_its_suv_matches_the_truth(tmp_path):
    from petsynth.data.dicom_index import scan_dicom
    from petsynth.io.nifti import read_nifti
    from petsynth.phantom import write_studies

    (study_dir,) = write_studies(tmp_path, task="ct2pet", studies=1, seed=3, fmt="dicom", preset="tiny")
    (tmp_path / "README.txt").write_text("junk beside the study")
    studies, skipped = scan_dicom([tmp_path])
    assert len(studies) == 1
    assert {s.reason for s in skipped} == {"not a DICOM file"}  # README, index and truth files
    assert "README.txt" in {s.path.name for s in skipped} and not any(s.path.suffix == ".dcm" for s in skipped)
    (pet,) = studies[0].of_modality("PT")
    (ct,) = studies[0].of_modality("CT")
    assert pet.attenuation_corrected and pet.frame_of_reference_uid == ct.frame_of_reference_uid
    headers = sorted((pydicom.dcmread(f) for f in pet.files), key=lambda d: float(d.ImagePositionPatient[2]))
    scale = suv_scale(headers)
    suv = np.stack([suv_image(d, scale) for d in headers])
    truth, _ = read_nifti(study_dir / "truth" / "suv_truth_blurred.nii.gz")
    labels, _ = read_nifti(study_dir / "truth" / "labels.nii.gz")
    body = labels > 0
    # the reconstructed PET is noisy; over the whole body the mean SUV agrees with the truth
    assert suv.shape == truth.shape
    assert suv[body].mean() == pytest.approx(truth[body].mean(), rel=0.05)


def test_a_reported_problem_is_said_once_and_a_damaged_attribute_names_the_file(tmp_path):
    with pytest.raises(SUVError) as err:
        suv_scale(_bqml(Units="CNTS"))
    assert "cannot be read" not in str(err.value)  # an SUVError is not re-wrapped as a damaged file
    ds = _bqml()
    ds.filename = str(tmp_path / "IM0001.dcm")

    class Damaged(type(ds)):  # an attribute pydicom cannot convert, as a damaged file gives
        def get(self, key, default=None):
            if key == "PatientWeight":
                raise NotImplementedError("Unknown Value Representation '0x44 0xff' in tag (0010,1030)")
            return super().get(key, default)

    ds.__class__ = Damaged
    with pytest.raises(SUVError, match=r"IM0001\.dcm: its SUV attributes cannot be read \(NotImplementedError"):
        suv_scale(ds)

"""Series -> volume: order by position, per-instance rescale, HU / SUV, geometry from the headers."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from petsynth.data.dicom_index import scan_dicom
from petsynth.data.dicom_series import SeriesError, load_series
from petsynth.phantom import make_torso, write_study

DATA = Path(__file__).parent / "data" / "tcia-sts-001"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    study = make_torso(5, preset="tiny")
    folder = write_study(study, tmp_path_factory.mktemp("ph"), fmt="dicom")
    (found,), _ = scan_dicom([folder])
    return study, found


@pytest.mark.parametrize("modality", ["CT", "PT"])
def test_phantom_series_round_trip_to_physical_units_and_geometry(phantom, modality):
    study, found = phantom
    (info,) = found.of_modality(modality)
    vol = load_series(info)
    truth = study.images[modality]
    assert vol.array.shape == truth.volume.shape and not vol.irregular
    np.testing.assert_allclose(vol.geometry.affine, truth.geometry.affine, atol=1e-3)
    if modality == "CT":
        np.testing.assert_allclose(vol.array, np.round(truth.volume), atol=0.51)  # int16 storage
        assert vol.kvp == pytest.approx(study.acquisition.kvp)
    else:
        # int16 with one slope per slice: quantisation below 1/32767 of each slice's maximum
        per_slice_max = np.abs(truth.volume).reshape(len(truth.volume), -1).max(1)[:, None, None]
        assert (np.abs(vol.array - truth.volume) <= per_slice_max / 32767 * 1.01 + 1e-6).all()
        assert vol.suv is not None and vol.suv.units == "BQML"


def test_a_lazy_series_reads_the_same_values_slice_by_slice(phantom):
    from petsynth.data.dicom_series import SliceReader
    from petsynth.data.pairing import pair_slices

    _, found = phantom
    (ct_info,), (pet_info,) = found.of_modality("CT"), found.of_modality("PT")
    eager, lazy = load_series(ct_info), load_series(ct_info, lazy=True)
    assert isinstance(lazy.array, SliceReader) and lazy.array.shape == eager.array.shape
    np.testing.assert_array_equal(lazy.array[3], eager.array[3])
    np.testing.assert_array_equal(lazy.array[2:5], eager.array[2:5])
    np.testing.assert_array_equal(np.asarray(lazy.array), eager.array)
    assert lazy.geometry == eager.geometry and lazy.kvp == eager.kvp
    pet = load_series(pet_info, lazy=True)
    assert isinstance(pet.array, np.ndarray)  # PET is scaled to SUV as a whole
    a, b = pair_slices(pet, eager, fill=-1000.0, size=32), pair_slices(pet, lazy, fill=-1000.0, size=32)
    np.testing.assert_array_equal(a.source, b.source)
    np.testing.assert_array_equal(a.target, b.target)


def test_real_ge_slices_are_ordered_by_position_not_name(tmp_path):
    files = sorted((DATA / "raw_pet").glob("*.dcm"))
    for i, f in enumerate(files):  # names now sort in the opposite order of the positions
        shutil.copy(f, tmp_path / f"{i}.dcm")
    vol = load_series(sorted(tmp_path.glob("*.dcm")), modality="PT")
    z = [float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in vol.files]
    assert z == sorted(z) and np.allclose(np.diff(vol.positions_mm), 3.27, atol=0.01)
    assert vol.geometry.spacing[0] == pytest.approx(3.27, abs=0.01) and vol.geometry.spacing[1] == 4.6875
    assert 5.0 < vol.array.max() < 8.0  # SUVmax of the crop region lies in these slices


def test_identical_copies_collapse_and_mixed_slices_or_orientation_are_refused(tmp_path):
    f = sorted((DATA / "raw_pet").glob("*.dcm"))[0]
    shutil.copy(f, tmp_path / "a.dcm")
    shutil.copy(f, tmp_path / "b.dcm")
    with pytest.warns(UserWarning, match="copy of a.dcm"):  # the same image twice: used once
        vol = load_series([tmp_path / "a.dcm", tmp_path / "b.dcm"], modality="PT")
    assert vol.array.shape[0] == 1 and vol.files == [tmp_path / "a.dcm"]
    ds = pydicom.dcmread(f)
    pixels = ds.pixel_array.copy()
    pixels[0, 0] += 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "b.dcm")  # another image at the same position: two series mixed
    with pytest.raises(SeriesError, match=r"a\.dcm and .*b\.dcm lie at the same position .* different pixels"):
        load_series([tmp_path / "a.dcm", tmp_path / "b.dcm"], modality="PT")
    ds = pydicom.dcmread(f)
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(tmp_path / "b.dcm")
    with pytest.raises(SeriesError, match="ImageOrientationPatient"):
        load_series([tmp_path / "a.dcm", tmp_path / "b.dcm"], modality="PT")

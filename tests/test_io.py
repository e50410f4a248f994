"""petsynth.io: the general DICOM series writer and the NIfTI writer/reader (LPS <-> RAS)."""

from __future__ import annotations

import numpy as np
import nibabel as nib
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, PositronEmissionTomographyImageStorage

from petsynth.io.dicom import PixelEncoding, format_ds, slice_geometry, write_series
from petsynth.io.nifti import lps_to_ras_affine, read_nifti, write_nifti


def _affine(spacing=(2.0, 1.5, 3.0), origin=(-100.0, -80.0, -50.0), rot_deg=0.0):
    """(dx, dy, dz) spacing, optional rotation about z (an oblique-in-plane grid)."""
    a = np.eye(4)
    t = np.deg2rad(rot_deg)
    r = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    a[:3, :3] = r * np.array(spacing)[None, :]
    a[:3, 3] = origin
    return a


def _read_dir(path):
    return [pydicom.dcmread(p) for p in sorted(path.glob("*.dcm"))]


def test_format_ds_fits_16_chars():
    for x in (0.0, 1.0, -297.65625, 1.234567890123e-7, 3.88777472e8, 6588.0, 1 / 3, -1e-12, 123456789.123):
        s = format_ds(x)
        assert len(s) <= 16
        assert float(s) == pytest.approx(x, rel=1e-6, abs=1e-15)


def test_ct_series_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(-1000, 2000, size=(5, 6, 7)).astype(np.float32)
    aff = _affine()
    paths = write_series(tmp_path / "CT", vol, aff, modality="CT", header={"KVP": "120", "PatientName": "X^Y"},
                         uid_entropy=["t"])
    assert len(paths) == 5
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        assert ds.PixelRepresentation == 1 and ds.pixel_array.dtype == np.int16
        hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, vol[k])
        # geometry from the affine: position of slice k, orientation, spacing (row spacing first)
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], aff[:3, 3] + k * aff[:3, 2])
        np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [1.5, 2.0])
        assert float(ds.SliceThickness) == pytest.approx(3.0)
        assert ds.Rows == 6 and ds.Columns == 7
        assert ds.KVP == 120 and ds.PatientName == "X^Y"
    with open(paths[0], "rb") as fh:
        head = fh.read(132)
    assert head[128:132] == b"DICM"
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in paths}) == 5
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in paths}) == 1


def test_pet_per_slice_slope_uses_int16_range(tmp_path):
    rng = np.random.default_rng(1)
    vol = (rng.random((4, 8, 8)) * np.array([10.0, 1e3, 5e4, 0.0])[:, None, None]).astype(np.float32)
    paths = write_series(tmp_path / "PT", vol, _affine(), modality="PT", header={"Units": "BQML"})
    slopes = []
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        assert ds.SOPClassUID == PositronEmissionTomographyImageStorage
        assert float(ds.RescaleIntercept) == 0.0
        value = ds.pixel_array.astype(float) * float(ds.RescaleSlope)
        slope = float(ds.RescaleSlope)
        slopes.append(slope)
        np.testing.assert_allclose(value, vol[k], atol=slope / 2 + 1e-9)
        if vol[k].max() > 0:
            assert ds.pixel_array.max() in (32766, 32767)
    assert len(set(slopes)) == 4  # one slope per slice (the empty slice keeps 1)


def test_mr_unsigned_and_negative_refused(tmp_path):
    vol = np.abs(np.random.default_rng(2).normal(500, 100, (2, 4, 4))).astype(np.float32)
    p = write_series(tmp_path / "MR", vol, _affine(), modality="MR")[0]
    ds = pydicom.dcmread(p)
    assert ds.SOPClassUID == MRImageStorage and ds.PixelRepresentation == 0
    with pytest.raises(ValueError):
        PixelEncoding.per_slice(signed=False).encode(np.array([[-1.0, 2.0]]))
    with pytest.raises(ValueError):
        write_series(tmp_path / "XX", vol, _affine(), modality="US")


def test_instance_order_and_file_names(tmp_path):
    vol = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 3, 3), np.float32)
    aff = _affine()
    desc = write_series(tmp_path / "d", vol, aff, modality="CT", instance_order="descending")
    by_name = [pydicom.dcmread(p) for p in sorted(desc)]
    # file 0001 is the last (most superior) slice: names in reverse slice order
    z = [float(ds.ImagePositionPatient[2]) for ds in by_name]
    assert z == sorted(z, reverse=True)
    assert [ds.InstanceNumber for ds in by_name] == [1, 2, 3, 4, 5, 6]
    for naming in ("shuffled", "uid"):
        paths = write_series(tmp_path / naming, vol, aff, modality="CT", file_naming=naming, shuffle_seed=3,
                             uid_entropy=[naming])
        names = sorted(p.name for p in paths)
        z_by_name = [float(pydicom.dcmread(tmp_path / naming / n).ImagePositionPatient[2]) for n in names]
        assert sorted(z_by_name) != z_by_name or sorted(z_by_name, reverse=True) != z_by_name


def test_oblique_geometry_headers():
    aff = _affine(spacing=(0.8, 0.8, 4.0), rot_deg=20.0)
    g = slice_geometry(aff, 3)
    iop = np.array([float(v) for v in g["ImageOrientationPatient"]])
    row, col = iop[:3], iop[3:]
    assert np.linalg.norm(row) == pytest.approx(1) and row @ col == pytest.approx(0, abs=1e-9)
    np.testing.assert_allclose([float(v) for v in g["ImagePositionPatient"]], aff[:3, 3] + 3 * aff[:3, 2], atol=1e-6)


def test_uids_deterministic(tmp_path):
    vol = np.zeros((2, 3, 3), np.float32)
    a = write_series(tmp_path / "a", vol, _affine(), modality="CT", uid_entropy=["x", "1"])
    b = write_series(tmp_path / "b", vol, _affine(), modality="CT", uid_entropy=["x", "1"])
    c = write_series(tmp_path / "c", vol, _affine(), modality="CT", uid_entropy=["x", "2"])
    assert pydicom.dcmread(a[0]).SOPInstanceUID == pydicom.dcmread(b[0]).SOPInstanceUID
    assert pydicom.dcmread(a[0]).SOPInstanceUID != pydicom.dcmread(c[0]).SOPInstanceUID
    assert a[0].read_bytes() == b[0].read_bytes()


@pytest.mark.parametrize("rot", [0.0, 30.0])
def test_nifti_round_trip_and_ras(tmp_path, rot):
    rng = np.random.default_rng(4)
    vol = rng.random((5, 6, 7)).astype(np.float32)
    aff = _affine(rot_deg=rot)
    path = write_nifti(tmp_path / "v.nii.gz", vol, aff)
    back, aff_back = read_nifti(path)
    np.testing.assert_array_equal(back, vol)
    np.testing.assert_allclose(aff_back, aff, atol=1e-5)
    img = nib.load(str(path))
    assert img.shape == (7, 6, 5)  # (i, j, k) = (column, row, slice)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    # voxel (i, j, k) -> nibabel's RAS point = (-x, -y, z) of the LPS point
    ijk = np.array([2, 4, 3, 1.0])
    lps = aff @ ijk
    ras = img.affine @ ijk
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)
    np.testing.assert_allclose(img.get_fdata()[2, 4, 3], vol[3, 4, 2], rtol=1e-6)
    np.testing.assert_allclose(lps_to_ras_affine(aff), img.affine, atol=1e-4)


def test_nifti_labels_dtype_and_determinism(tmp_path):
    lab = np.random.default_rng(5).integers(0, 20, (3, 4, 5)).astype(np.uint8)
    p1 = write_nifti(tmp_path / "a.nii.gz", lab, np.eye(4), dtype=np.uint8)
    p2 = write_nifti(tmp_path / "b.nii.gz", lab, np.eye(4), dtype=np.uint8)
    assert nib.load(str(p1)).get_data_dtype() == np.uint8
    assert p1.read_bytes() == p2.read_bytes()
    with pytest.raises(ValueError):
        write_nifti(tmp_path / "c.nii.gz", lab[0], np.eye(4))

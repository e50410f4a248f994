"""The DICOM variants hospital archives hold, each read against the classic phantom series it was made from
(``tests/dicom_variants.py``): transfer syntaxes (big endian, deflated, JPEG-LS, RLE, JPEG 2000), enhanced
multi-frame CT / PET / MR (built here from the functional group macros, and by highdicom's legacy converter),
gantry-tilted CT (against the analytic object it samples)."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian,
                         JPEG2000Lossless, JPEGLSLossless, JPEGLSNearLossless, RLELossless)

from dicom_variants import enhanced_image, legacy_converted, rewrite, series_files, tilted_ct
from petsynth.data.dicom_index import scan_dicom
from petsynth.data.dicom_series import SeriesError, load_series
from petsynth.data.prepare import prepare_dataset
from petsynth.data.store import open_dataset
from petsynth.phantom import write_studies

KEY = b"variants-test-key"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    """Modality -> the folder of one classic phantom series (CT and PT of one ct2pet study, MR of an mr2pet one)."""
    root = tmp_path_factory.mktemp("variants")
    write_studies(root / "ct", task="ct2pet", studies=1, seed=71, fmt="dicom", preset="tiny")
    write_studies(root / "mr", task="mr2pet", studies=1, seed=72, fmt="dicom", preset="tiny")
    ct_study = next(p for p in (root / "ct").iterdir() if p.is_dir())
    mr_study = next(p for p in (root / "mr").iterdir() if p.is_dir())
    return {"CT": ct_study / "CT", "PT": ct_study / "PT", "MR": mr_study / "MR"}


def _only_series(folder: Path):
    studies, skipped = scan_dicom([folder])
    assert not skipped, [(s.path.name, s.reason) for s in skipped]
    assert len(studies) == 1 and len(studies[0].series) == 1
    return studies[0].series[0]


def _assert_same_volume(variant, classic, atol=0.0):
    np.testing.assert_allclose(np.asarray(variant.array), np.asarray(classic.array), rtol=0, atol=atol)
    assert variant.geometry == classic.geometry
    np.testing.assert_allclose(variant.positions_mm, classic.positions_mm, rtol=0, atol=1e-9)
    assert variant.suv == classic.suv and variant.kvp == classic.kvp


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    JPEGLSLossless, RLELossless, JPEG2000Lossless], ids=lambda s: s.name)
@pytest.mark.parametrize("modality", ["CT", "PT"])
def test_lossless_transfer_syntaxes_read_as_the_classic_series(phantoms, tmp_path, modality, syntax):
    files = series_files(phantoms[modality])
    rewrite(files, tmp_path / "variant", syntax)
    assert pydicom.dcmread(tmp_path / "variant" / files[0].name).file_meta.TransferSyntaxUID == syntax
    series = _only_series(tmp_path / "variant")
    _assert_same_volume(load_series(series), load_series(files))


def test_jpeg_ls_near_lossless_stays_within_its_stated_error(phantoms, tmp_path):
    """JPEG-LS near-lossless guarantees |decoded - stored| <= NEAR for every pixel: rescaled, NEAR x slope."""
    files = series_files(phantoms["CT"])
    out = tmp_path / "near"
    out.mkdir()
    for path in files:
        ds = pydicom.dcmread(path)
        ds.compress(JPEGLSNearLossless, jls_error=3)
        ds.save_as(out / path.name, enforce_file_format=True)
    variant, classic = load_series(_only_series(out)), load_series(files)
    slope = float(pydicom.dcmread(files[0]).get("RescaleSlope", 1))
    error = np.abs(np.asarray(variant.array) - np.asarray(classic.array))
    assert error.max() <= 3 * slope + 1e-3 and error.max() > 0  # lossy, within the bound


@pytest.mark.parametrize("modality", ["CT", "PT", "MR"])
def test_enhanced_multiframe_image_reads_as_the_classic_series(phantoms, tmp_path, modality):
    """One Enhanced CT / PET / MR file, frames shuffled, geometry and rescale per frame in functional groups,
    PET units and decay correction stated the enhanced way: the same volume, grid and SUV factor."""
    files = series_files(phantoms[modality])
    enhanced_image(files, tmp_path / "enhanced" / "image.dcm", seed=3)
    series = _only_series(tmp_path / "enhanced")
    assert series.num_files == 1 and series.images == len(files) and series.modality == modality
    if modality == "PT":
        assert series.units == "BQML" and series.attenuation_corrected  # as the classic PET, for choosing it
    _assert_same_volume(load_series(series), load_series(files))


@pytest.mark.parametrize("modality", ["CT", "PT", "MR"])
def test_legacy_converted_enhanced_image_by_highdicom_reads_as_the_classic_series(phantoms, tmp_path, modality):
    pytest.importorskip("highdicom")
    files = series_files(phantoms[modality])
    legacy_converted(files, tmp_path / "legacy" / "image.dcm")
    series = _only_series(tmp_path / "legacy")
    assert series.num_files == 1 and series.images == len(files)
    _assert_same_volume(load_series(series), load_series(files))


def test_enhanced_study_prepares_the_classic_study_dataset(phantoms, tmp_path):
    """Enhanced CT and enhanced PET through prepare: the dataset the classic study gives, array for array."""
    classic = phantoms["CT"].parent
    enhanced = tmp_path / "raw" / classic.name
    enhanced_image(series_files(classic / "CT"), enhanced / "CT" / "ct.dcm", seed=1)
    enhanced_image(series_files(classic / "PT"), enhanced / "PT" / "pet.dcm", seed=2)
    shutil.copytree(classic / "truth", enhanced / "truth")
    plain = prepare_dataset([classic], tmp_path / "plain", "ct2pet", size=32, key=KEY)
    multi = prepare_dataset([enhanced], tmp_path / "multi", "ct2pet", size=32, key=KEY)
    assert [r.status for r in multi.results] == ["ok"], multi.results
    a, b = open_dataset(tmp_path / "plain"), open_dataset(tmp_path / "multi")
    assert len(a) == len(b) == sum(r.slices for r in plain.results) > 0
    for i in range(len(a)):
        for key in ("source", "target", "truth", "labels"):
            np.testing.assert_array_equal(a[i][key], b[i][key])


def test_enhanced_image_with_a_frame_without_position_names_the_file_and_frame(phantoms, tmp_path):
    path = enhanced_image(series_files(phantoms["CT"]), tmp_path / "bad" / "image.dcm")
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[4].PlanePositionSequence
    ds.save_as(path)
    with pytest.raises(SeriesError, match=r"image\.dcm: frame 5 of \d+ has no ImagePositionPatient"):
        load_series([path])
    ds.PerFrameFunctionalGroupsSequence = ds.PerFrameFunctionalGroupsSequence[:3]  # fewer groups than frames
    ds.save_as(path)
    studies, skipped = scan_dicom([path.parent])
    assert not studies and "3 items in the Per-Frame Functional Groups Sequence" in skipped[0].reason


def test_truncated_enhanced_image_is_skipped_at_scan(phantoms, tmp_path):
    path = enhanced_image(series_files(phantoms["CT"]), tmp_path / "cut" / "image.dcm")
    path.write_bytes(path.read_bytes()[:-1000])
    studies, skipped = scan_dicom([path.parent])
    assert not studies and skipped[0].reason.startswith("truncated")


def _ball(volume) -> tuple[np.ndarray, float]:
    """World centroid (mm) and volume (ml) of the voxels above 150 HU."""
    g, array = volume.geometry, np.asarray(volume.array)
    k, j, i = np.nonzero(array > 150)
    return g.index_to_world(np.stack([i, j, k], axis=-1).astype(float)).mean(axis=0), k.size * g.voxel_volume_ml()


@pytest.mark.parametrize("tilt", [15.0, -25.0])
def test_gantry_tilted_ct_is_resampled_in_world_coordinates(tmp_path, tilt):
    """A tilted acquisition samples a known object (a 14 mm ball of 300 HU at (6, -4, 30) mm in a water
    cylinder) on sheared slices; the loaded volume must put it where it is, at its size, and report the tilt."""
    files, value = tilted_ct(tmp_path / "tilted", tilt, shape=(30, 64, 64), pixel_mm=1.5, table_step_mm=2.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = load_series(_only_series(tmp_path / "tilted"))
    assert volume.meta["gantry_tilt_deg"] == pytest.approx(abs(tilt), abs=0.01)
    assert any("gantry tilt" in str(w.message) for w in caught)
    centroid, ml = _ball(volume)
    np.testing.assert_allclose(centroid, [6.0, -4.0, 30.0], atol=0.5)  # uncorrected: 8 to 12 mm off
    assert ml == pytest.approx(4 / 3 * np.pi * 14.0 ** 3 / 1000, rel=0.05)
    g = volume.geometry
    assert np.allclose(g.direction_matrix, np.eye(3), atol=1e-9) and g.spacing == pytest.approx((2.0, 1.5, 1.5))
    # voxels whose whole neighbourhood lies inside one region of the object carry its value exactly
    nz, ny, nx = g.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    centres = g.index_to_world(np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float))
    truth = value(*centres.T).reshape(g.shape)
    near = [value(*(centres + d).T).reshape(g.shape) for d in np.eye(3) * 3.0 for d in (d, -d)]
    uniform = np.all([n == truth for n in near], axis=0) & (truth > -1000) & _inside_stack(files, centres, g.shape)
    assert uniform.sum() > 5000
    np.testing.assert_allclose(np.asarray(volume.array)[uniform], truth[uniform], atol=1.0)


def _inside_stack(files: list[Path], points: np.ndarray, shape) -> np.ndarray:
    """Whether each point lies at least one voxel inside the sheared stack the files' headers describe."""
    first, last = (pydicom.dcmread(f) for f in (files[0], files[-1]))
    p0, p1 = (np.array([float(v) for v in ds.ImagePositionPatient]) for ds in (first, last))
    row, col = np.array(first.ImageOrientationPatient[:3], float), np.array(first.ImageOrientationPatient[3:], float)
    dy, dx = (float(v) for v in first.PixelSpacing)
    affine = np.column_stack([dx * row, dy * col, (p1 - p0) / (len(files) - 1)])
    index = np.linalg.solve(affine, (points - p0).T).T  # (i, j, k) in the stack
    size = np.array([first.Columns, first.Rows, len(files)])
    return np.all((index >= 1) & (index <= size - 2), axis=1).reshape(shape)


def test_untilted_ct_is_not_resampled(tmp_path):
    files, _ = tilted_ct(tmp_path / "straight", 0.0, shape=(12, 32, 32))
    volume = load_series(files)
    assert "gantry_tilt_deg" not in volume.meta and volume.geometry.shape == (12, 32, 32)
    assert np.array_equal(np.asarray(volume.array)[3], pydicom.dcmread(files[3]).pixel_array - 1024.0)


def test_enhanced_ct_translates_as_the_classic_ct(phantoms, tmp_path):
    from petsynth.io.nifti import read_nifti
    from petsynth.translation import translate

    enhanced_image(series_files(phantoms["CT"]), tmp_path / "enhanced" / "ct.dcm", seed=5)
    multi = translate("phantom-cpdm", tmp_path / "enhanced", tmp_path / "multi", steps=1)
    plain = translate("phantom-cpdm", phantoms["CT"], tmp_path / "plain", steps=1)
    np.testing.assert_array_equal(read_nifti(multi.files["nifti"])[0], read_nifti(plain.files["nifti"])[0])
    assert len(list((tmp_path / "multi" / "dicom").glob("*.dcm"))) == len(series_files(phantoms["CT"]))

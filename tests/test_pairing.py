"""Pairing in world coordinates: exact on a linear field, drops uncovered slices, fills with air."""

import numpy as np
import pytest

from petsynth.data.dicom_series import SeriesVolume
from petsynth.data.geometry import Geometry
from petsynth.data.pairing import pair_slices, resize_inplane


def _series(array, geometry, positions=None, irregular=False):
    if positions is None:
        positions = np.arange(array.shape[0]) * geometry.spacing[0] + geometry.origin[2]
    return SeriesVolume(modality="CT", array=array.astype(np.float32), geometry=geometry,
                        positions_mm=np.asarray(positions, float), irregular=irregular, files=[])


def _linear_field(g: Geometry) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in g.shape), indexing="ij")
    pts = g.index_to_world(np.stack([i, j, k], -1).reshape(-1, 3)).reshape(*g.shape, 3)
    return 2.0 * pts[..., 0] - 3.0 * pts[..., 1] + 5.0 * pts[..., 2] + 7.0


@pytest.mark.parametrize("irregular", [False, True])
def test_linear_ct_is_resampled_exactly_onto_pet_slices_and_uncovered_slices_drop(irregular):
    ct_geom = Geometry(shape=(40, 96, 96), spacing=(2.5, 2.0, 2.0), origin=(-95.0, -95.0, -50.0))
    pet_geom = Geometry(shape=(30, 40, 40), spacing=(4.0, 4.4, 4.4), origin=(-85.8, -85.8, -70.0))
    ct = _series(_linear_field(ct_geom), ct_geom)
    pet = _series(np.arange(30, dtype=np.float32)[:, None, None] * np.ones((30, 40, 40)), pet_geom,
                  irregular=irregular)  # same positions, taken slice by slice when flagged irregular
    pairs = pair_slices(pet, ct, fill=-1000.0)
    # CT covers z -50 .. 47.5 (+-1.25 mm): PET slices at -70 + 4 k inside that
    z = -70.0 + 4.0 * np.arange(30)
    expected = np.nonzero((z >= -51.25) & (z <= 48.75))[0]
    assert pairs.target_index.tolist() == expected.tolist()
    assert np.allclose(pairs.z_mm, z[expected])
    assert np.allclose(pairs.target[:, 0, 0], expected)  # the target slices themselves, in order
    truth = _linear_field(pet_geom)[expected]
    np.testing.assert_allclose(pairs.source, truth, atol=1e-2)


def test_outside_the_ct_field_is_air():
    ct_geom = Geometry(shape=(10, 20, 20), spacing=(3.0, 2.0, 2.0), origin=(-19.0, -19.0, 0.0))
    ct = _series(np.full((10, 20, 20), 40.0), ct_geom)
    pet_geom = Geometry(shape=(5, 32, 32), spacing=(3.0, 4.0, 4.0), origin=(-62.0, -62.0, 3.0))
    pet = _series(np.ones((5, 32, 32)), pet_geom)
    pairs = pair_slices(pet, ct, fill=-1000.0, size=64)
    assert pairs.source.shape == (5, 64, 64) and pairs.spacing_mm == (2.0, 2.0)
    assert pairs.source[:, 0, 0].tolist() == [-1000.0] * 5 and np.isclose(pairs.source[:, 32, 32], 40.0).all()


def test_resize_keeps_a_constant_and_the_mean():
    x = np.random.default_rng(0).random((2, 128, 128)).astype(np.float32)
    assert np.allclose(resize_inplane(np.full((1, 50, 50), 3.0), 256), 3.0)
    assert resize_inplane(x, 64).mean() == pytest.approx(x.mean(), rel=1e-3)


@pytest.mark.parametrize("single_slice", [False, True])
def test_resample_matches_scipy_map_coordinates_on_an_oblique_grid(single_slice):
    from scipy.ndimage import map_coordinates
    from scipy.spatial.transform import Rotation

    from petsynth.data.geometry import resample

    rng = np.random.default_rng(3)
    src = Geometry((1 if single_slice else 9, 20, 24), (2.5, 1.5, 1.2), (-14.0, -12.0, 3.0))
    volume = rng.normal(size=src.shape).astype(np.float32)
    rot = Rotation.from_euler("xyz", [4, -3, 7] if not single_slice else [0, 0, 9], degrees=True).as_matrix()
    dst = Geometry((5 if not single_slice else 1, 17, 19), (1.7, 1.3, 1.4), (-11.0, -9.0, 5.0 if not single_slice else 3.2),
                   direction=tuple(rot.ravel()))
    got = resample(volume, src, dst, fill=-1000.0, chunk_slices=2)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in dst.shape), indexing="ij")
    pts = dst.index_to_world(np.stack([i, j, k], -1).reshape(-1, 3))
    idx = (np.linalg.inv(src.affine) @ np.c_[pts, np.ones(len(pts))].T)[:3]  # (x, y, z) source indices
    inside = np.all([(idx[a] >= -1e-6) & (idx[a] <= n - 1 + 1e-6) for a, n in zip(range(3), src.shape[::-1])], axis=0)
    if single_slice:
        inside = np.all([(idx[a] >= -1e-6) & (idx[a] <= n - 1 + 1e-6) for a, n in zip(range(2), src.shape[:0:-1])],
                        axis=0) & (np.abs(idx[2]) <= 0.5)
        idx[2] = 0.0
    want = map_coordinates(volume, idx[::-1], order=1, mode="nearest").reshape(dst.shape)
    inside = inside.reshape(dst.shape)
    assert inside.any() and (~inside).any()
    np.testing.assert_allclose(got[inside], want[inside], atol=5e-4)  # float32 grid coordinates
    np.testing.assert_allclose(got[~inside & (np.abs(got + 1000) < 1e-3)], -1000.0)


class _Slices:
    """A volume seen only slice by slice (like a lazy DICOM reader), to check resample never needs it whole."""

    def __init__(self, volume):
        self.volume, self.shape, self.reads = volume, volume.shape, 0

    def __getitem__(self, k):
        assert isinstance(k, int), "read one slice at a time"
        self.reads += 1
        return self.volume[k].copy()


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_parallel_grids_match_scipy_with_the_fill_blended_at_the_edges(mode):
    from scipy.ndimage import map_coordinates

    from petsynth.data.geometry import resample

    rng = np.random.default_rng(5)
    src = Geometry((9, 20, 24), (2.5, 1.5, 1.2), (-14.0, -12.0, 3.0))
    volume = rng.normal(size=src.shape).astype(np.float32) * 100
    dst = Geometry((13, 23, 19), (1.7, 1.3, 1.9), (-16.1, -15.2, 1.4))  # overhangs the source on every side
    slices = _Slices(volume)
    got = resample(slices, src, dst, fill=-1000.0, mode=mode)
    assert slices.reads <= src.shape[0]  # each source slice read once at most
    np.testing.assert_array_equal(got, resample(volume, src, dst, fill=-1000.0, mode=mode))
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in dst.shape), indexing="ij")
    pts = dst.index_to_world(np.stack([i, j, k], -1).reshape(-1, 3))
    idx = (np.linalg.inv(src.affine) @ np.c_[pts, np.ones(len(pts))].T)[:3][::-1]  # (z, y, x) source indices
    if mode == "nearest":
        idx = np.rint(idx)
    # outside the source, samples blend with the fill as if the volume were padded with it
    want = map_coordinates(volume, idx, order=1, mode="grid-constant", cval=-1000.0).reshape(dst.shape)
    assert (want == -1000.0).any() and (np.abs(want + 1000) > 1).any()
    np.testing.assert_allclose(got, want, atol=0.05)  # float32 coordinates, values up to ~1000


def test_a_non_square_target_is_cropped_to_its_centred_square():
    ct_geom = Geometry(shape=(40, 96, 96), spacing=(2.5, 2.0, 2.0), origin=(-95.0, -95.0, -50.0))
    pet_geom = Geometry(shape=(30, 40, 34), spacing=(4.0, 4.4, 4.4), origin=(-85.8, -85.8, -70.0))
    ct, pet = _series(_linear_field(ct_geom), ct_geom), _series(_linear_field(pet_geom), pet_geom)
    pairs = pair_slices(pet, ct, fill=-1000.0, size=34)
    kept = pet.array[pairs.target_index][:, 3:37, :]  # the middle 34 of the 40 rows
    assert pairs.target.shape[1:] == (34, 34) and len(pairs.target_index) > 0
    np.testing.assert_array_equal(pairs.target, kept)
    # the CT is sampled at the world positions of the kept PET pixels (the field is linear: exact)
    np.testing.assert_allclose(pairs.source, kept, atol=1e-2)
    assert pairs.spacing_mm == pytest.approx((4.4, 4.4))

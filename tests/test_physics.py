"""Physics against published tables, closed forms and scikit-image's Radon transform."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from petsynth.physics import ParallelProjector, attenuation_map, fbp, hu_to_mu, mlem, poisson_counts

# Transcribed here from the papers (Carney et al. 2006 Table 1; Abella et al. 2012), independent of
# petsynth.physics.constants.
CARNEY = {80: (3.64e-5, 6.26e-2, 50), 100: (4.43e-5, 5.44e-2, 52), 110: (4.92e-5, 4.88e-2, 43),
          120: (5.10e-5, 4.71e-2, 47), 130: (5.51e-5, 4.24e-2, 37), 140: (5.64e-5, 4.08e-2, 30)}
ABELLA_MID = {80: 3.28e-5, 100: 4.0e-5, 120: 4.71e-5, 140: 5.59e-5}
ABELLA_HIGH = {80: 0.41e-5, 100: 0.5e-5, 120: 0.589e-5, 140: 0.698e-5}


@pytest.mark.parametrize("kvp", sorted(CARNEY))
def test_bilinear_at_table_points(kvp):
    a, b, bp = CARNEY[kvp]
    hu = np.array([-1000.0, -500.0, 0.0, bp, 500.0, 1000.0, 2000.0])
    expected = np.where(hu <= bp, 9.6e-5 * (hu + 1000), a * (hu + 1000) + b)
    np.testing.assert_allclose(hu_to_mu(hu, kvp, "bilinear"), expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kvp", sorted(CARNEY))
def test_bilinear_continuous_at_break_point(kvp):
    bp = CARNEY[kvp][2]
    below, above = hu_to_mu(np.array([bp - 1e-3, bp + 1e-3]), kvp, "bilinear")
    # the published a, b, BP are rounded: the two branches meet to within 2e-5 cm^-1 (0.02 %)
    assert abs(above - below) < 2.5e-5


@pytest.mark.parametrize("kvp", sorted(ABELLA_MID))
def test_trilinear_at_table_points_and_continuity(kvp):
    mid, high = ABELLA_MID[kvp], ABELLA_HIGH[kvp]
    hu = np.array([-1000.0, -400.0, 0.0, 400.0, 1000.0, 1800.0])
    expected = np.array([0.0, 0.093 - 400 * 9.3e-5, 0.093, 0.093 + 400 * mid, 0.093 + 1000 * mid,
                         0.093 + 1000 * mid + 800 * high])
    np.testing.assert_allclose(hu_to_mu(hu, kvp, "trilinear"), expected, rtol=1e-6, atol=1e-8)
    for brk in (0.0, 1000.0):
        lo, hi = hu_to_mu(np.array([brk - 1e-4, brk + 1e-4]), kvp, "trilinear")
        assert abs(hi - lo) < 1e-7


def test_interpolation_between_tabulated_kvp():
    hu = np.linspace(-1000, 2500, 50)
    np.testing.assert_allclose(hu_to_mu(hu, 90, "bilinear"),
                               0.5 * (hu_to_mu(hu, 80, "bilinear") + hu_to_mu(hu, 100, "bilinear")), rtol=1e-6)
    np.testing.assert_allclose(hu_to_mu(hu, 125, "trilinear"),
                               0.75 * hu_to_mu(hu, 120, "trilinear") + 0.25 * hu_to_mu(hu, 140, "trilinear"),
                               rtol=1e-6)


def test_clip_air_and_reject_bad_input():
    assert hu_to_mu(np.array([-1024.0, -3000.0]), 120).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="70"):
        hu_to_mu(np.zeros(3), 70)
    with pytest.raises(ValueError, match="method"):
        hu_to_mu(np.zeros(3), 120, method="linear")
    with pytest.raises(ValueError, match="path_length"):
        attenuation_map(np.zeros(3), 120, path_length_cm=0)


def test_numpy_and_torch_in_and_out_with_per_image_kvp():
    hu = np.random.default_rng(0).uniform(-1000, 2000, (3, 1, 4, 4)).astype(np.float32)
    out_np = hu_to_mu(hu, 120)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    kvps = torch.tensor([80.0, 120.0, 140.0]).view(3, 1, 1, 1)
    out_t = hu_to_mu(torch.from_numpy(hu), kvps, "trilinear")
    assert isinstance(out_t, torch.Tensor) and out_t.shape == (3, 1, 4, 4)
    for i, k in enumerate((80, 120, 140)):
        np.testing.assert_allclose(out_t[i].numpy(), hu_to_mu(hu[i], k, "trilinear"), rtol=1e-6)
    assert isinstance(hu_to_mu(np.int16(40), 100), np.ndarray)  # integer HU (int16 CT) accepted


def test_attenuation_map_values():
    hu = np.array([-1000.0, 0.0])
    np.testing.assert_allclose(attenuation_map(hu, 120), [1.0, math.exp(-0.096)], rtol=1e-6)
    np.testing.assert_allclose(attenuation_map(hu, 120, path_length_cm=0.4), [1.0, math.exp(-0.0384)],
                               rtol=1e-6)
    m = attenuation_map(torch.tensor([0.0, 1000.0]), 140, method="trilinear")
    np.testing.assert_allclose(m.numpy(), np.exp(-np.array([0.093, 0.093 + 0.0559])), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(kvp=st.floats(80, 140), method=st.sampled_from(["bilinear", "trilinear"]))
def test_mu_is_monotone_in_hu_and_non_negative(kvp, method):
    hu = np.linspace(-1200, 3000, 400)
    mu = hu_to_mu(hu, kvp, method)
    assert (mu >= 0).all()
    assert (np.diff(mu) >= -3e-5).all()  # monotone up to the rounding of the published break points


# ---------------------------------------------------------------------------------------------- projection

def _blobs(n: int) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2
    img = np.exp(-((xx - c - 8) ** 2 + (yy - c + 5) ** 2) / 30.0) + 0.5 * np.exp(-((xx - c + 9) ** 2 + (yy - c - 6) ** 2) / 60.0)
    return img.astype(np.float32)


def test_forward_projection_matches_scikit_image_radon():
    from skimage.transform import radon

    n, views = 65, 60  # odd size: both put the rotation centre at the central pixel
    img = _blobs(n)
    ours = ParallelProjector(n, views, use_matrix=False).forward(torch.from_numpy(img)[None])[0].numpy()
    img *= ParallelProjector(n).fov_mask().numpy()
    theta_deg = -np.arange(views) * 180.0 / views  # our angle runs the other way round
    reference = radon(img, theta=theta_deg, circle=True).T
    np.testing.assert_allclose(ours, reference, atol=1e-4 * reference.max())


def test_projection_of_a_disk_is_the_chord_length():
    n, r = 128, 30.0
    c = (n - 1) / 2
    yy, xx = np.mgrid[:n, :n]
    # area-weighted disk (4x4 supersampling) so the discretised object is close to the continuous one
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    disk = np.zeros((n, n))
    for dy in sub:
        for dx in sub:
            disk += ((xx + dx - c) ** 2 + (yy + dy - c) ** 2 <= r ** 2)
    disk /= 16
    sino = ParallelProjector(n, 16).forward(torch.from_numpy(disk.astype(np.float32))[None])[0].numpy()
    s = np.arange(n) - c
    chord = 2 * np.sqrt(np.clip(r ** 2 - s ** 2, 0, None))
    inner = np.abs(s) < r - 4  # within 4 px of the rim, one-pixel ray sampling errs by up to 2 %
    np.testing.assert_allclose(sino[:, inner], np.broadcast_to(chord[inner], sino[:, inner].shape), rtol=0.01)


@pytest.mark.parametrize("use_matrix", [False, True])
def test_back_projection_is_the_exact_adjoint(use_matrix):
    gen = torch.Generator().manual_seed(0)
    proj = ParallelProjector(32, 24, use_matrix=use_matrix)
    x, y = torch.randn(3, 32, 32, generator=gen), torch.randn(3, 24, 32, generator=gen)
    lhs = (proj.forward(x).double() * y.double()).sum()
    rhs = (x.double() * proj.back(y).double()).sum()
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)


def test_sparse_matrix_and_sampling_paths_agree():
    x = torch.rand(2, 40, 40)
    y = torch.rand(2, 30, 40)
    sampled, matrix = ParallelProjector(40, 30, use_matrix=False), ParallelProjector(40, 30, use_matrix=True)
    assert torch.allclose(sampled.forward(x), matrix.forward(x), atol=1e-4)
    assert torch.allclose(sampled.back(y), matrix.back(y), atol=1e-4)


def test_fbp_recovers_a_smooth_object():
    n = 96
    img = _blobs(n)
    proj = ParallelProjector(n, 144)
    rec = fbp(proj, proj.forward(torch.from_numpy(img)[None]), filter="ramp")[0].numpy()
    fov = proj.fov_mask().numpy()
    assert np.abs(rec - img)[fov].max() < 0.03 * img.max()
    smooth = fbp(proj, proj.forward(torch.from_numpy(img)[None]), filter="hann")[0].numpy()
    assert abs(smooth[fov].sum() - img[fov].sum()) < 0.005 * img.sum()  # windowing keeps the DC gain


def test_mlem_with_attenuation_converges_to_the_activity():
    n = 48
    truth = torch.from_numpy(_blobs(n))[None] * 5
    proj = ParallelProjector(n, 72)
    atten = torch.exp(-0.1 * proj.forward(torch.full((1, n, n), 0.3) * proj.fov_mask()))
    expected = atten * proj.forward(truth) + 0.05
    rec = mlem(proj, expected, iterations=200, multiplicative=atten, additive=torch.full_like(expected, 0.05))
    err = (rec - truth).abs()[0][proj.fov_mask()]
    assert err.mean() < 0.02 * truth.max()
    with pytest.raises(ValueError):
        mlem(proj, expected, iterations=-1)


def test_poisson_counts_have_poisson_moments():
    gen = torch.Generator().manual_seed(1)
    lam = torch.full((200_000,), 7.5)
    k = poisson_counts(lam, generator=gen)
    assert abs(k.mean().item() - 7.5) < 0.05 and abs(k.var().item() - 7.5) < 0.1
    assert torch.equal(k, k.round())
    with pytest.raises(ValueError):
        poisson_counts(torch.tensor([-1.0]))


def test_shape_errors_are_clear():
    proj = ParallelProjector(16, 8)
    with pytest.raises(ValueError, match=r"\(B, 16, 16\)"):
        proj.forward(torch.zeros(1, 15, 16))
    with pytest.raises(ValueError, match=r"\(B, 8, 16\)"):
        proj.back(torch.zeros(1, 9, 16))

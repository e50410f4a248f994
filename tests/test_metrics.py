"""petsynth.metrics against independent references (scikit-image, pytorch-msssim, numpy, sewar
and lpips when installed), on real DICOM images embedded in pydicom (no download)."""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from scipy.ndimage import gaussian_filter

from petsynth import metrics
from petsynth.metrics import perceptual as lpips_module

TOL = 1e-4  # required agreement with the references


# --- real images ------------------------------------------------------------------------------------


def _embedded_image(name: str) -> np.ndarray:
    path = get_testdata_file(name, download=False)  # files shipped inside pydicom only
    if path is None:
        pytest.skip(f"{name} is not embedded in this pydicom")
    return pydicom.dcmread(path).pixel_array.astype(np.float64)


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    """A real CT slice, 128x128, stored values 128..2191 (pydicom's CT_small.dcm)."""
    return _embedded_image("CT_small.dcm")


@pytest.fixture(scope="module")
def mr() -> np.ndarray:
    """A real abdominal MR slice, 300x484 (pydicom's examples_overlay.dcm): large enough for MS-SSIM."""
    return _embedded_image("examples_overlay.dcm")


def _distortions(img: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Noisy, blurred, and blurred + noisy versions of ``img`` (deterministic)."""
    rng = np.random.default_rng(seed)
    span = float(img.max() - img.min())
    return [
        img + rng.normal(0, 0.05 * span, img.shape),
        gaussian_filter(img, 1.2),
        gaussian_filter(img, 0.8) + rng.normal(0, 0.02 * span, img.shape),
    ]


def _batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images))[:, None]


def _pairs(img: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray], float]:
    dist = _distortions(img)
    return _batch(dist), _batch([img] * len(dist)), dist, float(img.max() - img.min())


# --- SSIM -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ct", "mr"])
def test_ssim_matches_skimage_and_pytorch_msssim(name, request):
    from pytorch_msssim import ssim as pm_ssim
    from skimage.metrics import structural_similarity

    img = request.getfixturevalue(name)
    pred, target, dist, span = _pairs(img)
    ours = metrics.ssim(pred, target, data_range=span)
    sk = torch.tensor(
        [
            structural_similarity(
                d, img, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=span
            )
            for d in dist
        ],
        dtype=torch.float64,
    )
    pm = pm_ssim(pred, target, data_range=span, size_average=False)
    assert ours.shape == (3,) and ours.dtype == torch.float64
    assert (ours - sk).abs().max() < TOL  # measured ~1e-15
    assert (ours - pm).abs().max() < TOL  # measured ~4e-6 (pytorch_msssim's float32 window)
    assert (sk - pm).abs().max() < TOL  # the two references agree with each other
    assert torch.all(ours < 1) and ours[1] > ours[0]  # blur keeps more structure than 5% noise


def test_ssim_cpdm_convention_matches_skimage_defaults(ct):
    from skimage.metrics import structural_similarity

    stored = ct  # stored 16-bit values, as in the CPDM evaluation
    dist = [np.round(d) for d in _distortions(stored)]
    pred = metrics.to_cpdm_scale(_batch(dist))
    target = metrics.to_cpdm_scale(_batch([stored] * 3))
    ours = metrics.ssim(pred, target, data_range=1.0, convention="cpdm")
    sk = [structural_similarity(d / 32767, stored / 32767, data_range=1.0) for d in dist]
    assert np.abs(ours.numpy() - np.array(sk)).max() < TOL  # measured ~2e-16
    assert metrics.CPDM_PET_SCALE == 32767
    # with the images' own range the window matters: the two conventions give different numbers
    span = float(target.max() - target.min())
    ours = metrics.ssim(pred, target, data_range=span, convention="cpdm")
    sk = [structural_similarity(d / 32767, stored / 32767, data_range=span) for d in dist]
    assert np.abs(ours.numpy() - np.array(sk)).max() < TOL
    assert (ours - metrics.ssim(pred, target, data_range=span)).abs().min() > 1e-3


def test_ssim_identical_and_per_image_data_range(ct):
    x = _batch([ct, ct * 0.5])
    assert torch.allclose(metrics.ssim(x, x, data_range=2000.0), torch.ones(2, dtype=torch.float64))
    pred, target, _, span = _pairs(ct)
    ranges = torch.tensor([span, 2 * span, 0.5 * span])
    batched = metrics.ssim(pred, target, data_range=ranges)
    single = torch.cat(
        [metrics.ssim(pred[i : i + 1], target[i : i + 1], data_range=float(r)) for i, r in enumerate(ranges)]
    )
    assert torch.allclose(batched, single, rtol=0, atol=1e-12)


# --- MS-SSIM ----------------------------------------------------------------------------------------


def test_ms_ssim_matches_pytorch_msssim(ct, mr):
    from pytorch_msssim import ms_ssim as pm_ms_ssim

    ct_256 = torch.nn.functional.interpolate(  # deterministic bilinear upsampling: even sizes at all scales
        torch.from_numpy(ct)[None, None], size=(256, 256), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    for img in (ct_256, mr):  # mr (300x484) has odd sizes at the coarse scales
        pred, target, _, span = _pairs(img)
        ours = metrics.ms_ssim(pred, target, data_range=span)
        ref = pm_ms_ssim(pred, target, data_range=span, size_average=False)
        assert ours.shape == (3,)
        assert (ours - ref).abs().max() < TOL  # measured ~2e-6, from pytorch_msssim's float32 window
        taps = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
        win64 = torch.from_numpy(taps / taps.sum()).view(1, 1, 1, 11)  # the same window in float64
        ref64 = pm_ms_ssim(pred, target, data_range=span, size_average=False, win=win64)
        assert (ours - ref64).abs().max() < 1e-10  # measured 0
    assert torch.allclose(metrics.ms_ssim(target, target, data_range=span), torch.ones(3, dtype=torch.float64))


# --- MAE, PSNR --------------------------------------------------------------------------------------


def test_psnr_and_mae_match_references(ct):
    from skimage.metrics import peak_signal_noise_ratio

    pred, target, dist, span = _pairs(ct)
    ours = metrics.psnr(pred, target, data_range=span)
    sk = [peak_signal_noise_ratio(ct, d, data_range=span) for d in dist]
    assert np.abs(ours.numpy() - np.array(sk)).max() < 1e-10
    assert metrics.psnr(target, target, data_range=span).isinf().all()

    expected = np.array([np.mean(np.abs(d - ct)) for d in dist])
    assert np.allclose(metrics.mae(pred, target, data_range=span).numpy(), expected, rtol=1e-12)
    normalized = metrics.mae(pred, target, data_range=span, normalize=True)
    assert np.allclose(normalized.numpy(), expected / span, rtol=1e-12)


def test_nrmse_matches_scikit_image(ct):
    from skimage.metrics import normalized_root_mse

    pred, target, dist, span = _pairs(ct)
    ours = metrics.nrmse(pred, target)
    sk = [normalized_root_mse(ct, d) for d in dist]  # "euclidean": ||ref - pred|| / ||ref||
    assert np.abs(ours.numpy() - np.array(sk)).max() < 1e-12
    assert (metrics.nrmse(target, target) == 0).all()


# --- VIF --------------------------------------------------------------------------------------------


def test_vif_properties(ct):
    x = torch.from_numpy(ct)[None, None]
    span = float(ct.max() - ct.min())
    assert abs(metrics.vif(x, x, data_range=span).item() - 1) < 1e-6
    assert abs(metrics.vif(x + 100.0, x, data_range=span).item() - 1) < 1e-6  # a constant offset loses nothing
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    levels = [metrics.vif(x + s * span * noise, x, data_range=span).item() for s in (0.01, 0.03, 0.1, 0.3)]
    assert all(a > b for a, b in zip(levels, levels[1:])) and 0 < levels[-1] < levels[0] < 1
    mean = x.mean()
    assert metrics.vif(mean + 1.5 * (x - mean), x, data_range=span).item() > 1  # contrast enhancement
    assert metrics.vif(mean + 0.5 * (x - mean), x, data_range=span).item() < 1
    # data_range sets the scale on which sigma_nsq = 2 applies: VIF is invariant to rescaling both
    blurred = torch.from_numpy(gaussian_filter(ct, 1.0))[None, None]
    a = metrics.vif(blurred, x, data_range=span)
    b = metrics.vif(blurred * 7.0, x * 7.0, data_range=7.0 * span)
    assert torch.allclose(a, b, rtol=1e-10)
    assert math.isnan(metrics.vif(x, torch.ones_like(x), data_range=span).item())  # flat reference: undefined


def test_vif_matches_sewar_when_installed(mr):
    full_ref = pytest.importorskip("sewar.full_ref")
    pred, target, dist, span = _pairs(mr[:160, :200])
    ours = metrics.vif(pred, target, data_range=span)
    ref = [full_ref.vifp(mr[:160, :200] * 255 / span, d * 255 / span) for d in dist]  # vifp works on 0..255
    assert np.abs(ours.numpy() - np.array(ref)).max() < TOL  # measured ~2e-15


# --- validation ---------------------------------------------------------------------------------------


def test_shape_and_argument_errors():
    a = torch.rand(2, 1, 64, 64)
    with pytest.raises(ValueError, match="same shape"):
        metrics.ssim(a, torch.rand(2, 1, 64, 63), data_range=1.0)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        metrics.psnr(a[:, 0], a[:, 0], data_range=1.0)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        metrics.mae(a.expand(2, 3, 64, 64), a.expand(2, 3, 64, 64), data_range=1.0)
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(a[..., :10, :], a[..., :10, :], data_range=1.0)
    with pytest.raises(ValueError, match="at least 7x7"):
        metrics.ssim(a[..., :6], a[..., :6], data_range=1.0, convention="cpdm")
    with pytest.raises(ValueError, match="at least 161x161"):
        metrics.ms_ssim(torch.rand(1, 1, 160, 300), torch.rand(1, 1, 160, 300), data_range=1.0)
    with pytest.raises(ValueError, match="at least 41x41"):
        metrics.vif(a[..., :40], a[..., :40], data_range=1.0)
    with pytest.raises(TypeError, match="data_range"):
        metrics.ssim(a, a)  # data_range is required
    with pytest.raises(ValueError, match="positive"):
        metrics.psnr(a, a, data_range=0.0)
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr(a, a, data_range=torch.ones(3))
    with pytest.raises(ValueError, match="convention"):
        metrics.ssim(a, a, data_range=1.0, convention="torchmetrics")
    assert metrics.ms_ssim(torch.rand(1, 1, 161, 161), torch.rand(1, 1, 161, 161), data_range=1.0).shape == (1,)
    assert metrics.vif(a[..., :41, :41], a[..., :41, :41], data_range=1.0).shape == (2,)


# --- SUV metrics ------------------------------------------------------------------------------------


def _suv_pair() -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.tensor([[[[1.0, 3.0, 5.0], [2.0, 4.0, 0.0]]], [[[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]]])
    pred = torch.tensor([[[[1.0, 2.0, 6.0], [2.0, 5.0, 1.0]]], [[[1.5, 1.5, 1.5], [1.5, 1.5, 1.5]]]])
    return pred, target


def test_suv_mae():
    pred, target = _suv_pair()
    assert torch.allclose(metrics.suv_mae(pred, target), torch.tensor([4 / 6, 0.5], dtype=torch.float64))
    mask = torch.zeros_like(target, dtype=torch.bool)
    mask[0, 0, 0, 0] = mask[0, 0, 1, 2] = True  # |1-1| and |1-0|; image 1: empty mask
    out = metrics.suv_mae(pred, target, mask=mask)
    assert out[0].item() == 0.5 and math.isnan(out[1].item())


def test_suv_bias_threshold_fraction_and_mask():
    pred, target = _suv_pair()
    b = metrics.suv_bias(pred, target)  # default 2.5 SUV: reference voxels 3, 5, 4; pred there 2, 6, 5
    assert b.n_voxels.tolist() == [3, 0]
    assert b.suvmean_ref[0].item() == pytest.approx(4.0)
    assert b.suvmean_pred[0].item() == pytest.approx(13 / 3)
    assert b.suvmean_bias[0].item() == pytest.approx(1 / 3)
    assert b.suvmean_rel_bias[0].item() == pytest.approx(1 / 12)
    assert (b.suvmax_ref[0].item(), b.suvmax_pred[0].item()) == (5.0, 6.0)
    assert b.suvmax_bias[0].item() == 1.0 and b.suvmax_rel_bias[0].item() == pytest.approx(0.2)
    assert all(math.isnan(v[1].item()) for k, v in b.as_dict().items() if k != "n_voxels")  # no region: NaN

    f = metrics.suv_bias(pred, target, fraction_of_max=0.8)  # >= 4 SUV: voxels 5, 4; pred 6, 5
    assert f.n_voxels.tolist() == [2, 6]  # image 1 is flat: every voxel is at its maximum
    assert f.suvmean_bias[0].item() == pytest.approx(1.0) and f.suvmean_rel_bias[1].item() == pytest.approx(0.5)

    t = metrics.suv_bias(pred, target, threshold=4.5)
    assert t.n_voxels.tolist() == [1, 0] and t.suvmean_bias[0].item() == 1.0

    mask = torch.zeros_like(target, dtype=torch.uint8)
    mask[0, 0, 0, 0] = mask[0, 0, 1, 2] = 1  # reference 1, 0; pred 1, 1
    m = metrics.suv_bias(pred, target, mask=mask)
    assert m.suvmean_bias[0].item() == 0.5 and m.suvmean_rel_bias[0].item() == 1.0
    assert m.suvmax_bias[0].item() == 0.0 and m.n_voxels[1].item() == 0

    vol = metrics.suv_bias(pred[:, :, None], target[:, :, None])  # (B, 1, D, H, W) volumes work the same
    assert vol.n_voxels.tolist() == [3, 0]


def test_suv_errors():
    pred, target = _suv_pair()
    with pytest.raises(ValueError, match="not both"):
        metrics.suv_bias(pred, target, threshold=2.0, fraction_of_max=0.5)
    with pytest.raises(ValueError, match="not both"):
        metrics.suv_bias(pred, target, threshold=2.0, mask=target > 2)
    with pytest.raises(ValueError, match="mask"):
        metrics.suv_mae(pred, target, mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same shape"):
        metrics.suv_mae(pred, target[:1])
    assert metrics.DEFAULT_SUV_THRESHOLD == 2.5


# --- LPIPS ------------------------------------------------------------------------------------------


def _random_lpips(net: str, seed: int = 0) -> metrics.LPIPS:
    torch.manual_seed(seed)
    model = metrics.LPIPS(net, pretrained=False)
    for head in model.heads:  # the published heads are non-negative
        head.weight.abs_()
    return model


def _save(state: dict[str, torch.Tensor], path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


def _save_weights(model: metrics.LPIPS, backbone, head) -> None:
    """Write the files in the formats users have: torchvision's trunk checkpoint, lpips's heads."""
    trunk = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    trunk["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files also hold the classifier
    _save(trunk, backbone)
    _save({f"lin{k}.model.1.weight": h.weight.detach().clone() for k, h in enumerate(model.heads)}, head)


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(lpips_module, "_lpips_package_dir", lambda: None)  # ignore an installed lpips
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_lpips_missing_weights_error_is_clear(empty_torch_home):
    assert not metrics.lpips_available("alex")
    with pytest.raises(metrics.LPIPSUnavailable) as err:
        metrics.LPIPS("alex")
    msg = str(err.value)
    assert isinstance(err.value, RuntimeError)
    expected_parts = ("alexnet-owt-7be5be79.pth", "alex.pth", str(empty_torch_home), "ImageNet", "never downloads")
    for expected in expected_parts:
        assert expected in msg
    x = torch.rand(1, 1, 64, 64)
    with pytest.raises(metrics.LPIPSUnavailable, match="vgg16-397923af.pth"):
        metrics.lpips(x, x, data_range=1.0, net="vgg")
    with pytest.raises(metrics.LPIPSUnavailable, match="nowhere.pth"):
        metrics.LPIPS("alex", backbone_path=empty_torch_home / "nowhere.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_lpips_loads_user_files_from_hub_cache(empty_torch_home, suffix):
    model = _random_lpips("alex")
    _save_weights(
        model,
        (empty_torch_home / "alexnet-owt-7be5be79.pth").with_suffix(suffix),
        (empty_torch_home / "alex.pth").with_suffix(suffix),
    )
    assert metrics.lpips_available("alex") and not metrics.lpips_available("vgg")
    loaded = metrics.LPIPS("alex")
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k

    gen = torch.Generator().manual_seed(1)
    target = 3.0 * torch.rand(2, 1, 48, 48, generator=gen)  # e.g. SUV 0..3
    pred = (target + 0.3 * torch.randn(target.shape, generator=gen)).clamp(0, 3)
    ours = metrics.lpips(pred, target, data_range=3.0)
    with torch.no_grad():
        expected = model((2 * pred / 3 - 1).repeat(1, 3, 1, 1), (2 * target / 3 - 1).repeat(1, 3, 1, 1))
    assert ours.shape == (2,) and ours.dtype == torch.float64
    assert torch.allclose(ours, expected.double(), rtol=1e-6) and torch.all(ours > 0)
    assert torch.all(metrics.lpips(target, target, data_range=3.0) == 0)


def test_lpips_vgg_explicit_paths(tmp_path, empty_torch_home):
    model = _random_lpips("vgg")
    backbone, head = tmp_path / "trunk.safetensors", tmp_path / "heads.pth"
    _save_weights(model, backbone, head)
    x0, x1 = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    out = metrics.lpips(x0, x1, data_range=1.0, net="vgg", backbone_path=backbone, head_path=head)
    with torch.no_grad():
        expected = model(x0.repeat(1, 3, 1, 1) * 2 - 1, x1.repeat(1, 3, 1, 1) * 2 - 1)
    assert torch.allclose(out, expected.double(), rtol=1e-6)
    with pytest.raises(ValueError, match="at least 16x16"):
        small = x0[..., :15, :15]
        metrics.lpips(small, small, data_range=1.0, net="vgg", backbone_path=backbone, head_path=head)


class _NotATensor:  # a pickled object: must never be unpickled
    pass


def test_lpips_refuses_pickled_objects_and_wrong_files(tmp_path):
    model = _random_lpips("alex")
    backbone, head = tmp_path / "trunk.pth", tmp_path / "heads.pth"
    _save_weights(model, backbone, head)
    evil = tmp_path / "evil.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1), "payload": _NotATensor()}, evil)
    with pytest.raises(ValueError, match="weights_only"):
        metrics.LPIPS("alex", backbone_path=backbone, head_path=evil)
    with pytest.raises(ValueError, match="lin0..lin4"):
        metrics.LPIPS("alex", backbone_path=backbone, head_path=backbone)
    with pytest.raises(ValueError, match="torchvision vgg"):
        metrics.LPIPS("vgg", backbone_path=backbone, head_path=head)


def test_lpips_matches_lpips_package_when_installed(tmp_path):
    """Independent check of the layer layout against the lpips package (needs lpips + torchvision)."""
    try:
        import lpips as reference
        import torchvision
    except Exception:  # absent, or a torchvision build that does not match torch
        pytest.skip("lpips and torchvision are not importable")
    torch.manual_seed(0)
    trunk = torchvision.models.alexnet(weights=None)
    ref = reference.LPIPS(net="alex", pnet_rand=True, pretrained=True, verbose=False)  # shipped v0.1 heads
    ref.net.load_state_dict({k: trunk.features.state_dict()[k.split(".", 1)[1]] for k in ref.net.state_dict()})
    torch.save(trunk.state_dict(), tmp_path / "alexnet.pth")
    heads = lpips_module._lpips_package_dir() / "alex.pth"
    ours = metrics.LPIPS("alex", backbone_path=tmp_path / "alexnet.pth", head_path=heads)
    x0 = torch.rand(2, 3, 64, 64) * 2 - 1
    x1 = (x0 + 0.3 * torch.randn_like(x0)).clamp(-1, 1)
    with torch.no_grad():
        assert torch.allclose(ours(x0, x1), ref(x0, x1).flatten(), rtol=1e-5, atol=1e-7)

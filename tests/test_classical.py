"""The training-free low-dose PET baselines (``petsynth.methods.classical``): the Gaussian filter against its
closed form (a point source comes out with the FWHM asked for, SUV conserved), non-local means on Poisson
noise (less noise, the same mean), and both used by name as models, never trained."""

import numpy as np
import pytest
import torch

from petsynth.diffusion import PoissonDiffusion
from petsynth.inference import load_model, training_free_methods
from petsynth.methods.base import MethodError


def _batch(image: np.ndarray, spacing=(2.0, 2.0)) -> dict:
    return {"source": torch.from_numpy(image.astype(np.float32))[None, None], "spacing_mm": [spacing]}


@pytest.mark.parametrize("fwhm_mm, spacing", [(6.0, (2.0, 2.0)), (8.0, (2.0, 4.0))])
def test_gaussian_filter_gives_a_point_source_the_fwhm_asked_for(fwhm_mm, spacing):
    model = load_model("gaussian-filter")
    point = np.zeros((65, 65))
    point[32, 32] = 100.0
    out = model.translate(_batch(point, spacing), fwhm_mm=fwhm_mm)[0, 0].numpy()
    assert out.sum() == pytest.approx(100.0, rel=1e-5)  # SUV conserved
    for axis, step in ((0, spacing[0]), (1, spacing[1])):
        profile = out[:, 32] if axis == 0 else out[32, :]
        half = profile.max() / 2
        above = np.nonzero(profile >= half)[0]
        # the FWHM from the profile, linearly interpolated at both half-maximum crossings
        lo, hi = above[0], above[-1]
        left = lo - (profile[lo] - half) / (profile[lo] - profile[lo - 1])
        right = hi + (profile[hi] - half) / (profile[hi] - profile[hi + 1])
        assert (right - left) * step == pytest.approx(fwhm_mm, rel=0.08)


def _noisy_disc(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    n = 64
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    disc = np.where(x ** 2 + y ** 2 < (0.42 * n) ** 2, 2.0, 0.0).astype(np.float32)
    noisy = PoissonDiffusion(num_timesteps=10, min_dose=0.1).q_sample(
        torch.from_numpy(disc)[None, None], 9, generator=torch.Generator().manual_seed(seed))[0, 0].numpy()
    return noisy, x ** 2 + y ** 2 < (0.25 * n) ** 2


@pytest.mark.parametrize("name", ["gaussian-filter", "nlm"])
def test_denoisers_lower_poisson_noise_and_keep_the_mean(name):
    noisy, centre = _noisy_disc()
    out = load_model(name).translate(_batch(noisy, (4.0, 4.0)))[0, 0].numpy()
    assert out[centre].std() < 0.85 * noisy[centre].std()
    assert out[centre].mean() == pytest.approx(noisy[centre].mean(), rel=0.03)


def test_training_free_methods_are_models_by_name_and_refuse_training(tmp_path):
    assert {"gaussian-filter", "nlm", "low-dose"} <= set(training_free_methods())
    image = np.random.default_rng(0).random((8, 8))
    np.testing.assert_allclose(load_model("low-dose").translate(_batch(image))[0, 0].numpy(), image, rtol=1e-6)
    with pytest.raises(MethodError, match="lpet2spet"):
        load_model("nlm", task="ct2pet")
    with pytest.raises(MethodError, match="no sampler option"):
        load_model("gaussian-filter").translate(_batch(np.zeros((8, 8))), strength=1.0)
    with pytest.raises(MethodError, match="pixel spacing"):
        load_model("nlm").translate({"source": torch.zeros(1, 1, 8, 8)})


def test_evaluate_takes_them_by_name(tmp_path):
    from petsynth.data.prepare import prepare_dataset
    from petsynth.evaluate import evaluate
    from petsynth.phantom import write_studies

    write_studies(tmp_path / "raw", task="lpet2spet", studies=1, seed=8, fmt="dicom", preset="tiny")
    prepare_dataset([tmp_path / "raw"], tmp_path / "ds", "lpet2spet", size=32, key=b"classical", split=(1.0, 0.0, 0.0))
    report = evaluate(["gaussian-filter", "nlm"], tmp_path / "ds", tmp_path / "ev", split="train")
    assert report.models == ["gaussian-filter", "nlm"]
    for model in report.models:  # measured against the standard-dose PET, finite
        assert np.isfinite(report.overall[model]["real"]["mae_suv"])

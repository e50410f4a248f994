"""jdam and sde (JDAM seed): the score-matching loss falls, the MRI channel is never noised and drives jdam's
output while sde ignores it, sampling starts from N(0, sigma_max^2) and uses the EMA weights, and a model
trained by the one trainer reloads and translates an MR study to SUV on the MR's slices."""

import numpy as np
import pytest
import torch

from petsynth.data.batch import Collate
from petsynth.data.prepare import prepare_dataset
from petsynth.data.store import open_dataset
from petsynth.io.nifti import read_nifti
from petsynth.methods import build_method, load_method
from petsynth.methods.base import MethodError
from petsynth.phantom import make_study, write_study
from petsynth.train.trainer import RunConfig, train
from petsynth.translation import translate
from conftest import loss_before_and_after, tiny_train_config

TINY = {"denoiser": {"channels": [8, 16], "attention_levels": [False, True], "num_head_channels": 8,
                     "norm_num_groups": 4}, "sample_steps": 2}


@pytest.fixture(scope="module")
def mr_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("jdam")
    study = make_study("mr2pet", 4, 0, preset="tiny")
    dicom_dir = write_study(study, root / "dicom", fmt="dicom")
    prepare_dataset([dicom_dir], root / "ds", "mr2pet", size=32, key=b"k", split=(1.0, 0.0, 0.0))
    data = open_dataset(root / "ds")
    items = [data[i] for i in range(0, len(data), max(1, len(data) // 8))][:8]
    return study, dicom_dir, root / "ds", Collate("mr2pet")(items)


def test_the_score_matching_loss_falls_on_a_fixed_batch(mr_data):
    batch = mr_data[3]
    torch.manual_seed(0)
    method = build_method("jdam", TINY, task="mr2pet")

    before, after = loss_before_and_after(method, batch, lr=3e-3, steps=80)  # the same t and z each time
    # the EDM start is already the score of a Gaussian of the data's spread (loss 0.66 on this batch): the
    # network learns the rest (measured: 0.42 after 80 steps)
    assert after < 0.8 * before


def test_the_mri_is_never_noised_and_drives_jdam_but_not_sde(mr_data):
    batch = mr_data[3]
    torch.manual_seed(0)
    jdam = build_method("jdam", TINY, task="mr2pet").eval()
    sde = build_method("sde", TINY, task="mr2pet").eval()
    assert jdam.denoiser.conv_in.conv.in_channels == 2 and sde.denoiser.conv_in.conv.in_channels == 1
    with torch.no_grad():  # untrain the zero-initialised output layer: the output must depend on the input
        for m in (jdam, sde):
            for p in m.denoiser.parameters():
                if not p.any():
                    p.normal_(0, 0.1)
    seen = []
    hook = jdam.denoiser.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    jdam.losses(batch, "model", 0)
    out = jdam.translate(batch, generator=torch.Generator().manual_seed(1))
    hook.remove()
    mr = jdam.config.transforms["source"].forward(batch["source"])
    for inp in seen:  # the MRI channel is the MRI in network units at every call, training and sampling
        torch.testing.assert_close(inp[:, 1:], mr, rtol=0, atol=0)
    # the first sampling call sees the prior N(0, sigma_max^2), scaled by c_in = 1/sqrt(348^2 + sigma_data^2)
    assert abs(float(seen[1][:, 0].std()) - 1.0) < 0.1
    other = dict(batch, source=batch["source"].flip(-1))
    changed = jdam.translate(other, generator=torch.Generator().manual_seed(1))
    assert (changed - out).abs().max() > 1e-3
    a = sde.translate(batch, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sde.translate(other, generator=torch.Generator().manual_seed(1)), a, rtol=0, atol=0)


def test_sampler_options_and_their_errors(mr_data):
    batch = mr_data[3]
    jdam = build_method("jdam", TINY, task="mr2pet").eval()
    assert set(jdam.sampler_option_names()) == {"sampler", "steps", "snr", "corrector_steps", "rho"}
    calls = []
    hook = jdam.denoiser.register_forward_pre_hook(lambda mod, args: calls.append(1))
    for options, nfe in (({}, 3), ({"sampler": "pc", "steps": 3}, 3 + 2), ({"sampler": "pc", "steps": 3,
                         "corrector_steps": 2}, 3 + 4), ({"sampler": "ode", "steps": 4, "rho": 0}, 7),
                         ({"sampler": "reverse_diffusion", "steps": 5}, 5), ({"sampler": "langevin", "steps": 2}, 3)):
        calls.clear()
        pet = jdam.translate(batch, generator=torch.Generator().manual_seed(0), **options)
        assert len(calls) == nfe, options
        assert pet.shape == batch["target"].shape and torch.isfinite(pet).all()
    hook.remove()
    with pytest.raises(MethodError, match="eta"):
        jdam.translate(batch, eta=0.5)
    with pytest.raises(MethodError, match="sampler"):
        jdam.translate(batch, sampler="ddim")


@pytest.mark.parametrize("name", ["jdam", "sde"])
def test_trains_reloads_samples_with_the_ema_weights_and_translates_an_mr_study(name, mr_data, tmp_path):
    study, dicom_dir, data, batch = mr_data
    model = train(RunConfig(method=name, task="mr2pet", data=str(data), method_config=TINY,
                            train=tiny_train_config(steps=4, ema_decay=0.5)), tmp_path / "r")
    method = load_method(model, task="mr2pet")
    assert method.card.parameters["denoiser"] == method.card.parameters["trainable"] > 0
    pet = method.translate(batch, generator=torch.Generator().manual_seed(0))
    lo, hi = method.intensity_transforms()["target"].low, method.intensity_transforms()["target"].high
    assert pet.shape == batch["target"].shape and pet.min() >= lo and pet.max() <= hi
    # the exported model is the EMA weights: equal to the last checkpoint's EMA, not its raw weights
    ckpt = tmp_path / "r" / "checkpoints" / "step_00000004"
    ema, raw = load_method(ckpt, use_ema=True), load_method(ckpt, use_ema=False)
    same = lambda m: m.translate(batch, generator=torch.Generator().manual_seed(0))  # noqa: E731
    torch.testing.assert_close(same(ema), pet, rtol=0, atol=0)
    assert (same(raw) - pet).abs().max() > 0
    # an MR DICOM study -> SUV on the MR's slices
    result = translate(model, dicom_dir, tmp_path / "t", steps=2)
    suv, affine = read_nifti(result.files["nifti"])
    mr_geometry = study.images["MR"].geometry
    assert suv.shape[0] == mr_geometry.shape[0] and np.isfinite(suv).all() and suv.min() >= 0
    assert np.allclose(affine[2, 3], mr_geometry.affine[2, 3], atol=1e-3)


def test_the_edm_preconditioning_is_the_exact_score_of_its_reference_gaussian(mr_data):
    """With F = 0 (MONAI starts the output layer at 0), D = c_skip x, so the score is -x / (sigma^2 + sigma_data^2):
    the exact score of N(0, sigma_data^2) data noised by sigma. NCSN++'s scale_by_sigma starts at score 0."""
    batch = mr_data[3]
    x = torch.randn(8, 1, 32, 32)
    sigma = torch.logspace(-2, 2.5, 8)
    edm = build_method("jdam", {**TINY, "sigma_data": 0.3}, task="mr2pet")
    src = edm._source(batch)
    want = -x / (sigma.view(-1, 1, 1, 1) ** 2 + 0.09)
    torch.testing.assert_close(edm.score(x, sigma, src), want, rtol=1e-5, atol=1e-7)
    ncsn = build_method("jdam", {**TINY, "preconditioning": "scale_by_sigma"}, task="mr2pet")
    assert torch.equal(ncsn.score(x, sigma, src), torch.zeros_like(x))


def test_training_noise_levels_and_edm_weighting(mr_data):
    """lognormal: ln sigma ~ N(mean, std^2); edm weighting: the seed's term times (sigma^2 + sigma_data^2) /
    sigma_data^2 (checked at one fixed sigma, same weights, same noise)."""
    batch = mr_data[3]
    cfg = {**TINY, "training_sigma": "lognormal", "lognormal_mean": -1.2, "lognormal_std": 1.2}
    torch.manual_seed(0)
    method = build_method("jdam", cfg, task="mr2pet")
    seen = []
    score = method._sigma_score
    method._sigma_score = lambda x, sigma, source: seen.append(sigma.clone()) or score(x, sigma, source)
    with torch.no_grad():
        for _ in range(50):
            method.losses(batch, "model", 0)
    logs = torch.cat(seen).log()
    assert abs(float(logs.mean()) + 1.2) < 0.2 and abs(float(logs.std()) - 1.2) < 0.2
    fixed = {**TINY, "training_sigma": "lognormal", "lognormal_mean": float(np.log(2.0)), "lognormal_std": 1e-7}
    losses = {}
    for weighting in ("sigma2", "edm"):
        torch.manual_seed(0)
        m = build_method("jdam", {**fixed, "loss_weighting": weighting}, task="mr2pet")
        torch.manual_seed(1)
        with torch.no_grad():
            losses[weighting] = float(m.losses(batch, "model", 0)["loss"])
    assert losses["edm"] == pytest.approx(losses["sigma2"] * (4.0 + 0.25) / 0.25, rel=1e-5)

"""Baselines (unet with its 1-6 stage cascade, pix2pix, ldm), each with the optional Attention and
Attenuation maps: the seed's U-Net layout, training through the one trainer, reload and translation to SUV,
and ldm's DDIM against the MONAI scheduler it used to run on."""

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler
from torch import nn

from petsynth.config import ConfigError
from petsynth.data.batch import Collate
from petsynth.data.store import open_dataset
from petsynth.methods import build_method, load_method
from petsynth.methods.base import MethodError
from petsynth.nn.unet import UNetConfig, build_unet
from petsynth.train.trainer import RunConfig, train
from conftest import TINY_DENOISER, TINY_P2P, tiny_train_config

TINY_UNET = {"unet": {"features": [4, 8, 16, 32, 64, 4]}}
MAPS = {"use_attention_map": True, "use_attenuation_map": True}


def _train_cfg(**kw):
    return tiny_train_config(**{"steps": 2, **kw})


@pytest.fixture(scope="module")
def batch(tiny_dataset):
    items = [open_dataset(tiny_dataset).split("test")[i] for i in range(2)]
    return Collate("ct2pet", mu_map=True)(items)


def _check_suv(method, pet, n=2):
    t = method.intensity_transforms()["target"]
    assert pet.shape == (n, 1, 32, 32) and torch.isfinite(pet).all()
    assert t.unit == "SUV" and pet.min() >= t.low and pet.max() <= t.high


def test_unet_layers_follow_the_seed():
    with torch.device("meta"):
        net = build_unet()  # defaults: 64..1024 channels, ReLU, no normalisation, transposed convolutions
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4 and all(p.kernel_size == 2 and p.stride == 2 for p in pools)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) for c in convs[:-1]) and convs[-1].kernel_size == (1, 1)
    encoder = [net.conv_0, net.down_1, net.down_2, net.down_3, net.down_4]
    widths = [[c.out_channels for c in e.modules() if isinstance(c, nn.Conv2d)] for e in encoder]
    assert widths == [[64, 64], [128, 128], [256, 256], [512, 512], [1024, 1024]]  # two convs, doubling
    ups = [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == 4 and all(u.kernel_size == (2, 2) and u.stride == (2, 2) for u in ups)
    assert [(u.in_channels, u.out_channels) for u in ups[:3]] == [(1024, 512), (512, 256), (256, 128)]  # halve
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 2 * 9  # every 3x3 conv followed by ReLU
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) for m in net.modules())
    assert 30e6 < sum(p.numel() for p in net.parameters()) < 32e6
    y = build_unet(UNetConfig(**TINY_UNET["unet"]))(torch.zeros(1, 1, 32, 32))
    assert y.shape == (1, 1, 32, 32)  # same-size output, skip connections concatenated


def test_cascade_has_one_unet_per_stage_and_refines_the_first(batch):
    torch.manual_seed(0)
    one = build_method("unet", TINY_UNET).eval()
    torch.manual_seed(0)
    three = build_method("unet", {**TINY_UNET, "stages": 3}).eval()
    assert len(three.net.stages) == 3 and len(one.net.stages) == 1
    first = [m for m in three.net.stages[1].modules() if isinstance(m, nn.Conv2d)][0]
    assert first.in_channels == 2  # the source and stage 1's output
    x = one.source_with_maps(batch)
    with torch.no_grad():
        a, b = one.net(x), three.net(x)
    torch.testing.assert_close(a[0], b[0])  # the same first stage (same seed) ...
    assert len(b) == 3 and not torch.allclose(b[-1], a[-1])  # ... refined by two more
    with pytest.raises(ConfigError, match="stages"):
        build_method("unet", {**TINY_UNET, "stages": 7})


def test_maps_are_extra_input_channels(tiny_parts, batch):
    _, seg = tiny_parts
    cfg = {**MAPS, "segmenter_checkpoint": str(seg)}
    unet = build_method("unet", {**TINY_UNET, **cfg, "stages": 2})
    assert unet.needs_mu_map and unet.maps(batch).shape == (2, 2, 32, 32)
    firsts = [[m for m in s.modules() if isinstance(m, nn.Conv2d)][0] for s in unet.net.stages]
    assert [c.in_channels for c in firsts] == [3, 4]  # source + M_sigma + M_mu (+ previous output)
    p2p = build_method("pix2pix", {**TINY_P2P, **cfg})
    first = [m for m in p2p.generator.modules() if isinstance(m, nn.Conv2d)][0]
    d_first = [m for m in p2p.discriminator.modules() if isinstance(m, nn.Conv2d)][0]
    assert first.in_channels == 3 and d_first.in_channels == 4  # D sees concat(condition, PET)
    attenuation_only = build_method("pix2pix", {**TINY_P2P, "use_attenuation_map": True})
    assert [m for m in attenuation_only.generator.modules() if isinstance(m, nn.Conv2d)][0].in_channels == 2
    with pytest.raises(MethodError, match="segmenter_checkpoint"):
        build_method("unet", {**TINY_UNET, "use_attention_map": True})
    with pytest.raises(MethodError, match="mr2pet has none"):
        build_method("unet", {**TINY_UNET, "use_attenuation_map": True}, task="mr2pet")


def test_unet_regression_lowers_its_mse_on_a_fixed_batch(batch):
    torch.manual_seed(0)
    method = build_method("unet", {**TINY_UNET, "unet": {"features": [8, 16, 32, 64, 128, 8]}})
    opt = torch.optim.Adam(method.optimizer_groups()["model"], lr=method.default_lr, weight_decay=1e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = method.losses(batch, "model", 0)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.5 * losses[0]


@pytest.mark.parametrize("name", ["unet", "pix2pix", "ldm"])
def test_baseline_trains_saves_reloads_and_translates_in_suv(name, tiny_dataset, tiny_parts, batch, tmp_path):
    ae, seg = tiny_parts
    cfg = {"unet": {**TINY_UNET, "stages": 2, **MAPS, "segmenter_checkpoint": str(seg)},
           "pix2pix": TINY_P2P,
           "ldm": {"autoencoder_checkpoint": str(ae), "use_attenuation_map": True, "denoiser": TINY_DENOISER,
                   "sample_steps": 3}}[name]
    model = train(RunConfig(method=name, data=str(tiny_dataset), method_config=cfg, train=_train_cfg()), tmp_path / "r")
    assert (tmp_path / "r" / "val" / "step_00000002.png").is_file()
    log = (tmp_path / "r" / "log.csv").read_text()
    assert {"unet": "stage2_mse", "pix2pix": "discriminator_loss", "ldm": "loss"}[name] in log.splitlines()[0]
    method = load_method(model, task="ct2pet")
    if name == "ldm":
        assert method.config.autoencoder is not None and float(method.latent_scale) > 0  # estimated, saved
        pet = method.translate(batch, generator=torch.Generator().manual_seed(0))
        again = method.translate(batch, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(pet, again)  # eta 0: the noise seed fixes the result
    else:
        pet = method.translate(batch)
    _check_suv(method, pet)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ldm_translates_as_monai_ddim_did(eta):
    """ldm's sampling moved from MONAI's schedulers onto petsynth.diffusion: same seed, same output as the
    former implementation (MONAI's DDIMScheduler stepping on the DDIM grid, x0 clipped in pixel space)."""
    torch.manual_seed(0)
    method = build_method("ldm", {"pixel_space": True, "denoiser": TINY_DENOISER}).eval()
    batch = {"source": torch.rand(2, 1, 32, 32) * 1000 - 500, "target": torch.rand(2, 1, 32, 32) * 5}
    got = method.translate(batch, steps=5, eta=eta, generator=torch.Generator().manual_seed(3))
    sched = DDIMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015,
                          beta_end=0.0195, clip_sample=True, set_alpha_to_one=True)
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(3)
    cond = method._conditions(batch)
    x = torch.randn((2, 1, 32, 32), generator=g)
    for t in (torch.arange(4, -1, -1) * 200).tolist():
        eps = method.denoiser(torch.cat([x, cond], dim=1), torch.full((2,), t)).float()
        x, _ = sched.step(eps, t, x, eta=eta, generator=g)
    torch.testing.assert_close(got, method.config.transforms["target"].inverse(x), rtol=0, atol=0)


def test_sampler_options_are_typed_and_unknown_ones_are_errors(batch):
    """A sampler option a method does not have is an error naming it, never silently dropped."""
    unet = build_method("unet", TINY_UNET).eval()
    assert unet.sampler_option_names() == ()
    with pytest.raises(MethodError, match="unet has no sampler option 'steps' \\(its options: none\\)"):
        unet.translate(batch, steps=3)
    ldm = build_method("ldm", {"pixel_space": True, "denoiser": TINY_DENOISER}).eval()
    assert ldm.sampler_option_names() == ("steps", "eta")
    with pytest.raises(MethodError, match="'snr'.*its options: steps, eta"):
        ldm.translate(batch, steps=2, snr=0.1)
    with pytest.raises(MethodError, match="eta"):
        ldm.translate(batch, steps=2, eta=1.5)
    assert ldm.translate(batch, steps=2, eta=None).shape == batch["target"].shape  # None: the model's default


def test_ldm_needs_a_vqgan_and_other_tasks_build():
    with pytest.raises(MethodError, match="autoencoder_checkpoint"):
        build_method("ldm", {})
    batch = {"source": torch.rand(2, 1, 32, 32) * 5, "target": torch.rand(2, 1, 32, 32) * 5}
    for name, cfg in (("unet", TINY_UNET), ("pix2pix", TINY_P2P)):
        method = build_method(name, cfg, task="lpet2spet").eval()
        assert method.translate(batch).shape == (2, 1, 32, 32)


def test_a_part_model_is_refused_as_a_translator_naming_the_translating_methods(tiny_parts):
    from petsynth.inference import load_model

    with pytest.raises(MethodError, match="'vqgan' model, which is a part.*cpdm.*cyclegan.*jdam.*sde.*unet"):
        load_model(tiny_parts[0])

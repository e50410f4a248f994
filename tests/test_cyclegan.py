"""cyclegan (the JDAM seed's comparison): CycleGAN's ResNet generator and instance-norm PatchGAN, a cycle
reconstruction error that falls on a fixed batch, losses that never use the source-target pairing (and unpaired
steps that never read a pair), every task, and train -> save -> reload -> translate to SUV through the one
trainer."""

import pytest
import torch
from torch import nn

from petsynth.data.batch import Collate
from petsynth.data.store import open_dataset
from petsynth.methods import build_method, load_method
from petsynth.methods.base import MethodError
from petsynth.nn.discriminator import PatchGAN
from petsynth.nn.resnet_generator import ResnetGenerator, ResnetGeneratorConfig
from petsynth.tasks import TASK_NAMES, get_task
from petsynth.train.trainer import RunConfig, train
from conftest import TINY_CG, tiny_train_config



@pytest.fixture(scope="module")
def batch(tiny_dataset):
    data = open_dataset(tiny_dataset).split("train")
    return Collate("ct2pet")([data[i] for i in (0, 3, 6, 9)])


def _losses(method, batch):
    return method.losses(batch, "generators", 0), method.losses(batch, "discriminators", 0)


def test_resnet_generator_is_cyclegans_resnet_9blocks():
    with torch.device("meta"):
        net = ResnetGenerator(in_channels=3, out_channels=3)  # the defaults: ngf 64, 9 blocks, 2 downsamplings
    assert sum(p.numel() for p in net.parameters()) == 11_378_179  # CycleGAN prints "11.378 M" for G_A
    convs = [m for m in net.modules() if type(m) is nn.Conv2d]
    assert [c.kernel_size for c in (convs[0], convs[-1])] == [(7, 7), (7, 7)]
    assert [c.out_channels for c in convs if c.stride == (2, 2)] == [128, 256]
    ups = [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(u.out_channels, u.stride) for u in ups] == [(128, (2, 2)), (64, (2, 2))]
    assert sum(type(m).__name__ == "_ResidualBlock" for m in net.modules()) == 9
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 5 + 2 * 9 and not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, nn.ZeroPad2d) for m in net.modules())
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in net.modules()) == 2 + 2 * 9
    assert isinstance(list(net.modules())[-1], nn.Tanh)

    small = ResnetGenerator(ResnetGeneratorConfig(base_channels=4, num_blocks=6))  # resnet_6blocks, 1 -> 1
    x = torch.randn(2, 1, 48, 48) * 3
    y = small(x)
    assert y.shape == (2, 1, 48, 48) and y.abs().max() < 1
    with pytest.raises(ValueError, match="divisible by 2\\^downsamplings = 4"):
        small(torch.zeros(1, 1, 30, 32))


def test_discriminators_are_instance_norm_patchgans_that_judge_each_image_alone():
    method = build_method("cyclegan", TINY_CG)
    for d in (method.disc_target, method.disc_source):
        assert isinstance(d, PatchGAN) and d.cfg.in_channels == 1 and d.receptive_field == 70
        assert any(isinstance(m, nn.InstanceNorm2d) for m in d.modules())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    assert build_method("cyclegan").disc_target.cfg.channels == 64  # defaults: 64 filters, 3 layers
    x = torch.randn(3, 1, 32, 32)
    out = method.disc_target(x)  # train mode: with batch norm, each logit would depend on the other images
    assert out.shape == (3, 1, 2, 2)
    torch.testing.assert_close(out[:1], method.disc_target(x[:1]))


def test_cycle_reconstruction_error_falls_on_a_fixed_batch(batch):
    torch.manual_seed(0)
    method = build_method("cyclegan", TINY_CG)
    groups = method.optimizer_groups()
    assert list(groups) == ["generators", "discriminators"]
    assert len(groups["generators"]) == len([*method.gen_to_target.parameters(), *method.gen_to_source.parameters()])
    opts = {g: torch.optim.Adam(p, lr=1e-3, betas=(0.5, 0.999)) for g, p in groups.items()}

    @torch.no_grad()
    def cycle_error():
        method.eval()
        t = method.config.transforms
        x, y = t["source"].forward(batch["source"]), t["target"].forward(batch["target"])
        err = (method.gen_to_source(method.gen_to_target(x)) - x).abs().mean() \
            + (method.gen_to_target(method.gen_to_source(y)) - y).abs().mean()
        method.train()
        return float(err)

    before = cycle_error()
    for step in range(12):
        for group, opt in opts.items():
            method.zero_grad(set_to_none=True)
            out = method.losses(batch, group, step)
            out["loss"].backward()
            # every parameter of the group gets a gradient (DDP needs it), none of the other group's
            assert all(p.grad is not None for p in groups[group])
            other = groups["discriminators" if group == "generators" else "generators"]
            assert all(p.grad is None for p in other)
            opt.step()
    after = cycle_error()
    assert after < 0.5 * before, (before, after)


def test_losses_never_use_the_source_target_pairing(batch):
    torch.manual_seed(0)
    paired = build_method("cyclegan", {**TINY_CG, "unpaired": False})
    # targets spread over the whole PET window, so that a paired term (such as pix2pix's L1(G(source), its
    # target)) would change with the pairing: the tiny phantom PET lies below the translations at init, where an
    # L1 is linear in the target and blind to the pairing
    spread = {"source": torch.rand(4, 1, 32, 32) * 2000 - 1000, "target": torch.rand(4, 1, 32, 32) * 20}
    g, d = _losses(paired, spread)
    # every term is a batch mean of per-image terms of one domain: re-pairing the targets changes nothing
    g2, d2 = _losses(paired, {**spread, "target": spread["target"][[2, 0, 3, 1]]})
    for a, b in ((g, g2), (d, d2)):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)

    # unpaired (the default): the sources of slices 0, 1 meet the targets of slices 2, 3; the step never reads the
    # target of a slice whose source it uses (or the other way round): replacing those changes nothing
    unpaired = build_method("cyclegan", TINY_CG)
    unpaired.load_state_dict(paired.state_dict())
    g, d = _losses(unpaired, batch)
    disjoint = {"source": batch["source"][:2], "target": batch["target"][2:]}
    g2, d2 = _losses(paired, disjoint)
    noise = torch.rand_like(batch["source"]) * 5
    scrambled = {"source": torch.cat([batch["source"][:2], noise[2:] * 300]),
                 "target": torch.cat([noise[:2], batch["target"][2:]])}
    g3, d3 = _losses(unpaired, scrambled)
    for a, b, c in ((g, g2, g3), (d, d2, d3)):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
            torch.testing.assert_close(a[k], c[k], rtol=0, atol=0, msg=k)
    assert set(g) == {"loss", "gan_target", "gan_source", "cycle_source", "cycle_target", "identity_target",
                      "identity_source"} and set(d) == {"loss", "d_target", "d_source"}
    with pytest.raises(MethodError, match="at least 2 slices per micro-batch"):
        unpaired.losses({"source": batch["source"][:1], "target": batch["target"][:1]}, "generators", 0)


def test_loss_weights_lsgan_and_identity_switch(batch):
    torch.manual_seed(0)
    method = build_method("cyclegan", TINY_CG)
    g = method.losses(batch, "generators", 0)
    total = g["gan_target"] + g["gan_source"] + 10 * (g["cycle_source"] + g["cycle_target"]) \
        + 0.5 * 10 * (g["identity_target"] + g["identity_source"])
    torch.testing.assert_close(g["loss"].detach(), total)
    method.config.identity_weight = 0.0  # off: no identity terms (and no identity passes)
    assert "identity_target" not in method.losses(batch, "generators", 1)
    # least squares: the discriminators' loss of a logit map is 0.5 (mean (D(real) - 1)^2 + mean D(fake)^2)
    x, y = method.domains(batch)
    with torch.no_grad():
        fake_y = method.gen_to_target(x)
        want = 0.5 * ((method.disc_target(y) - 1).pow(2).mean() + method.disc_target(fake_y).pow(2).mean())
    torch.testing.assert_close(method.losses(batch, "discriminators", 2)["d_target"], want)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_cyclegan_translates_for_every_task_and_ignores_guidance(task):
    torch.manual_seed(0)
    method = build_method("cyclegan", TINY_CG, task=task).eval()
    t = get_task(task)
    assert set(method.intensity_transforms()) == set(t.windows)
    src = t.windows["source"]
    batch = {"source": src.low + torch.rand(2, 1, 32, 32) * (src.high - src.low),
             "target": torch.rand(2, 1, 32, 32) * 5}
    pet = method.translate(batch)
    assert pet.shape == (2, 1, 32, 32) and torch.isfinite(pet).all()
    if "guidance" in t.windows:
        with_ct = method.translate({**batch, "guidance": torch.rand(2, 1, 32, 32) * 2000 - 1000})
        torch.testing.assert_close(with_ct, pet, rtol=0, atol=0)
    assert {"generators", "discriminators"} == set(method.train().optimizer_groups())
    assert method.losses(batch, "generators", 0)["loss"].isfinite()


def test_cyclegan_trains_saves_reloads_and_translates_in_suv(tiny_dataset, batch, tmp_path):
    run = RunConfig(method="cyclegan", data=str(tiny_dataset), method_config=TINY_CG,
                    train=tiny_train_config(steps=2, betas=(0.5, 0.999)))
    model = train(run, tmp_path / "r")
    assert (tmp_path / "r" / "val" / "step_00000002.png").is_file()
    header = (tmp_path / "r" / "log.csv").read_text().splitlines()[0].split(",")
    for key in ("generators_loss", "discriminators_loss", "gan_target", "gan_source", "cycle_source",
                "cycle_target", "identity_target", "identity_source", "d_target", "d_source"):
        assert key in header, key
    method = load_method(model, task="ct2pet")
    assert method.name == "cyclegan" and not method.training and method.ema_module_names() == ["gen_to_target"]
    pet = method.translate(batch)
    target = method.intensity_transforms()["target"]
    assert pet.shape == (4, 1, 32, 32) and torch.isfinite(pet).all() and target.unit == "SUV"
    assert pet.min() >= target.low and pet.max() <= target.high
    torch.testing.assert_close(method.translate(batch), pet, rtol=0, atol=0)  # deterministic
    with pytest.raises(MethodError, match="cyclegan has no sampler option 'steps' \\(its options: none\\)"):
        method.translate(batch, steps=3)

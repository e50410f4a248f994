"""``cyclegan``: unpaired image translation (Zhu et al. 2017), the JDAM seed's state-of-the-art comparison.

Networks: two ResNet generators (:class:`petsynth.nn.resnet_generator.ResnetGenerator`, CycleGAN's
``resnet_9blocks``; 6 blocks is its ``resnet_6blocks`` for 128x128): ``gen_to_target`` (source -> target, the
translator: MR / CT / low-dose PET -> PET) and ``gen_to_source`` (target -> source); two 70x70 PatchGANs with
instance norm (:class:`petsynth.nn.discriminator.PatchGAN`): ``disc_target`` (real PET vs translated PET) and
``disc_source`` (real source vs PET translated back). Unconditional discriminators: neither sees a pair.

Losses, with x a source, y a target (network units, [-1, 1]), G = ``gen_to_target``, F = ``gen_to_source``,
D_t / D_s the discriminators and gan() the least-squares loss (``gan_loss: lsgan``, the default, as in
CycleGAN and the JDAM seed's comparison; ``vanilla``: BCE with logits):

- generators: gan(D_t(G(x)), real) + gan(D_s(F(y)), real)
  + ``cycle_weight`` (lambda, 10) x (|F(G(x)) - x|_1 + |G(F(y)) - y|_1)
  + ``identity_weight`` (0.5) x ``cycle_weight`` x (|G(y) - y|_1 + |F(x) - x|_1);
- discriminators: 0.5 (gan(D_t(y), real) + gan(D_t(G(x)), fake)) + the same for D_s with x and F(y), on this
  step's translations (detached).

Logged (unweighted): ``gan_target`` / ``gan_source`` (the generators' GAN terms), ``cycle_source`` /
``cycle_target`` (L1 of the reconstructed source / PET), ``identity_target`` / ``identity_source``; ``d_target``
and ``d_source`` (each discriminator's loss).

The identity term is CycleGAN's ``lambda_identity`` (weight relative to the cycle weight). Across modalities
(MR or CT -> PET) "identity" asks G to leave a PET unchanged and F to leave an MR (or CT) unchanged: a
regulariser of intensity mapping rather than a true identity; ``identity_weight: 0`` turns it off (and skips
its two generator passes). For lpet2spet both sides are PET and it is CycleGAN's identity proper.

Two optimiser groups, stepped in this order by the one trainer: "generators" (both generators; the
discriminators are frozen during that forward) and "discriminators" (both; the translations of the generator
turn are cached per micro-batch and detached). Every parameter of a group gets a gradient in each of its
backward passes, as DistributedDataParallel needs. No image pool (CycleGAN's buffer of 50 past fakes): its
random draws and contents would have to be saved to keep resume exact; the discriminators see this step's
translations only.

Unpaired (``unpaired: true``, the default): the slices of each micro-batch are split in two halves (the
trainer draws them in a random order that is a pure function of seed and step, so the split is deterministic
and resume exact): the sources of the first half (ceil(B/2) slices) meet the targets of the second half
(floor(B/2) other slices). No slice contributes both its source and its target to a step, so training never
sees a pair, not even as a set; only half of each slice's images are used per step, and a micro-batch needs
at least 2 slices (``batch_size`` 2: CycleGAN's one image per domain). With ``unpaired: false`` all sources
and targets of the micro-batch are used: the losses still never compare a source with its own target (every
term is a batch mean of per-image terms of one domain: re-pairing within a batch, e.g. by a derangement, would
not change them; tested), but each step's sources and targets are then the same slices. Validation metrics do
use the pairs (translation vs its target), as for every method.

Optimiser: CycleGAN uses Adam lr 2e-4, betas (0.5, 0.999); ``default_lr`` is 2e-4 and the trainer takes betas
from the run: ``--set 'train.betas=[0.5,0.999]'``. CycleGAN's linear decay of the lr over its second 100 epochs
is not offered (``train.lr_schedule: cosine`` is the nearest).

Translation: G(source) in network units -> SUV through the inverse target transform; one deterministic pass
(instance norm has no running statistics; dropout, when configured, is off in eval mode, in which
``load_method`` returns models). Works for every task; a task's guidance image (lpet2spet's CT) is ignored.
The EMA (when the run keeps one) covers ``gen_to_target`` only: the exported model's translator is averaged,
the other networks are the last step's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from petsynth.config import Config
from petsynth.data.intensity import IntensityTransform
from petsynth.methods.base import Method, MethodError, register
from petsynth.methods.parts import gan_loss
from petsynth.nn.discriminator import DiscriminatorConfig, PatchGAN
from petsynth.nn.resnet_generator import ResnetGenerator, ResnetGeneratorConfig
from petsynth.tasks import DEFAULT_TASK, TASK_NAMES, get_task


class CycleGANDiscriminatorConfig(DiscriminatorConfig):
    """CycleGAN's PatchGAN: 64 filters, 3 layers (70x70 patches), instance norm; ``in_channels`` is 1."""

    norm: str = Field("INSTANCE", description="MONAI norm name; CycleGAN: INSTANCE")


class CycleGANConfig(Config):
    generator: ResnetGeneratorConfig = Field(default_factory=ResnetGeneratorConfig,
                                             description="both generators (resnet_9blocks)")
    discriminator: CycleGANDiscriminatorConfig = Field(default_factory=CycleGANDiscriminatorConfig,
                                                       description="both discriminators")
    cycle_weight: float = Field(10.0, ge=0, description="lambda of both cycle-consistency L1 terms")
    identity_weight: float = Field(0.5, ge=0, description="identity L1 weight relative to cycle_weight; 0: off")
    gan_loss: Literal["lsgan", "vanilla"] = Field("lsgan", description="lsgan: least squares; vanilla: BCE")
    unpaired: bool = Field(True, description="sources and targets of a step from disjoint slices (halves)")
    transforms: dict[str, IntensityTransform] | None = Field(None, description="default: the task's")


@register
class CycleGAN(Method):
    name = "cyclegan"
    summary = "CycleGAN (JDAM's comparison): 2 ResNet generators, 2 PatchGANs, LSGAN + cycle x 10 + identity; unpaired"
    tasks = TASK_NAMES
    config_class = CycleGANConfig
    default_lr = 2e-4

    def __init__(self, config: CycleGANConfig, task: str = DEFAULT_TASK, load_parts: bool = True):
        super().__init__(config, task)
        if config.transforms is None:
            config.transforms = get_task(task).default_transforms()
        self.gen_to_target = ResnetGenerator(config.generator, in_channels=1, out_channels=1)
        self.gen_to_source = ResnetGenerator(config.generator, in_channels=1, out_channels=1)
        disc = config.discriminator.model_copy(update={"in_channels": 1})
        self.disc_target = PatchGAN(disc)
        self.disc_source = PatchGAN(disc)
        self._fakes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._fakes_step = -1

    def intensity_transforms(self) -> dict[str, IntensityTransform]:
        return dict(self.config.transforms)

    def ema_module_names(self) -> list[str]:
        return ["gen_to_target"]

    def optimizer_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"generators": [*self.gen_to_target.parameters(), *self.gen_to_source.parameters()],
                "discriminators": [*self.disc_target.parameters(), *self.disc_source.parameters()]}

    def _gan(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        return gan_loss(logits, real, self.config.gan_loss)

    def domains(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sources, targets) of a training batch in network units: with ``unpaired``, the sources of the
        first ceil(B/2) slices and the targets of the other floor(B/2); else all of both."""
        t = self.config.transforms
        source, target = batch["source"], batch["target"]
        if self.config.unpaired:
            n = source.shape[0]
            if n < 2:
                raise MethodError("cyclegan with unpaired: true takes sources and targets from different slices "
                                  f"and needs at least 2 slices per micro-batch, got {n}; raise train.batch_size "
                                  "(per process and micro-batch: batch_size / (grad_accum x processes)) or set "
                                  "method_config.unpaired=false")
            half = (n + 1) // 2
            source, target = source[:half], target[half:]
        return t["source"].forward(source), t["target"].forward(target)

    def losses(self, batch: Mapping[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        x, y = self.domains(batch)
        if step != self._fakes_step:  # translations of this step's micro-batches, for the discriminators' turn
            self._fakes, self._fakes_step = {}, step
        key = id(batch["source"])
        if group == "generators":
            fake_y = self.gen_to_target(x)
            fake_x = self.gen_to_source(y)
            for d in (self.disc_target, self.disc_source):
                d.requires_grad_(False)
            try:
                gan_t = self._gan(self.disc_target(fake_y), True)
                gan_s = self._gan(self.disc_source(fake_x), True)
            finally:
                for d in (self.disc_target, self.disc_source):
                    d.requires_grad_(True)
            cyc_s = F.l1_loss(self.gen_to_source(fake_y).float(), x.float())
            cyc_t = F.l1_loss(self.gen_to_target(fake_x).float(), y.float())
            loss = gan_t + gan_s + cfg.cycle_weight * (cyc_s + cyc_t)
            out = {"gan_target": gan_t.detach(), "gan_source": gan_s.detach(),
                   "cycle_source": cyc_s.detach(), "cycle_target": cyc_t.detach()}
            if cfg.identity_weight > 0:
                id_t = F.l1_loss(self.gen_to_target(y).float(), y.float())
                id_s = F.l1_loss(self.gen_to_source(x).float(), x.float())
                loss = loss + cfg.identity_weight * cfg.cycle_weight * (id_t + id_s)
                out.update(identity_target=id_t.detach(), identity_source=id_s.detach())
            self._fakes[key] = (fake_y.detach(), fake_x.detach())
            return {"loss": loss, **out}
        if group != "discriminators":
            raise MethodError(f"cyclegan has optimiser groups 'generators' and 'discriminators', not {group!r}")
        fakes = self._fakes.get(key)
        if fakes is None or fakes[0].shape != x.shape or fakes[1].shape != y.shape:
            with torch.no_grad():
                fakes = (self.gen_to_target(x), self.gen_to_source(y))
        fake_y, fake_x = fakes
        d_t = 0.5 * (self._gan(self.disc_target(y), True) + self._gan(self.disc_target(fake_y.to(y.dtype)), False))
        d_s = 0.5 * (self._gan(self.disc_source(x), True) + self._gan(self.disc_source(fake_x.to(x.dtype)), False))
        return {"loss": d_t + d_s, "d_target": d_t.detach(), "d_source": d_s.detach()}

    @torch.no_grad()
    def translate(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                  **options: Any) -> torch.Tensor:
        """Synthetic PET in SUV, (B, 1, H, W): ``gen_to_target`` on the source (any guidance is ignored)."""
        self.sampler_options(options)  # none: an option given is an error
        t = self.config.transforms
        return t["target"].inverse(self.gen_to_target(t["source"].forward(batch["source"])).float())

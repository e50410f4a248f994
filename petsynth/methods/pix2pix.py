"""``pix2pix``: conditional GAN image translation (Isola et al. 2017), a baseline of the CPDM paper.

Generator: pix2pix's U-Net (:class:`petsynth.nn.unet.Pix2PixUNet`, ``unet_256``: 8 stride-2 levels, batch
norm, dropout 0.5 in three decoder levels, tanh). Discriminator: the 70x70 PatchGAN
(:class:`petsynth.nn.discriminator.PatchGAN`, 3 layers, batch norm) on concat(generator input, PET) — the
conditional discriminator. Losses as pix2pix: generator GAN loss + ``l1_weight`` (100) x L1(fake, PET);
discriminator 0.5 (loss(real, 1) + loss(fake, 0)); GAN loss "vanilla" (BCE with logits, pix2pix's
default) or "lsgan". Two optimiser groups, stepped in order: "generator", then "discriminator" (on this
step's fakes, detached).

Optimiser: pix2pix uses Adam lr 2e-4, betas (0.5, 0.999), no weight decay. ``default_lr`` is 2e-4; the
trainer takes betas from the run, so pass ``--set train.betas=[0.5,0.999]``. pix2pix keeps dropout on at
test time; here ``translate`` runs in eval mode (dropout off, batch-norm running statistics), deterministic.

Maps ("w/ (M_sigma, M_mu)", CPDM paper Table 5): extra input channels of the generator after the source,
and therefore also part of the discriminator's condition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from petsynth.data.intensity import IntensityTransform
from petsynth.methods.base import Method, register
from petsynth.methods.parts import GuidanceMaps, GuidanceMapsConfig, gan_loss
from petsynth.nn.discriminator import DiscriminatorConfig, PatchGAN
from petsynth.nn.unet import Pix2PixUNet, Pix2PixUNetConfig
from petsynth.tasks import DEFAULT_TASK, TASK_NAMES, get_task


class Pix2PixConfig(GuidanceMapsConfig):
    generator: Pix2PixUNetConfig = Field(default_factory=Pix2PixUNetConfig)
    discriminator: DiscriminatorConfig = Field(
        default_factory=DiscriminatorConfig,
        description="70x70 PatchGAN; in_channels is set by the method (condition channels + 1)")
    l1_weight: float = Field(100.0, ge=0, description="lambda of the L1 term (pix2pix: 100)")
    gan_loss: Literal["vanilla", "lsgan"] = Field("vanilla", description="vanilla: BCE with logits")
    transforms: dict[str, IntensityTransform] | None = Field(None, description="default: the task's")


@register
class Pix2Pix(GuidanceMaps, Method):
    name = "pix2pix"
    summary = "pix2pix: U-Net generator + 70x70 PatchGAN, L1 x 100 (CPDM paper baseline); optional maps"
    tasks = TASK_NAMES
    config_class = Pix2PixConfig
    default_lr = 2e-4

    def __init__(self, config: Pix2PixConfig, task: str = DEFAULT_TASK, load_parts: bool = True):
        super().__init__(config, task)
        if config.transforms is None:
            config.transforms = get_task(task).default_transforms()
        self._build_maps(config, load_parts)
        cond = 1 + self.num_maps
        self.generator = Pix2PixUNet(config.generator, in_channels=cond, out_channels=1)
        self.discriminator = PatchGAN(config.discriminator.model_copy(update={"in_channels": cond + 1}))
        self._fakes: dict[int, torch.Tensor] = {}
        self._fakes_step = -1

    def intensity_transforms(self) -> dict[str, IntensityTransform]:
        return dict(self.config.transforms)

    def ema_module_names(self) -> list[str]:
        return ["generator"]

    def optimizer_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"generator": list(self.generator.parameters()),
                "discriminator": list(self.discriminator.parameters())}

    def _gan(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        return gan_loss(logits, real, self.config.gan_loss)

    def losses(self, batch: Mapping[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        cond = self.source_with_maps(batch)
        real = self.config.transforms["target"].forward(batch["target"])
        if step != self._fakes_step:  # fakes of this step's micro-batches, for the discriminator's turn
            self._fakes, self._fakes_step = {}, step
        if group == "generator":
            fake = self.generator(cond)
            self.discriminator.requires_grad_(False)
            g_gan = self._gan(self.discriminator(torch.cat([cond, fake], dim=1)), True)
            self.discriminator.requires_grad_(True)
            l1 = F.l1_loss(fake.float(), real.float())
            self._fakes[id(batch["source"])] = fake.detach()
            return {"loss": g_gan + self.config.l1_weight * l1, "g_gan": g_gan.detach(), "l1": l1.detach()}
        fake = self._fakes.get(id(batch["source"]))
        if fake is None or fake.shape != real.shape:
            with torch.no_grad():
                fake = self.generator(cond)
        d_real = self._gan(self.discriminator(torch.cat([cond, real.to(cond.dtype)], dim=1)), True)
        d_fake = self._gan(self.discriminator(torch.cat([cond, fake.to(cond.dtype)], dim=1)), False)
        return {"loss": 0.5 * (d_real + d_fake), "d_real": d_real.detach(), "d_fake": d_fake.detach()}

    @torch.no_grad()
    def translate(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                  **options: Any) -> torch.Tensor:
        """Synthetic PET in SUV, (B, 1, H, W) (eval mode: dropout off)."""
        self.sampler_options(options)  # none: an option given is an error
        return self.config.transforms["target"].inverse(self.generator(self.source_with_maps(batch)).float())

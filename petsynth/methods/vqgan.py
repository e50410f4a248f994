"""``vqgan``: the VQ autoencoder CPDM's bridge runs in, trained on CT and/or PET slices.

Loss = L1 + ``ssim_weight`` (1 - SSIM) + codebook (commitment) loss + ``adversarial_weight`` x the PatchGAN
hinge loss from ``discriminator_start`` on. The public VQGAN also uses an ImageNet LPIPS perceptual term:
no such network is available offline, so a structural (SSIM) term stands in for it.

With ``autoencoder.spatial_dims: 3`` it is a 3D autoencoder (uPETe's): trained on slabs of ``slab_depth``
whole slices (:mod:`petsynth.data.slabs`), a 3D PatchGAN, the SSIM term over the slabs' slices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from petsynth.config import Config
from petsynth.data.batch import as_slices
from petsynth.data.intensity import IntensityTransform
from petsynth.methods.base import Method, register
from petsynth.metrics.image import ssim
from petsynth.nn.autoencoder import VQAutoencoder, VQAutoencoderConfig
from petsynth.nn.discriminator import DiscriminatorConfig, PatchGAN
from petsynth.tasks import DEFAULT_TASK, TASK_NAMES, get_task


class VQGANConfig(Config):
    autoencoder: VQAutoencoderConfig = Field(default_factory=VQAutoencoderConfig)
    discriminator: DiscriminatorConfig = Field(default_factory=lambda: DiscriminatorConfig(channels=32))
    modality: Literal["both", "source", "target"] = Field(
        "both", description="images it learns: both (one shared autoencoder for CT and PET), source or target")
    ssim_weight: float = Field(0.2, ge=0)
    codebook_weight: float = Field(1.0, ge=0)
    adversarial_weight: float = Field(0.1, ge=0)
    discriminator_start: int = Field(1000, ge=0, description="step at which the adversarial loss starts")
    transforms: dict[str, IntensityTransform] | None = Field(None, description="default: the task's")
    slab_depth: int = Field(16, ge=1, description="3D autoencoder (autoencoder.spatial_dims 3): slices per slab")


@register
class VQGAN(Method):
    name = "vqgan"
    summary = "VQ autoencoder (L1 + SSIM + codebook + PatchGAN) giving the latent space of cpdm/bbdm"
    tasks = TASK_NAMES
    config_class = VQGANConfig
    default_lr = 2e-4

    def __init__(self, config: VQGANConfig, task: str = DEFAULT_TASK, **_: Any):
        super().__init__(config, task)
        if config.transforms is None:
            config.transforms = get_task(task).default_transforms()
        self.autoencoder = VQAutoencoder(config.autoencoder)
        dims = config.autoencoder.spatial_dims  # the discriminator sees what the autoencoder makes
        self.discriminator = PatchGAN(config.discriminator.model_copy(update={"spatial_dims": dims}))

    @property
    def slab_depth(self) -> int | None:
        return self.config.slab_depth if self.config.autoencoder.spatial_dims == 3 else None

    def intensity_transforms(self) -> dict[str, IntensityTransform]:
        return dict(self.config.transforms)

    def ema_module_names(self) -> list[str]:
        return ["autoencoder"]

    def optimizer_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"autoencoder": list(self.autoencoder.parameters()),
                "discriminator": list(self.discriminator.parameters())}

    def _images(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The batch's images in network units, (B', 1, H, W)."""
        t = self.config.transforms
        roles = ["source", "target"] if self.config.modality == "both" else [self.config.modality]
        return torch.cat([t[r].forward(batch[r]) for r in roles])

    def losses(self, batch: Mapping[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        x = self._images(batch)
        adversarial = self.config.adversarial_weight > 0 and step >= self.config.discriminator_start
        if group == "autoencoder":
            rec, codebook = self.autoencoder(x)
            l1 = F.l1_loss(rec, x)
            structure = 1.0 - ssim(as_slices(rec.float()), as_slices(x.float()), data_range=2.0).mean()
            loss = l1 + self.config.ssim_weight * structure + self.config.codebook_weight * codebook
            out = {"l1": l1, "ssim_loss": structure, "codebook": codebook}
            if adversarial:
                self.discriminator.requires_grad_(False)
                g_loss = -self.discriminator(rec).mean()
                self.discriminator.requires_grad_(True)
                loss = loss + self.config.adversarial_weight * g_loss
                out["generator"] = g_loss
            self._last_reconstruction = rec.detach()
            return {"loss": loss, **out}
        # discriminator: hinge loss on the reconstruction of this step (zero before the start step)
        if not adversarial:
            return {"loss": sum(p.sum() * 0.0 for p in self.discriminator.parameters())}
        rec = getattr(self, "_last_reconstruction", None)
        if rec is None or rec.shape != x.shape:
            with torch.no_grad():
                rec = self.autoencoder(x)[0]
        d_loss = 0.5 * (F.relu(1.0 - self.discriminator(x)).mean() + F.relu(1.0 + self.discriminator(rec)).mean())
        return {"loss": d_loss}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, role: str) -> torch.Tensor:
        """Encode and decode physical images of ``role`` ("source"/"target"); physical units back."""
        t = self.config.transforms[role]
        return t.inverse(self.autoencoder(t.forward(images))[0])

    @torch.no_grad()
    def validation_pair(self, batch: Mapping[str, Any], **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        role = "source" if self.config.modality == "source" else "target"
        return self.reconstruct(batch[role], role), batch[role]

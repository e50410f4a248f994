"""PatchGAN discriminator (pix2pix), a thin wrapper of MONAI's ``PatchDiscriminator``.

With ``num_layers=3`` and 4x4 kernels the convolutions have strides 2, 2, 2, 1, 1 as in pix2pix's
``NLayerDiscriminator``: each output logit sees a 70x70 input patch.
"""

from __future__ import annotations

from typing import Literal

import torch
from monai.networks.nets import PatchDiscriminator
from pydantic import Field
from torch import nn

from petsynth.config import Config

__all__ = ["DiscriminatorConfig", "PatchGAN", "build_discriminator", "receptive_field"]


class DiscriminatorConfig(Config):
    """PatchGAN settings. ``in_channels``: 1 for the VQGAN, 2 for pix2pix's concat(source, target)."""

    spatial_dims: Literal[2, 3] = Field(2, description="2: slices; 3: volumes (B, C, D, H, W)")
    in_channels: int = Field(1, ge=1)
    channels: int = Field(64, ge=1, description="filters of the first conv, doubled per layer")
    num_layers: int = Field(3, ge=1, description="3: 70x70 receptive field")
    kernel_size: int = Field(4, ge=1)
    norm: str = Field("BATCH", description="MONAI norm name: BATCH, INSTANCE, ...")


def receptive_field(num_layers: int = 3, kernel_size: int = 4) -> int:
    """Side of the input patch one output logit sees (70 for the pix2pix default)."""
    strides = [2] * num_layers + [1, 1]  # initial conv, num_layers-1 stride-2 layers, one stride-1, final conv
    rf = 1
    for s in reversed(strides):
        rf = (rf - 1) * s + kernel_size
    return rf


class PatchGAN(nn.Module):
    """PatchGAN: (B, in_channels, H, W) images in about [-1, 1] -> (B, 1, h, w) real/fake logits.

    For 256x256 inputs (3 layers) h = w = 30. :meth:`features` also returns the intermediate maps
    (for a feature-matching loss).
    """

    def __init__(self, cfg: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DiscriminatorConfig()
        self.net = PatchDiscriminator(
            spatial_dims=cfg.spatial_dims,
            channels=cfg.channels,
            in_channels=cfg.in_channels,
            out_channels=1,
            num_layers_d=cfg.num_layers,
            kernel_size=cfg.kernel_size,
            norm=cfg.norm,
        )

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.cfg.num_layers, self.cfg.kernel_size)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every layer; the last one is the logits."""
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


def build_discriminator(cfg: DiscriminatorConfig | None = None) -> PatchGAN:
    """A :class:`PatchGAN` from its config (defaults: 1 channel, 64 filters, 3 layers, batch norm)."""
    return PatchGAN(cfg)

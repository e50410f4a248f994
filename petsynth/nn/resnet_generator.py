"""ResNet image-to-image generator (Johnson et al. 2016, as CycleGAN uses it: ``resnet_9blocks``).

Layout in CycleGAN's notation, for ``base_channels`` k = 64 and ``downsamplings`` 2:
c7s1-64, d128, d256, R256 x ``num_blocks``, u128, u64, c7s1-out, tanh.

- c7s1-k: reflection padding 3, 7x7 convolution (stride 1) to k channels, normalisation, ReLU;
- dk: 3x3 convolution with stride 2 (zero padding 1) to k channels, normalisation, ReLU;
- Rk: residual block x + [reflection pad 1, 3x3 conv, norm, ReLU, (dropout), reflection pad 1, 3x3 conv, norm];
- uk: 3x3 transposed convolution with stride 2 (padding 1, output padding 1) to k channels, norm, ReLU;
- the last c7s1 has no normalisation and is followed by tanh, so outputs lie in (-1, 1).

Instance normalisation without affine parameters by default (CycleGAN's); the convolutions before an
instance norm keep their bias, as CycleGAN's do. Weights are initialised N(0, 0.02), biases 0. CycleGAN uses 9
blocks for 256x256 images and 6 (``resnet_6blocks``) for 128x128. H and W must be divisible by
2^``downsamplings``.
"""

from __future__ import annotations

from typing import Literal

import torch
from monai.networks.utils import normal_init
from pydantic import Field
from torch import nn

from petsynth.config import Config
from petsynth.nn.shapes import check_divisible

__all__ = ["ResnetGenerator", "ResnetGeneratorConfig"]


class ResnetGeneratorConfig(Config):
    """ResNet generator settings (defaults: CycleGAN's ``resnet_9blocks``, 11.4 M parameters at 3 -> 3
    channels)."""

    base_channels: int = Field(64, ge=1, description="ngf: channels of the first c7s1 layer, doubled per downsampling")
    num_blocks: int = Field(9, ge=0, description="residual blocks at the bottleneck (9; 6 for 128x128 images)")
    downsamplings: int = Field(2, ge=1, le=5, description="stride-2 convolutions (and transposed ones back)")
    norm: Literal["instance", "batch"] = Field("instance", description="CycleGAN: instance (no affine)")
    dropout: float = Field(0.0, ge=0, lt=1, description="between the two convs of each block (CycleGAN: off)")


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels) if kind == "instance" else nn.BatchNorm2d(channels)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: str, dropout: float, bias: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias),
                                   _norm(norm, channels), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), _norm(norm, channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """(B, in_channels, H, W) -> (B, out_channels, H, W) in (-1, 1) (see the module docstring)."""

    def __init__(self, cfg: ResnetGeneratorConfig | None = None, in_channels: int = 1, out_channels: int = 1) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ResnetGeneratorConfig()
        k, norm, bias = cfg.base_channels, cfg.norm, cfg.norm == "instance"
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, k, 7, bias=bias), _norm(norm, k),
                                   nn.ReLU(True)]
        for i in range(cfg.downsamplings):
            c = k * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias), _norm(norm, 2 * c), nn.ReLU(True)]
        c = k * 2 ** cfg.downsamplings
        layers += [_ResidualBlock(c, norm, cfg.dropout, bias) for _ in range(cfg.num_blocks)]
        for _ in range(cfg.downsamplings):
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                       _norm(norm, c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(k, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(normal_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2 ** self.cfg.downsamplings
        check_divisible(x, f, f"2^downsamplings = {f}")
        return self.net(x)

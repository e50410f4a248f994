"""Image-to-image U-Nets of the baselines (no timestep input).

- :func:`build_unet` / :class:`UNetConfig`: the regression U-Net of the U-Net seed (Ronneberger et al.
  2015), MONAI's ``BasicUNet``: per level two 3x3 convolutions each followed by ReLU, 2x2 max pooling with
  stride 2 and the channels doubled per level (64 .. 1024 at the defaults, 4 poolings); decoder steps of a
  2x2 stride-2 transposed convolution that halves the channels, concatenation with the encoder features of
  that level and two 3x3 convolutions + ReLU; a final 1x1 convolution. Differences from the paper: padded
  ("same") convolutions, so no cropping and output size = input size; the last transposed convolution keeps
  its 128 channels (MONAI's ``halves=False`` on the top level) before the two 3x3 convolutions to 64; no
  normalisation by default (the seed names none; ``norm: batch`` or ``instance`` adds one after each conv).
- :class:`CascadedUNet`: 1 to 6 such U-Nets; stage 1 sees the input, stage k > 1 sees concat(input, output of
  stage k - 1) and refines it (replaces it, or adds to it with ``residual``).
- :class:`Pix2PixUNet` / :class:`Pix2PixUNetConfig`: pix2pix's ``UnetGenerator`` (Isola et al. 2017; the
  public ``unet_256``): ``num_downs`` 4x4 stride-2 convolutions (LeakyReLU 0.2, batch norm except on the
  first and innermost), 4x4 stride-2 transposed convolutions back (ReLU, batch norm, dropout 0.5 on the
  three decoder levels after the innermost), skip connections by concatenation, tanh output.
"""

from __future__ import annotations

from typing import Literal

import torch
from monai.networks.nets import BasicUNet
from monai.networks.utils import normal_init
from pydantic import Field, field_validator
from torch import nn

from petsynth.config import Config
from petsynth.nn.shapes import check_divisible

__all__ = ["UNetConfig", "build_unet", "CascadedUNet", "Pix2PixUNetConfig", "Pix2PixUNet"]


class UNetConfig(Config):
    """Regression U-Net (MONAI ``BasicUNet``, 2D, 4 max-pooling levels)."""

    features: tuple[int, int, int, int, int, int] = Field(
        (64, 128, 256, 512, 1024, 64),
        description="channels of the 5 encoder levels (doubling in the seed) and after the last up-convolution")
    act: str = Field("relu", description="activation after every 3x3 conv (MONAI name); the seed: ReLU")
    norm: str | None = Field(None, description="normalisation after each conv (batch, instance); the seed: none")
    dropout: float = Field(0.0, ge=0, lt=1)
    upsample: Literal["deconv", "pixelshuffle", "nontrainable"] = Field(
        "deconv", description="deconv: 2x2 stride-2 transposed convolutions (the seed)")

    @field_validator("features")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(c < 1 for c in v):
            raise ValueError("features must be >= 1")
        return v


def build_unet(cfg: UNetConfig | None = None, in_channels: int = 1, out_channels: int = 1) -> BasicUNet:
    """A 2D ``BasicUNet``: (B, in_channels, H, W) -> (B, out_channels, H, W), H and W divisible by 16.

    Defaults (1 -> 1 channel): 31.0 M parameters, the size of Ronneberger's U-Net.
    """
    cfg = cfg or UNetConfig()
    norm = cfg.norm if cfg.norm is None else (cfg.norm, {"affine": True}) if cfg.norm.lower() == "instance" \
        else cfg.norm
    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=cfg.features,
                     act=cfg.act, norm=norm, bias=True, dropout=cfg.dropout, upsample=cfg.upsample)


class CascadedUNet(nn.Module):
    """``stages`` U-Nets in a row. ``forward`` returns every stage's output (the last one is the prediction).

    Stage 1: (B, in_channels) -> (B, out_channels); stage k > 1: concat(input, previous output)
    (B, in_channels + out_channels) -> (B, out_channels), which replaces the previous output, or with
    ``residual`` is added to it.
    """

    def __init__(self, cfg: UNetConfig | None = None, in_channels: int = 1, out_channels: int = 1,
                 stages: int = 1, residual: bool = False) -> None:
        super().__init__()
        if not 1 <= stages <= 6:
            raise ValueError(f"stages must be 1 to 6, got {stages}")
        self.residual = residual
        self.stages = nn.ModuleList(
            [build_unet(cfg, in_channels + (out_channels if k else 0), out_channels) for k in range(stages)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_divisible(x, 16, "16 (4 poolings)")
        outputs = [self.stages[0](x)]
        for stage in self.stages[1:]:
            y = stage(torch.cat([x, outputs[-1]], dim=1))
            outputs.append(outputs[-1] + y if self.residual else y)
        return outputs


class Pix2PixUNetConfig(Config):
    """pix2pix ``UnetGenerator``; ``num_downs`` 8 for 256x256 (``unet_256``), 7 for 128x128."""

    num_downs: int = Field(8, ge=5, description="stride-2 downsamplings; H and W divisible by 2^num_downs")
    base_channels: int = Field(64, ge=1, description="ngf: first level's filters, doubled up to 8 x ngf")
    norm: Literal["batch", "instance"] = "batch"
    dropout: float = Field(0.5, ge=0, lt=1, description="on the 3 decoder levels after the innermost")


class _SkipBlock(nn.Module):
    """One level of pix2pix's ``UnetSkipConnectionBlock``: down, inner block, up; concat(x, up) unless
    outermost."""

    def __init__(self, outer: int, inner: int, in_channels: int | None = None, sub: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, norm: str = "batch",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.outermost = outermost
        norm_layer = nn.BatchNorm2d if norm == "batch" else nn.InstanceNorm2d
        use_bias = norm != "batch"
        in_channels = outer if in_channels is None else in_channels
        down_conv = nn.Conv2d(in_channels, inner, 4, stride=2, padding=1, bias=use_bias)
        down_act, up_act = nn.LeakyReLU(0.2, True), nn.ReLU(True)
        if outermost:
            up = nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1)
            layers = [down_conv, sub, up_act, up, nn.Tanh()]
        elif innermost:
            up = nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=use_bias)
            layers = [down_act, down_conv, up_act, up, norm_layer(outer)]
        else:
            up = nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1, bias=use_bias)
            layers = [down_act, down_conv, norm_layer(inner), sub, up_act, up, norm_layer(outer)]
            if dropout:
                layers.append(nn.Dropout(dropout))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], dim=1)


class Pix2PixUNet(nn.Module):
    """pix2pix U-Net generator: (B, in_channels, H, W) -> (B, out_channels, H, W) in (-1, 1).

    Weights initialised N(0, 0.02) (batch-norm scales N(1, 0.02)) as in pix2pix. Defaults (1 -> 1 channel,
    ``unet_256``): 54.4 M parameters.
    """

    def __init__(self, cfg: Pix2PixUNetConfig | None = None, in_channels: int = 1, out_channels: int = 1) -> None:
        super().__init__()
        self.cfg = cfg = cfg or Pix2PixUNetConfig()
        ngf, kw = cfg.base_channels, dict(norm=cfg.norm)
        block = _SkipBlock(ngf * 8, ngf * 8, innermost=True, **kw)
        for _ in range(cfg.num_downs - 5):
            block = _SkipBlock(ngf * 8, ngf * 8, sub=block, dropout=cfg.dropout, **kw)
        for mult in (4, 2, 1):
            block = _SkipBlock(ngf * mult, ngf * mult * 2, sub=block, **kw)
        self.net = _SkipBlock(out_channels, ngf, in_channels=in_channels, sub=block, outermost=True, **kw)
        self.apply(normal_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2 ** self.cfg.num_downs
        check_divisible(x, f, f"2^num_downs = {f}")
        return self.net(x)

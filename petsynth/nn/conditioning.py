"""CPDM's map encoder: image-resolution guidance maps brought to the latent grid.

The public CPDM code passes each map (Attention map M_sigma, Attenuation map M_mu) through its own
``SpatialRescaler`` (latent-diffusion): ``log2(f)`` bilinear 0.5x resizes, then a learned 1x1 convolution
without bias to 3 channels. The outputs are concatenated with the latent x_t along channels before the
denoiser U-Net. :class:`MapEncoder` does the same for all maps at once; one grouped 1x1 convolution is
exactly one independent 1x1 convolution per map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from petsynth.nn.shapes import check_divisible

__all__ = ["MapEncoder"]


class MapEncoder(nn.Module):
    """Downsample ``num_maps`` maps by ``f`` and map each to ``out_channels`` channels by its own 1x1 conv.

    Args:
        num_maps: number of guidance maps (2 in CPDM: attention, attenuation).
        f: downsampling factor, a power of two (1 = pixel space: no resizing).
        out_channels: channels per map after the 1x1 conv (3 in CPDM).
        bias: 1x1 conv bias (the public ``SpatialRescaler`` has none).

    Forward takes a stacked tensor (B, num_maps, H, W) or a sequence of ``num_maps`` tensors (B, 1, H, W)
    at image resolution (H, W divisible by ``f``), in any value range (M_sigma in [0, 1], M_mu in (0, 1]),
    and returns (B, num_maps * out_channels, H / f, W / f): map 0's channels first, then map 1's, ...
    Each 0.5x bilinear resize (align_corners=False, no antialiasing, as ``F.interpolate`` in the public code)
    of an even-sized map equals 2x2 average pooling.
    """

    def __init__(self, num_maps: int = 2, f: int = 4, out_channels: int = 3, bias: bool = False) -> None:
        super().__init__()
        if num_maps < 1 or out_channels < 1:
            raise ValueError(f"num_maps and out_channels must be >= 1, got {num_maps}, {out_channels}")
        if f < 1 or f & (f - 1):
            raise ValueError(f"f must be a power of two, got {f}")
        self.num_maps = num_maps
        self.f = f
        self.out_channels = out_channels
        self.num_stages = int(math.log2(f))
        self.proj = nn.Conv2d(num_maps, num_maps * out_channels, kernel_size=1, groups=num_maps, bias=bias)

    def downsample(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H / f, W / f) by ``log2 f`` 0.5x bilinear resizes (no learned weights)."""
        for _ in range(self.num_stages):
            maps = F.interpolate(maps, scale_factor=0.5, mode="bilinear", align_corners=False)
        return maps

    def forward(self, maps: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if not isinstance(maps, torch.Tensor):
            maps = torch.cat(list(maps), dim=1)
        if maps.ndim != 4 or maps.shape[1] != self.num_maps:
            raise ValueError(f"expected {self.num_maps} maps as (B, {self.num_maps}, H, W), got {tuple(maps.shape)}")
        check_divisible(maps, self.f, f"f={self.f}", what="map")
        return self.proj(self.downsample(maps))

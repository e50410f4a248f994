"""``n2v``: Noise2Void (Krull et al., CVPR 2019), a blind-spot self-supervised denoiser trained on the low-dose
PET alone: the uPETe seed's unsupervised comparison.

No clean image is ever seen. In each training slice (the batch's low-dose "source", in network units) a
random ``mask_fraction`` of the pixels is hidden: each takes the value of a random other pixel of its
``neighbourhood`` x ``neighbourhood`` window. A U-Net (MONAI ``BasicUNet``, :class:`~petsynth.nn.unet.UNetConfig`)
sees the altered slice and is scored (MSE) only on the hidden pixels, against their own noisy values: since
the noise of one pixel is independent of its neighbours', the best it can do is predict the signal. Translate
runs the U-Net on the whole low-dose slice. (Reconstructed PET noise is partly correlated between
neighbouring pixels, which this assumption ignores; hence the comparison.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from petsynth.config import Config
from petsynth.data.intensity import IntensityTransform
from petsynth.methods.base import Method, register
from petsynth.nn.unet import UNetConfig, build_unet
from petsynth.tasks import get_task


class Noise2VoidConfig(Config):
    unet: UNetConfig = Field(default_factory=lambda: UNetConfig(features=(32, 64, 128, 256, 512, 32), norm="batch"))
    mask_fraction: float = Field(0.01, gt=0, lt=0.5, description="share of the pixels hidden per slice")
    neighbourhood: int = Field(5, ge=3, description="side of the window a hidden pixel takes a value from (odd)")
    transforms: dict[str, IntensityTransform] | None = Field(None, description="default: the task's")


def blind_spots(x: torch.Tensor, fraction: float, neighbourhood: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(altered x, mask): ``x`` (B, C, H, W) with a random ``fraction`` of its pixels (mask True) replaced by a
    random other pixel of their ``neighbourhood`` window (the offset mirrored at the borders: never the pixel itself),
    as Noise2Void hides them."""
    b, c, h, w = x.shape
    r = neighbourhood // 2
    mask = torch.rand((b, 1, h, w), generator=generator, device=x.device) < fraction
    dy = torch.randint(-r, r + 1, (b, 1, h, w), generator=generator, device=x.device)
    dx = torch.randint(-r, r + 1, (b, 1, h, w), generator=generator, device=x.device)
    dx = torch.where((dy == 0) & (dx == 0), torch.ones_like(dx), dx)  # never the pixel itself
    rows = _offset(torch.arange(h, device=x.device).view(1, 1, h, 1), dy, h)
    cols = _offset(torch.arange(w, device=x.device).view(1, 1, 1, w), dx, w)
    index = (rows * w + cols).expand(b, c, h, w).reshape(b, c, -1)
    neighbours = torch.gather(x.reshape(b, c, -1), 2, index).view(b, c, h, w)
    return torch.where(mask, neighbours, x), mask


def _offset(base: torch.Tensor, step: torch.Tensor, size: int) -> torch.Tensor:
    """base + step, or base - step where that leaves 0..size-1 (a window's offset mirrored at the border:
    never back onto ``base`` itself for a non-zero step, as mirroring the coordinate could be)."""
    index = base + step
    return torch.where((index < 0) | (index >= size), base - step, index)


@register
class Noise2Void(Method):
    name = "n2v"
    summary = "Noise2Void: blind-spot self-supervised denoiser trained on the low-dose PET alone (lpet2spet)"
    tasks = ("lpet2spet",)
    config_class = Noise2VoidConfig
    default_lr = 4e-4

    def __init__(self, config: Noise2VoidConfig, task: str = "lpet2spet", load_parts: bool = True):
        super().__init__(config, task)
        if config.neighbourhood % 2 == 0:
            raise ValueError(f"n2v: neighbourhood must be odd, got {config.neighbourhood}")
        if config.transforms is None:
            config.transforms = get_task(task).default_transforms()
        self.net = build_unet(config.unet)

    def intensity_transforms(self) -> dict[str, IntensityTransform]:
        return dict(self.config.transforms)

    def ema_module_names(self) -> list[str]:
        return ["net"]

    def losses(self, batch: Mapping[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        """The low-dose "source" only: the standard-dose "target" is never read."""
        x = self.config.transforms["source"].forward(batch["source"]).float()
        altered, mask = blind_spots(x, self.config.mask_fraction, self.config.neighbourhood)
        pred = self.net(altered).float()
        return {"loss": F.mse_loss(pred[mask], x[mask])}

    @torch.no_grad()
    def translate(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                  **options: Any) -> torch.Tensor:
        """The denoised low-dose PET in SUV, (B, 1, H, W)."""
        self.sampler_options(options)  # none: an option given is an error
        x = self.config.transforms["source"].forward(batch["source"])
        return self.config.transforms["target"].inverse(self.net(x).float())

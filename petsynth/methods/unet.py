"""``unet``: U-Net regression from the source image to the PET (the U-Net seed), 1 to 6 cascaded stages.

The network (:class:`petsynth.nn.unet.CascadedUNet` of MONAI ``BasicUNet``\\ s) follows the seed: two 3x3
convolutions + ReLU per level, 2x2 max pooling, channels doubled per level (64..1024), 2x2 transposed
convolutions that halve them, skip connections; no normalisation (the seed names none; ``unet.norm``).
Loss: MSE in network units (PET window 0..20 SUV -> [-1, 1]). The seed trains with Adam, lr 1e-3 and L2
weight decay 1e-3: ``default_lr`` is 1e-3; the trainer's optimiser is AdamW (decoupled decay), so set
``--set train.weight_decay=0.001`` for the seed's decay (decoupled, hence weaker than Adam's L2 term).

Cascade (``stages`` 1..6): stage 1 sees the input, stage k > 1 sees concat(input, output of stage k - 1)
and refines it (``residual_stages``: adds a correction instead of replacing it). All stages are trained
together, end to end, by the MSE of the last output (``deep_supervision``: the mean MSE of all outputs).

Maps ("w/ (M_sigma, M_mu)", CPDM paper Table 5): with ``use_attention_map`` / ``use_attenuation_map`` the
maps (M_sigma in {0, 1}, M_mu = exp(-mu L) in (0, 1]) are extra input channels at image resolution, after
the source: input = concat(source, M_sigma, M_mu) (and the previous output in later stages).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from petsynth.data.intensity import IntensityTransform
from petsynth.methods.base import Method, register
from petsynth.methods.parts import GuidanceMaps, GuidanceMapsConfig
from petsynth.nn.unet import CascadedUNet, UNetConfig
from petsynth.tasks import DEFAULT_TASK, TASK_NAMES, get_task


class UNetMethodConfig(GuidanceMapsConfig):
    unet: UNetConfig = Field(default_factory=UNetConfig, description="each stage's U-Net")
    stages: int = Field(1, ge=1, le=6, description="cascaded U-Nets (the seed: 1 to 6)")
    residual_stages: bool = Field(False, description="stage k > 1 adds a correction to the previous output")
    deep_supervision: bool = Field(False, description="loss: mean MSE of every stage's output, not the last's")
    transforms: dict[str, IntensityTransform] | None = Field(None, description="default: the task's")


@register
class UNetRegression(GuidanceMaps, Method):
    name = "unet"
    summary = "U-Net regression (MSE), 1-6 cascaded stages (the U-Net seed); optional maps as input channels"
    tasks = TASK_NAMES
    config_class = UNetMethodConfig
    default_lr = 1e-3

    def __init__(self, config: UNetMethodConfig, task: str = DEFAULT_TASK, load_parts: bool = True):
        super().__init__(config, task)
        if config.transforms is None:
            config.transforms = get_task(task).default_transforms()
        self._build_maps(config, load_parts)
        self.net = CascadedUNet(config.unet, in_channels=1 + self.num_maps, out_channels=1, stages=config.stages,
                                residual=config.residual_stages)

    def intensity_transforms(self) -> dict[str, IntensityTransform]:
        return dict(self.config.transforms)

    def ema_module_names(self) -> list[str]:
        return ["net"]

    def losses(self, batch: Mapping[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        target = self.config.transforms["target"].forward(batch["target"])
        outputs = self.net(self.source_with_maps(batch))
        mse = [F.mse_loss(y.float(), target.float()) for y in outputs]
        loss = torch.stack(mse).mean() if self.config.deep_supervision else mse[-1]
        out = {"loss": loss}
        if len(mse) > 1:
            out.update({f"stage{k + 1}_mse": m.detach() for k, m in enumerate(mse)})
        return out

    @torch.no_grad()
    def translate(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                  **options: Any) -> torch.Tensor:
        """Synthetic PET in SUV, (B, 1, H, W): the last stage's output, inverted from network units."""
        self.sampler_options(options)  # none: an option given is an error
        return self.config.transforms["target"].inverse(self.net(self.source_with_maps(batch))[-1].float())

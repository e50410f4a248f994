"""``attention``: the segmenter behind CPDM's Attention map M_sigma.

A U-Net with a residual (ResNet) encoder learns, from the CT alone, where the PET is bright: its training
masks are the PET thresholded at ``suv_threshold`` (SUVbw, default 2.5, the customary FDG threshold between
background and uptake; the CPDM code thresholds at a fraction of each image's maximum instead, which ties the
mask to the hottest pixel of the slice). Loss: soft Dice (MONAI). Output: a probability map, binarised at
``threshold`` (0.5) to give M_sigma.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field

from petsynth.config import Config
from petsynth.data.batch import ct_of
from petsynth.data.intensity import IntensityTransform
from petsynth.methods.base import Method, register
from petsynth.nn.segmenter import SegmenterConfig, binarize, build_segmenter, probability
from petsynth.tasks import CT_TASKS, DEFAULT_TASK, get_task


class AttentionConfig(Config):
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)
    suv_threshold: float = Field(2.5, gt=0, description="PET above this SUV is 'attention' in the masks")
    threshold: float = Field(0.5, gt=0, lt=1, description="probability above which M_sigma is 1")
    ct_transform: IntensityTransform | None = Field(None, description="default: the task's CT window")


@register
class AttentionSegmenter(Method):
    name = "attention"
    summary = "CT segmenter of PET uptake (residual U-Net, Dice) giving CPDM's Attention map"
    tasks = CT_TASKS
    config_class = AttentionConfig
    display_kind = "map"
    default_lr = 1e-3

    def __init__(self, config: AttentionConfig, task: str = DEFAULT_TASK, **_: Any):
        super().__init__(config, task)
        if config.ct_transform is None:
            config.ct_transform = get_task(task).default_transforms()[get_task(task).ct_role]
        self.segmenter = build_segmenter(config.segmenter)
        from monai.losses import DiceLoss

        self.dice = DiceLoss(sigmoid=True)

    def intensity_transforms(self) -> dict[str, IntensityTransform]:
        return {"ct": self.config.ct_transform}

    def validation_range(self) -> float:
        return 1.0

    def ema_module_names(self) -> list[str]:
        return []

    def target_mask(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Training mask (B, 1, H, W) in {0, 1}: PET SUV above the threshold."""
        return (batch["target"] > self.config.suv_threshold).float()

    def probability(self, ct_hu: torch.Tensor) -> torch.Tensor:
        """P(bright in PET) per pixel from a CT in HU, (B, 1, H, W)."""
        return probability(self.segmenter(self.config.ct_transform.forward(ct_hu)))

    def attention_map(self, ct_hu: torch.Tensor) -> torch.Tensor:
        """M_sigma: the binarised probability, (B, 1, H, W) in {0, 1}."""
        return binarize(self.probability(ct_hu), self.config.threshold)

    def losses(self, batch: Mapping[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        logits = self.segmenter(self.config.ct_transform.forward(ct_of(batch, self.task)))
        return {"loss": self.dice(logits.float(), self.target_mask(batch))}

    @torch.no_grad()
    def validation_pair(self, batch: Mapping[str, Any], **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.probability(ct_of(batch, self.task)), self.target_mask(batch)

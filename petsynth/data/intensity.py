"""Explicit, invertible intensity transforms between physical units and network units.

Every method owns one transform per image role (source, target, ...), saves it in its checkpoint card,
and inverts it so that ``translate`` always returns physical units (HU, SUV). The store never keeps
rescaled values.

``window``: physical values in [low, high] map linearly to [-1, 1] (clipped to the window when
``clip``); inverse maps back. Example: CT in HU with window (-1024, 3071) maps the 12-bit CT range. The
default window of each image role of each task is in :mod:`petsynth.tasks`.

``paper`` presets reproduce the CPDM public code: stored DICOM value / (2^bits - 1) mapped to [-1, 1].
For CT the stored value is HU + 1024 (RescaleIntercept -1024) and bits = 11, so HU -1024..1023 map to
[-1, 1]; for PET the CPDM data were int16 (bits = 15).
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
import torch
from pydantic import model_validator

from petsynth.config import Config

A = TypeVar("A", np.ndarray, torch.Tensor)

#: CPDM's CT normaliser: 2^11 - 1 (stored values of 11-bit CT), as in its public data loader.
CPDM_CT_MAX_STORED: int = 2**11 - 1
#: CPDM's PET normaliser: 2^15 - 1 (int16 stored PET), as in its public data loader.
CPDM_PET_MAX_STORED: int = 2**15 - 1
#: Intercept that maps HU to stored CT values (value = HU + 1024), the common scanner convention.
CT_STORED_OFFSET_HU: float = 1024.0


class IntensityTransform(Config):
    """Affine map from physical units to network units: y = 2 (x - low) / (high - low) - 1."""

    kind: Literal["window", "paper"] = "window"
    low: float
    high: float
    clip: bool = True
    unit: str = ""

    @model_validator(mode="after")
    def _check_range(self):
        if not self.high > self.low:
            raise ValueError(f"high ({self.high}) must exceed low ({self.low})")
        return self

    @classmethod
    def paper_ct(cls) -> "IntensityTransform":
        """CPDM convention for CT: (HU + 1024) / 2047 -> [-1, 1]."""
        return cls(kind="paper", low=-CT_STORED_OFFSET_HU, high=CPDM_CT_MAX_STORED - CT_STORED_OFFSET_HU,
                   clip=True, unit="HU")

    def forward(self, x: A) -> A:
        """Physical -> network units."""
        if self.clip:
            x = x.clip(self.low, self.high)
        return 2.0 * (x - self.low) / (self.high - self.low) - 1.0

    def inverse(self, y: A) -> A:
        """Network -> physical units."""
        if self.clip:
            y = y.clip(-1.0, 1.0)
        return (y + 1.0) * 0.5 * (self.high - self.low) + self.low


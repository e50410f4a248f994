"""Explicit, invertible intensity transforms between physical units and network units.

Every method owns one transform per image role (source, target, ...), saves it in its checkpoint card,
and inverts it so that ``translate`` always returns physical units (HU, SUV). The store never keeps
rescaled values.

``window``: physical values in [low, high] map linearly to [-1, 1] (clipped to the window when
``clip``); inverse maps back. Example: CT in HU with window (-1024, 3071) maps the 12-bit CT range. The
default window of each image role of each task is in :mod:`petsynth.tasks`.

``log``: physical values in [low, high] map to [-1, 1] through log(1 + (x - low) / scale), ``scale`` in the
same unit: resolution goes where most tissue is (PET with scale 1 SUV and high 20: SUV 0..3 spans 0.91 of the
2 network units, against 0.30 in the linear window), and the inverse is exp - 1, so SUV stays the unit of
every output.

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
    """Map from physical units to network units: ``window``/``paper``: y = 2 (x - low) / (high - low) - 1;
    ``log``: y = 2 log(1 + (x - low) / scale) / log(1 + (high - low) / scale) - 1."""

    kind: Literal["window", "paper", "log"] = "window"
    low: float
    high: float
    clip: bool = True
    unit: str = ""
    scale: float | None = None

    @model_validator(mode="after")
    def _check_range(self):
        if not self.high > self.low:
            raise ValueError(f"high ({self.high}) must exceed low ({self.low})")
        if (self.kind == "log") != (self.scale is not None):
            raise ValueError("scale is the log transform's (kind: log) and it needs one")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale}")
        if self.kind == "log" and not self.clip:
            raise ValueError("the log transform needs clip: true (log(1 + x) is undefined below low - scale)")
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
        if self.kind == "log":
            return 2.0 * _log1p((x - self.low) / self.scale) / np.log1p((self.high - self.low) / self.scale) - 1.0
        return 2.0 * (x - self.low) / (self.high - self.low) - 1.0

    def inverse(self, y: A) -> A:
        """Network -> physical units."""
        if self.clip:
            y = y.clip(-1.0, 1.0)
        if self.kind == "log":
            x = self.low + self.scale * _expm1((y + 1.0) * 0.5 * np.log1p((self.high - self.low) / self.scale))
            return x.clip(self.low, self.high)  # exp(log(...)) may overshoot the window by a rounding error
        return (y + 1.0) * 0.5 * (self.high - self.low) + self.low


def _log1p(x: A) -> A:
    return x.log1p() if isinstance(x, torch.Tensor) else np.log1p(x)


def _expm1(x: A) -> A:
    return x.expm1() if isinstance(x, torch.Tensor) else np.expm1(x)


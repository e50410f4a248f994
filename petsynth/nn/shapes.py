"""Shape checks shared by the networks."""

from __future__ import annotations

import torch


def check_divisible(x: torch.Tensor, factor: int, why: str, what: str = "image") -> None:
    """Raise ValueError unless the last two sizes of ``x`` (..., H, W) are multiples of ``factor``.

    ``why`` names the factor in the message (e.g. "f=4", "2^num_downs = 32"); ``what`` names the input."""
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"{what} size {h}x{w} is not divisible by {why}")

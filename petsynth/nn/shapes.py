"""Shape checks shared by the networks."""

from __future__ import annotations

import torch


def check_divisible(x: torch.Tensor, factor: int, why: str, what: str = "image", dims: int = 2) -> None:
    """Raise ValueError unless the last ``dims`` sizes of ``x`` ((..., H, W), or (..., D, H, W) with dims 3)
    are multiples of ``factor``.

    ``why`` names the factor in the message (e.g. "f=4", "2^num_downs = 32"); ``what`` names the input."""
    sizes = x.shape[-dims:]
    if any(n % factor for n in sizes):
        raise ValueError(f"{what} size {'x'.join(map(str, sizes))} is not divisible by {why}")

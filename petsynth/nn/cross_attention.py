"""uPETe's CT-guided cross-attention (Jiang et al., MICCAI 2023), windowed, for 2D and 3D feature maps.

In each window of ``window`` positions per axis, the attention weights come from the CT and the values from
the PET::

    out = softmax(Q K^T / sqrt(d) + B) V,   Q = W_q ct,  K = W_k ct,  V = W_v pet,

so the PET features are mixed along the anatomy the CT shows (organ boundaries), whatever the PET's noise.
``B`` is a learned relative position bias: one value per head and relative offset within a window (Swin's
table, (2w - 1)^dims offsets), so the block knows where a key lies relative to its query. The block is
residual: it returns ``pet + W_o out``. Windows do not overlap; a map whose size is not a multiple of the
window is padded (the padding is masked out of the softmax) and cropped back.

No maintained library has this block: MONAI's cross-attention takes Q from one input and K, V from the other,
and has no windowed relative position bias.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CTGuidedCrossAttention"]


class CTGuidedCrossAttention(nn.Module):
    """Windowed cross-attention with Q, K from CT features and V from PET features (module docstring).

    Args:
        pet_channels: channels of the PET features (in and out).
        ct_channels: channels of the CT features (same spatial size as the PET's).
        num_heads: attention heads; ``head_dim`` channels each (default pet_channels // num_heads).
        window: window side, in positions.
        spatial_dims: 2 ((B, C, H, W)) or 3 ((B, C, D, H, W)).
    """

    def __init__(self, pet_channels: int, ct_channels: int, num_heads: int = 4, head_dim: int | None = None,
                 window: int = 8, spatial_dims: int = 2):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if window < 1 or num_heads < 1:
            raise ValueError("window and num_heads must be positive")
        self.heads, self.window, self.dims = num_heads, window, spatial_dims
        self.head_dim = head_dim or max(1, pet_channels // num_heads)
        inner = self.heads * self.head_dim
        self.pet_norm = nn.GroupNorm(math.gcd(pet_channels, 8) or 1, pet_channels)
        self.ct_norm = nn.GroupNorm(math.gcd(ct_channels, 8) or 1, ct_channels)
        self.to_qk = nn.Linear(ct_channels, 2 * inner)
        self.to_v = nn.Linear(pet_channels, inner)
        self.out = nn.Linear(inner, pet_channels)
        span = 2 * window - 1
        self.relative_bias = nn.Parameter(torch.zeros(num_heads, span ** spatial_dims))
        nn.init.trunc_normal_(self.relative_bias, std=0.02)
        self.register_buffer("bias_index", _relative_index(window, spatial_dims), persistent=False)

    def attention_bias(self) -> Tensor:
        """B: (heads, w^dims, w^dims), the bias added to the logits of each (query, key) pair of a window."""
        n = self.window ** self.dims
        return self.relative_bias[:, self.bias_index.reshape(-1)].reshape(self.heads, n, n)

    def forward(self, pet: Tensor, ct: Tensor) -> Tensor:
        """``pet`` (B, Cp, *S) and ``ct`` (B, Cc, *S) -> (B, Cp, *S)."""
        if pet.ndim != self.dims + 2 or ct.shape[2:] != pet.shape[2:] or ct.shape[0] != pet.shape[0]:
            raise ValueError(f"pet and ct must be (B, C, {'D, ' if self.dims == 3 else ''}H, W) maps of one size, "
                             f"got {tuple(pet.shape)} and {tuple(ct.shape)}")
        size = pet.shape[2:]
        pad = [(-s) % self.window for s in size]
        valid = torch.ones((pet.shape[0], 1, *size), device=pet.device, dtype=pet.dtype)
        pet_w, ct_w, valid_w = (self._windows(_pad(x, pad)) for x in (self.pet_norm(pet), self.ct_norm(ct), valid))
        q, k = self.to_qk(ct_w).chunk(2, dim=-1)
        v = self.to_v(pet_w)
        q, k, v = (x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2) for x in (q, k, v))  # (Bw, h, n, d)
        mask = self.attention_bias()[None].expand(q.shape[0], -1, -1, -1)
        mask = mask.masked_fill(valid_w[:, None, None, :, 0] == 0, float("-inf"))  # padded keys never attended
        mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # softmax(q k^T / sqrt(d) + B) v
        mixed = self.out(mixed.transpose(1, 2).flatten(2))
        out = self._merge(mixed, pet.shape[0], [s + p for s, p in zip(size, pad)])
        return pet + out[(..., *(slice(0, s) for s in size))]

    def _windows(self, x: Tensor) -> Tensor:
        """(B, C, *S) with S multiples of the window -> (B x windows, w^dims, C)."""
        b, c, *size = x.shape
        w = self.window
        shape = [b, c]
        for s in size:
            shape += [s // w, w]
        x = x.reshape(shape)
        grid_axes = [2 + 2 * i for i in range(self.dims)]
        inner_axes = [3 + 2 * i for i in range(self.dims)]
        return x.permute(0, *grid_axes, *inner_axes, 1).reshape(-1, w ** self.dims, c)

    def _merge(self, x: Tensor, batch: int, size: list[int]) -> Tensor:
        """The inverse of :meth:`_windows`: (B x windows, w^dims, C) -> (B, C, *S)."""
        w, c = self.window, x.shape[-1]
        counts = [s // w for s in size]
        x = x.reshape(batch, *counts, *([w] * self.dims), c)
        order = [0, 1 + 2 * self.dims]
        for i in range(self.dims):
            order += [1 + i, 1 + self.dims + i]
        return x.permute(order).reshape(batch, c, *size)


def _pad(x: Tensor, pad: list[int]) -> Tensor:
    """Zero-pad the spatial axes of ``x`` at their ends by ``pad`` (one amount per axis, first axis first)."""
    flat = []
    for p in reversed(pad):
        flat += [0, p]
    return F.pad(x, flat) if any(pad) else x


def _relative_index(window: int, dims: int) -> Tensor:
    """(w^dims, w^dims) index into the bias table of each (query, key) pair's relative offset."""
    positions = torch.tensor(list(itertools.product(range(window), repeat=dims)))  # (n, dims)
    offsets = positions[:, None, :] - positions[None, :, :] + window - 1  # each in 0 .. 2w-2
    span = 2 * window - 1
    index = torch.zeros(offsets.shape[:2], dtype=torch.long)
    for axis in range(dims):
        index = index * span + offsets[..., axis]
    return index

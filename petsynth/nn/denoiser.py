"""Diffusion denoiser: MONAI's ``DiffusionModelUNet`` (2D, or 3D with ``spatial_dims: 3``) with a sinusoidal timestep embedding.

``net(x, t)``: x (B, in_channels, h, w) — for CPDM the latent x_t concatenated with the encoded maps —,
t (B,) timesteps (int or float, e.g. 0..T-1); returns (B, out_channels, h, w) (what it predicts is the
method's choice: BBDM's "grad" objective, noise, score...). h, w must be divisible by
2 ** (len(channels) - 1). The middle block always has self-attention.

Two ways to condition: channels concatenated to x (``in_channels`` counts them), and/or cross-attention
(``with_conditioning``): ``net(x, t, context=c)`` with c (B, L, cross_attention_dim), L tokens (e.g. a CT's
features, uPETe's guidance), attended to at every ``attention_levels`` level and in the middle block
(queries from x, keys and values from c: MONAI's spatial transformer blocks).

Differences from the openai/BBDM U-Net of the public CPDM code: the time embedding is added to the
residual block features (no scale-shift norm); no dropout.
"""

from __future__ import annotations

from typing import Literal

from monai.networks.nets import DiffusionModelUNet
from pydantic import Field, model_validator
from torch import nn

from petsynth.config import Config

__all__ = ["DenoiserConfig", "DENOISER_PRESETS", "build_denoiser", "count_parameters"]


class DenoiserConfig(Config):
    """U-Net settings. One entry of ``channels`` / ``attention_levels`` per resolution level."""

    spatial_dims: Literal[2, 3] = Field(2, description="2: (B, C, h, w) maps; 3: (B, C, d, h, w) volumes")
    in_channels: int = Field(9, ge=1, description="latent + conditioning channels (CPDM: 3 + 3 + 3)")
    out_channels: int = Field(3, ge=1)
    channels: tuple[int, ...] = (32, 64, 96, 128)
    num_res_blocks: int = Field(1, ge=1, description="residual blocks per level")
    attention_levels: tuple[bool, ...] = (False, False, False, True)
    num_head_channels: int = Field(32, ge=1)
    norm_num_groups: int = Field(16, ge=1)
    resblock_updown: bool = Field(False, description="residual blocks for down/upsampling (BBDM: True)")
    use_flash_attention: bool = Field(True, description="torch scaled_dot_product_attention (CPU too)")
    with_conditioning: bool = Field(False, description="cross-attention to a context (B, L, cross_attention_dim)")
    cross_attention_dim: int | None = Field(None, ge=1, description="feature size of the context tokens")
    transformer_num_layers: int = Field(1, ge=1, description="transformer blocks per attention level")

    @model_validator(mode="after")
    def _check(self) -> DenoiserConfig:
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels needs one entry per level of channels")
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"channels {bad} are not divisible by norm_num_groups={self.norm_num_groups}")
        bad = [c for c, a in zip(self.channels, self.attention_levels) if a and c % self.num_head_channels]
        if bad or self.channels[-1] % self.num_head_channels:
            raise ValueError(f"attention channels must be divisible by num_head_channels={self.num_head_channels}")
        if self.with_conditioning != (self.cross_attention_dim is not None):
            raise ValueError("with_conditioning and cross_attention_dim go together: set both or neither")
        return self

    @classmethod
    def preset(cls, name: PresetName, **overrides: object) -> DenoiserConfig:
        """A named configuration (see :data:`DENOISER_PRESETS`), with fields overridden."""
        try:
            base = DENOISER_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown denoiser preset {name!r}; known: {sorted(DENOISER_PRESETS)}") from None
        return cls.from_dict({**base.to_dict(), **overrides}, source=f"preset {name!r}")


PresetName = Literal["cpdm-public", "small", "tiny", "jdam-cpu", "ncsnpp-public"]

#: ``cpdm-public``: the public CPDM U-Net (128 ch, mult (1, 2, 3, 4), 2 res blocks, attention at 8x8 of a
#: 64x64 latent, 64-channel heads, resblock up/down), 9 -> 3 channels.
#: ``small``: the CPU default (same layout, narrower): (32, 64, 96, 128), 1 res block, attention at the
#: lowest level (8x8 of 64x64), 32-channel heads. 3.7 M parameters, ~40 ms per forward on a 9x64x64
#: input at batch 1 on 2 CPU threads (cpdm-public: 92.6 M, ~0.6 s).
#: ``tiny``: (16, 32, 64, 128) with 8 norm groups, 2.7 M parameters, about half the time of ``small``.
#: ``jdam-cpu``: ``tiny`` with 2 -> 1 channels (noisy PET + MR -> score) for 128x128 slices: attention at 16x16,
#: 2.69 M parameters, 32 ms per slice per forward at batch 8 on 2 CPU threads (``small``: 99 ms).
#: ``ncsnpp-public``: the scale of JDAM's public NCSN++ (128 base channels, multipliers (1, 1, 2, 2, 2, 2, 2),
#: 2 residual blocks per level, attention at 16x16 of a 128x128 input, resblock up/down), 2 -> 1 channels,
#: 65.3 M parameters (MONAI's U-Net, not NCSN++'s FIR resampling and skip rescaling).
DENOISER_PRESETS: dict[str, DenoiserConfig] = {
    "cpdm-public": DenoiserConfig(
        in_channels=9,
        out_channels=3,
        channels=(128, 256, 384, 512),
        num_res_blocks=2,
        attention_levels=(False, False, False, True),
        num_head_channels=64,
        norm_num_groups=32,
        resblock_updown=True,
    ),
    "small": DenoiserConfig(),
    "tiny": DenoiserConfig(channels=(16, 32, 64, 128), norm_num_groups=8),
    "jdam-cpu": DenoiserConfig(in_channels=2, out_channels=1, channels=(16, 32, 64, 128), norm_num_groups=8),
    "ncsnpp-public": DenoiserConfig(
        in_channels=2,
        out_channels=1,
        channels=(128, 128, 256, 256, 256, 256, 256),
        num_res_blocks=2,
        attention_levels=(False, False, False, True, False, False, False),
        num_head_channels=64,
        norm_num_groups=32,
        resblock_updown=True,
    ),
}


def build_denoiser(cfg: DenoiserConfig | str | None = None) -> DiffusionModelUNet:
    """A ``DiffusionModelUNet`` from a config or a preset name (default: ``small``)."""
    if cfg is None:
        cfg = DenoiserConfig()
    elif isinstance(cfg, str):
        cfg = DenoiserConfig.preset(cfg)  # type: ignore[arg-type]
    return DiffusionModelUNet(
        spatial_dims=cfg.spatial_dims,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        channels=cfg.channels,
        num_res_blocks=cfg.num_res_blocks,
        attention_levels=cfg.attention_levels,
        num_head_channels=cfg.num_head_channels,
        norm_num_groups=cfg.norm_num_groups,
        resblock_updown=cfg.resblock_updown,
        use_flash_attention=cfg.use_flash_attention,
        with_conditioning=cfg.with_conditioning,
        cross_attention_dim=cfg.cross_attention_dim,
        transformer_num_layers=cfg.transformer_num_layers,
    )


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (works on the meta device)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

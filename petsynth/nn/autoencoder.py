"""VQ autoencoder (VQGAN-style) for 1-channel slices.

Layout of taming-transformers' ``VQModel`` (what CPDM and BBDM use), built from MONAI parts:

    x -> encoder -> h -> quant_conv (1x1) -> z -> EMA vector quantizer -> zq -> post_quant_conv (1x1) -> decoder -> x

The encoder and decoder are MONAI's ``autoencoderkl.Encoder`` / ``Decoder`` (GroupNorm + SiLU residual
blocks, optionally a residual-attention-residual block at the latent resolution, nearest-upsampling + conv),
which are the latent-diffusion / VQGAN ones. The quantizer is MONAI's ``EMAQuantizer``: the codebook is learned by an
exponential moving average, updated during ``forward`` **only in train mode**; the only loss it produces is
the commitment loss ``commitment_cost * mse(z, sg[zq])``.
(MONAI's ``VQVAE`` was not used: ReLU blocks without normalisation or attention, transposed-conv upsampling.)

Latent used by a latent diffusion model (:meth:`VQAutoencoder.to_latent` / :meth:`from_latent`): like the
public BBDM / CPDM code, by default the *continuous pre-quantisation* latent z (after ``quant_conv``); after
sampling, :meth:`from_latent` snaps it to the codebook and decodes. Flags: ``latent_before_quant_conv``
(take h, before the 1x1 ``quant_conv``, as the public option of that name), ``quantize_latent`` (take the
quantised zq instead), ``quantize_on_decode`` (snap before decoding; True in the public code).

``quantize: false`` makes it a plain autoencoder: no codebook in the path (training reconstructs from z, the
decoder decodes z, no commitment loss). On CPU-length trainings of phantom PET the EMA codebook collapsed (8 of
512 codes used after 400 steps) and the decoder, having only ever seen those codes, could not give back the
brain, heart or bladder (SUVmean -40 to -60 %; README "The ct2pet recipe").
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from monai.networks.layers.vector_quantizer import EMAQuantizer
from monai.networks.nets.autoencoderkl import Decoder, Encoder
from pydantic import Field, model_validator
from torch import nn

from petsynth.config import Config
from petsynth.nn.shapes import check_divisible

__all__ = ["AUTOENCODER_PRESETS", "VQAutoencoderConfig", "VQAutoencoder", "build_autoencoder"]


class VQAutoencoderConfig(Config):
    """VQ autoencoder settings.

    The encoder has ``log2(downsample_factor) + 1`` levels of width ``base_channels * m`` for ``m`` in
    ``channel_multipliers`` (default ``(1, 2, 4, 4)`` cut to that length, so (1, 2, 4) at f = 4 as CPDM's
    ch_mult) and downsamples by 2 between levels. CPDM's public VQGAN: f 4, base 128, (1, 2, 4),
    2 res blocks, mid attention, 3 latent channels, 8192 codes (49 M parameters here, ~4.5 s encode and
    ~12 s decode per 256x256 slice on 2 CPU threads). The defaults (1.0 M parameters) encode in ~60 ms and
    decode in ~180 ms; ``mid_attention`` (global attention over the 64x64 latent) adds ~0.1 s to each.
    """

    spatial_dims: Literal[2, 3] = Field(2, description="2: slices (B, 1, H, W); 3: volumes (B, 1, D, H, W)")
    in_channels: int = Field(1, ge=1)
    out_channels: int = Field(1, ge=1)
    downsample_factor: int = Field(4, description="f: the latent is (H / f, W / f); 1, 2, 4 or 8")
    base_channels: int = Field(32, ge=1)
    channel_multipliers: tuple[int, ...] | None = None
    num_res_blocks: int = Field(1, ge=1, description="residual blocks per level (encoder and decoder)")
    attention_levels: tuple[bool, ...] | None = Field(None, description="self-attention per level; default none")
    mid_attention: bool = Field(False, description="residual-attention-residual block at the latent resolution")
    norm_num_groups: int = Field(16, ge=1)
    latent_channels: int = Field(3, ge=1, description="z channels = codebook vector size")
    codebook_size: int = Field(512, ge=2)
    commitment_cost: float = Field(0.25, ge=0)
    ema_decay: float = Field(0.99, gt=0, lt=1)
    ema_epsilon: float = Field(1e-5, gt=0)
    latent_before_quant_conv: bool = False
    quantize_latent: bool = False
    quantize_on_decode: bool = True
    quantize: bool = Field(True, description="false: a plain autoencoder, no vector quantisation anywhere")

    @model_validator(mode="after")
    def _check(self) -> VQAutoencoderConfig:
        f = self.downsample_factor
        if f not in (1, 2, 4, 8):
            raise ValueError(f"downsample_factor must be 1, 2, 4 or 8, got {f}")
        levels = int(math.log2(f)) + 1
        if self.channel_multipliers is not None and len(self.channel_multipliers) != levels:
            raise ValueError(f"channel_multipliers needs {levels} entries for downsample_factor {f}")
        if self.attention_levels is not None and len(self.attention_levels) != levels:
            raise ValueError(f"attention_levels needs {levels} entries for downsample_factor {f}")
        if self.latent_before_quant_conv and self.quantize_latent:
            raise ValueError("latent_before_quant_conv and quantize_latent exclude each other")
        if not self.quantize and self.quantize_latent:
            raise ValueError("quantize_latent needs quantize: true")
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"channels {bad} are not divisible by norm_num_groups={self.norm_num_groups}")
        return self

    @classmethod
    def preset(cls, name: str, **overrides: object) -> VQAutoencoderConfig:
        """A named configuration (see :data:`AUTOENCODER_PRESETS`), with fields overridden."""
        try:
            base = AUTOENCODER_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown autoencoder preset {name!r}; known: {sorted(AUTOENCODER_PRESETS)}") from None
        return cls.from_dict({**base.to_dict(), **overrides}, source=f"preset {name!r}")

    @property
    def num_levels(self) -> int:
        return int(math.log2(self.downsample_factor)) + 1

    @property
    def channels(self) -> tuple[int, ...]:
        """Width of each encoder level, e.g. (32, 64, 128) at the defaults."""
        mult = self.channel_multipliers or (1, 2, 4, 4)[: self.num_levels]
        return tuple(self.base_channels * m for m in mult)


#: ``cpdm-public``: the public CPDM VQGAN-f4 sizes; ``small``: the CPU default.
AUTOENCODER_PRESETS: dict[str, VQAutoencoderConfig] = {
    "cpdm-public": VQAutoencoderConfig(
        base_channels=128, num_res_blocks=2, mid_attention=True, norm_num_groups=32, codebook_size=8192
    ),
    "small": VQAutoencoderConfig(),
}


class VQAutoencoder(nn.Module):
    """VQGAN-style autoencoder: (B, 1, H, W) images in about [-1, 1] <-> (B, Cz, H/f, W/f) latents; with
    ``spatial_dims: 3``, (B, 1, D, H, W) volumes <-> (B, Cz, D/f, H/f, W/f) (every axis divided by f).

    ``encode`` -> z (continuous, pre-quantisation); ``quantize`` -> (zq, commitment loss, indices (B, H/f, W/f));
    ``decode`` zq -> image (unbounded, no output activation); ``forward`` -> (reconstruction, commitment loss).
    H and W must be divisible by f.
    """

    def __init__(self, cfg: VQAutoencoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or VQAutoencoderConfig()
        channels = cfg.channels
        levels = cfg.num_levels
        attention = cfg.attention_levels or (False,) * levels
        conv = nn.Conv2d if cfg.spatial_dims == 2 else nn.Conv3d
        common = dict(
            spatial_dims=cfg.spatial_dims,
            channels=channels,
            num_res_blocks=(cfg.num_res_blocks,) * levels,
            norm_num_groups=cfg.norm_num_groups,
            norm_eps=1e-6,
            attention_levels=attention,
            with_nonlocal_attn=cfg.mid_attention,
            use_flash_attention=True,  # torch scaled_dot_product_attention, also on CPU
        )
        cz = cfg.latent_channels
        self.encoder = Encoder(in_channels=cfg.in_channels, out_channels=cz, **common)
        self.quant_conv = conv(cz, cz, 1)
        self.quantizer = EMAQuantizer(
            spatial_dims=cfg.spatial_dims,
            num_embeddings=cfg.codebook_size,
            embedding_dim=cz,
            commitment_cost=cfg.commitment_cost,
            decay=cfg.ema_decay,
            epsilon=cfg.ema_epsilon,
        )
        self.post_quant_conv = conv(cz, cz, 1)
        self.decoder = Decoder(in_channels=cz, out_channels=cfg.out_channels, **common)

    @property
    def f(self) -> int:
        """Downsampling factor."""
        return self.cfg.downsample_factor

    @property
    def codebook(self) -> torch.Tensor:
        """(codebook_size, latent_channels) code vectors (EMA-updated in train mode, never by gradients)."""
        return self.quantizer.embedding.weight

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, H, W) -> continuous pre-quantisation latent z (B, Cz, H/f, W/f)."""
        check_divisible(x, self.f, f"f={self.f}", dims=self.cfg.spatial_dims)
        return self.quant_conv(self.encoder(x))

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest codebook vector per pixel: (zq, commitment loss (scalar), indices (B, h, w) int64).

        zq carries straight-through gradients to z. Runs in float32 even under autocast. In train mode this
        call updates the codebook by EMA; in eval mode it does not.
        """
        with torch.autocast(device_type=z.device.type, enabled=False):
            zq, loss, indices = self.quantizer(z.float())
        return zq, loss, indices

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) -> code vectors (B, Cz, h, w)."""
        return self.quantizer.embed(indices)

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        """(B, Cz, H/f, W/f) (quantised) latent -> (B, Cout, H, W) image."""
        return self.decoder(self.post_quant_conv(zq))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction (B, Cout, H, W) and commitment loss (scalar; 0 without quantisation)."""
        z = self.encode(x)
        if not self.cfg.quantize:
            return self.decode(z), z.new_zeros(())
        zq, loss, _ = self.quantize(z)
        return self.decode(zq), loss

    # -- the latent a diffusion model works on -------------------------------------------------------------
    def to_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> diffusion latent (B, Cz, H/f, W/f), per the config flags (default: z, continuous, after
        quant_conv). Put a frozen autoencoder in eval mode: in train mode quantising updates the codebook."""
        check_divisible(x, self.f, f"f={self.f}", dims=self.cfg.spatial_dims)
        z = self.encoder(x)
        if self.cfg.latent_before_quant_conv:
            return z
        z = self.quant_conv(z)
        return self.quantize(z)[0] if self.cfg.quantize_latent else z

    def from_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion latent -> image: the inverse of :meth:`to_latent` (snaps to the codebook first if
        ``quantize_on_decode``, as the public BBDM/CPDM decode)."""
        if self.cfg.latent_before_quant_conv:
            z = self.quant_conv(z)
        if self.cfg.quantize and self.cfg.quantize_on_decode:
            z = self.quantize(z)[0]
        return self.decode(z)


def build_autoencoder(cfg: VQAutoencoderConfig | str | None = None) -> VQAutoencoder:
    """A :class:`VQAutoencoder` from a config or a preset name (default: ``small``)."""
    if isinstance(cfg, str):
        cfg = VQAutoencoderConfig.preset(cfg)
    return VQAutoencoder(cfg)

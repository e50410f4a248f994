"""Pieces shared by the methods: pretrained frozen parts and CPDM's two guidance maps.

- :func:`load_part`: (config, weights, intensity) of a trained ``vqgan`` / ``attention`` model folder.
- :func:`frozen_autoencoder`: the frozen VQ autoencoder of a latent method (cpdm, bbdm, ldm), from its
  ``autoencoder_checkpoint`` (which also gives the method its intensity transforms) or from the config
  saved in the method's own checkpoint.
- :class:`GuidanceMapsConfig` + :class:`GuidanceMaps`: the Attention map M_sigma (a frozen segmenter on the
  CT, binarised) and the Attenuation map M_mu = exp(-mu L) (computed in the data pipeline), stacked as
  (B, num_maps, H, W). CPDM and every baseline "w/ (M_sigma, M_mu)" (CPDM paper, Table 5) use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field

from petsynth.config import Config
from petsynth.data.batch import CONTEXT_KEY, ct_of
from petsynth.data.intensity import IntensityTransform
from petsynth.methods.base import MethodError, frozen
from petsynth.nn.autoencoder import VQAutoencoder, VQAutoencoderConfig
from petsynth.nn.segmenter import SegmenterConfig, binarize, build_segmenter, probability
from petsynth.tasks import get_task
from petsynth.train.checkpoint import CheckpointError, load_checkpoint


def load_part(path: str, method: str, what: str) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict]:
    """(config, weights (EMA where kept), intensity) of a ``method`` model folder; ``what`` names the option."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as err:
        raise MethodError(f"{what}: {err}") from None
    if ckpt.card.method != method:
        raise MethodError(f"{what}: {path} holds a {ckpt.card.method!r} model, not a {method!r} one")
    return ckpt.card.config, ckpt.model_state(), ckpt.card.intensity


def strip_prefix(prefix: str, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``weights`` under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def frozen_autoencoder(method: str, config: Any, load_parts: bool) -> VQAutoencoder:
    """The frozen autoencoder of a latent method whose config has ``autoencoder_checkpoint``,
    ``autoencoder`` and ``transforms``. Loading the checkpoint fills in ``config.autoencoder`` and
    ``config.transforms`` (the autoencoder's intensity transforms), so the method's card rebuilds it;
    without ``load_parts`` (weights from the method's own checkpoint) the saved config is used."""
    weights = None
    if config.autoencoder is None or (load_parts and config.autoencoder_checkpoint):
        if not config.autoencoder_checkpoint:
            raise MethodError(f"{method} in latent space needs autoencoder_checkpoint (a vqgan model "
                              "folder: train one with `petsynth train vqgan`), or pixel_space: true")
        cfg, all_weights, intensity = load_part(config.autoencoder_checkpoint, "vqgan", "autoencoder_checkpoint")
        config.autoencoder = VQAutoencoderConfig.from_dict(cfg["autoencoder"])
        config.transforms = {k: IntensityTransform.from_dict(v) for k, v in intensity.items()}
        weights = strip_prefix("autoencoder.", all_weights)
    autoencoder = VQAutoencoder(config.autoencoder)
    if weights is not None:
        autoencoder.load_state_dict(weights)
    return frozen(autoencoder)


#: The ``ct_windows`` config field of every method with guidance maps.
CT_WINDOWS_FIELD = Field(
    default_factory=list, description="extra maps (not in the CPDM paper): the CT clipped to each (low, high) HU "
                                      "window and mapped to [0, 1], e.g. [[-160, 240]] for soft tissue, whose organs "
                                      "differ by 10-30 HU (0.005-0.015 of the source window's 2 network units)")


#: The ``context_slices`` config field of every method with guidance maps.
CONTEXT_SLICES_FIELD = Field(
    0, ge=0, le=8, description="2.5-D context (not in the CPDM paper): the source's c neighbouring slices on each "
                               "side as 2c more maps (each in the source's network units, then under each of "
                               "ct_windows); translate takes them at the training data's slice spacing, "
                               "interpolated between a study's slices")


class GuidanceMapsConfig(Config):
    """Config fields of the two maps (baselines: both off by default)."""

    use_attention_map: bool = Field(False, description="M_sigma: the attention segmenter's mask of the CT")
    use_attenuation_map: bool = Field(False, description="M_mu = exp(-mu L) from the CT in HU and its kVp")
    segmenter_checkpoint: str | None = Field(None, description="an attention run's model folder")
    segmenter: SegmenterConfig | None = Field(None, description="filled in from the checkpoint")
    segmenter_ct_transform: IntensityTransform | None = Field(None, description="filled in from the checkpoint")
    attention_threshold: float = Field(0.5, gt=0, lt=1)
    ct_windows: list[tuple[float, float]] = CT_WINDOWS_FIELD
    context_slices: int = CONTEXT_SLICES_FIELD


def _windowed(hu: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """A CT (HU) clipped to the window low..high and mapped to [0, 1] (a ``ct_windows`` map)."""
    return ((hu - low) / (high - low)).clamp(0.0, 1.0)


class GuidanceMaps:
    """Mixin for a :class:`~petsynth.methods.base.Method` whose config has the :class:`GuidanceMapsConfig`
    fields and a ``transforms`` dict: call :meth:`_build_maps` in ``__init__``, then :meth:`maps`."""

    def _build_maps(self, config: Any, load_parts: bool) -> None:
        """Load the frozen segmenter (when the attention map is on) and set ``needs_mu_map``."""
        if (config.use_attention_map or config.use_attenuation_map or config.ct_windows) \
                and not get_task(self.task).has_ct:
            raise MethodError(f"{self.name}: the attention and attenuation maps and ct_windows are computed from a "
                              f"CT; task {self.task} has none (use_attention_map / use_attenuation_map: false, "
                              "ct_windows: [])")
        for low, high in config.ct_windows:
            if not high > low:
                raise MethodError(f"{self.name}: ct_windows needs low < high, got ({low}, {high})")
        self.needs_mu_map = config.use_attenuation_map
        if config.use_attention_map:
            weights = None
            if config.segmenter is None or (load_parts and config.segmenter_checkpoint):
                if not config.segmenter_checkpoint:
                    raise MethodError(f"{self.name} with the attention map needs segmenter_checkpoint (an "
                                      "attention model folder: `petsynth train attention`), or "
                                      "use_attention_map: false")
                cfg, all_weights, intensity = load_part(config.segmenter_checkpoint, "attention",
                                                        "segmenter_checkpoint")
                config.segmenter = SegmenterConfig.from_dict(cfg["segmenter"])
                config.segmenter_ct_transform = IntensityTransform.from_dict(intensity["ct"])
                weights = strip_prefix("segmenter.", all_weights)
            self.segmenter = build_segmenter(config.segmenter)
            if weights is not None:
                self.segmenter.load_state_dict(weights)
            frozen(self.segmenter)

    @property
    def num_maps(self) -> int:
        windows = len(self.config.ct_windows)
        return (int(self.config.use_attention_map) + int(self.config.use_attenuation_map) + windows
                + 2 * self.context_slices * (1 + windows))

    @property
    def context_slices(self) -> int:
        return self.config.context_slices

    @torch.no_grad()
    def maps(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """The guidance maps (B, num_maps, H, W): M_sigma (segmenter on the CT), M_mu (from the batch), the CT
        under each of ``ct_windows`` in [0, 1], then the 2c neighbouring source slices ("source_context") in
        the source's network units and under each window; None when there are none."""
        maps = []
        if self.config.use_attention_map:
            ct = ct_of(batch, self.task)
            seg_ct = self.config.segmenter_ct_transform or self.config.transforms["source"]
            maps.append(binarize(probability(self.segmenter(seg_ct.forward(ct))), self.config.attention_threshold))
        if self.config.use_attenuation_map:
            if "mu_map" not in batch:
                raise ValueError("the batch has no 'mu_map': build batches with petsynth.data.batch.Collate"
                                 "(task, mu_map=True) or add_mu_map()")
            maps.append(batch["mu_map"].to(ct_of(batch, self.task).dtype))
        maps += [_windowed(ct_of(batch, self.task), low, high) for low, high in self.config.ct_windows]
        if self.context_slices:
            context = batch.get(CONTEXT_KEY)
            want = 2 * self.context_slices
            if context is None or context.shape[1] != want:
                found = "none" if context is None else f"{context.shape[1]} slices"
                raise ValueError(f"{self.name} takes {self.context_slices} neighbouring slices on each side "
                                 f"('{CONTEXT_KEY}', {want} channels), the batch has {found}: read items with "
                                 f"open_dataset(..., context_slices={self.context_slices}) or translate whole "
                                 "studies (petsynth.translate)")
            maps.append(self.config.transforms["source"].forward(context))
            maps += [_windowed(context, low, high) for low, high in self.config.ct_windows]
        return torch.cat(maps, dim=1) if maps else None


    def source_with_maps(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """concat(source in network units, maps): (B, 1 + num_maps, H, W), the input of the pixel-space
        baselines (unet, pix2pix's generator and discriminator condition)."""
        x = self.config.transforms["source"].forward(batch["source"])
        maps = self.maps(batch)
        return x if maps is None else torch.cat([x, maps.to(x.dtype)], dim=1)


def gan_loss(logits: torch.Tensor, real: bool, kind: str = "vanilla") -> torch.Tensor:
    """A discriminator's loss against all-real (1) or all-fake (0) labels, in float32: "vanilla" (pix2pix's
    BCE with logits) or "lsgan" (least squares, CycleGAN's)."""
    logits = logits.float()
    want = torch.full_like(logits, 1.0 if real else 0.0)
    if kind == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, want)
    if kind == "lsgan":
        return F.mse_loss(logits, want)
    raise ValueError(f"unknown GAN loss {kind!r}; choose vanilla or lsgan")


class LatentSpace:
    """Mixin for a diffusion method with an optional frozen ``autoencoder`` (config flag ``pixel_space``):
    the space its process runs in, its latent scale (LDM's unit-variance scaling, the buffer ``latent_scale``:
    given, or estimated at the first training step), and the networks its EMA follows."""

    def _build_space(self, config: Any, load_parts: bool) -> int:
        """The frozen autoencoder (latent mode; none in pixel space), the task's default transforms where the
        config has none, and the ``latent_scale`` buffer; returns the channels of the diffusion space."""
        if not config.pixel_space:
            self.autoencoder = frozen_autoencoder(self.name, config, load_parts)
        elif config.autoencoder_checkpoint:
            raise MethodError(f"{self.name}: pixel_space: true takes no autoencoder_checkpoint")
        if config.transforms is None:
            config.transforms = get_task(self.task).default_transforms()
        scale = config.scale_factor or (1.0 if config.pixel_space else 0.0)  # 0: estimate at the first step
        self.register_buffer("latent_scale", torch.tensor(float(scale)))
        return 1 if config.pixel_space else config.autoencoder.latent_channels

    @property
    def scale(self) -> float:
        s = float(self.latent_scale)
        return s if s > 0 else 1.0

    @torch.no_grad()
    def _estimate_scale(self, x0: torch.Tensor) -> None:
        """Set ``latent_scale`` to 1 / std of ``x0`` (latents of a first training batch), the same value on every
        rank (the std averaged over processes): DDP's broadcast of rank 0's buffers before each later forward
        rewrites it with itself (see petsynth.train.trainer.Trainer._data_parallel)."""
        std = x0.float().std()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(std)
            std /= dist.get_world_size()
        self.latent_scale.fill_(1.0 / float(std.clamp_min(1e-6)))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Network-unit images (B, 1, H, W) -> diffusion space (the VQ latent, or the image in pixel space)."""
        return images if self.config.pixel_space else self.autoencoder.to_latent(images)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion space -> network-unit images."""
        return z if self.config.pixel_space else self.autoencoder.from_latent(z)

    def ema_module_names(self) -> list[str]:
        return [n for n in ("denoiser", "map_encoder") if hasattr(self, n)]

"""``cpdm`` and ``bbdm``: CT -> PET by a Brownian bridge in a VQ latent space (CPDM paper, sections 4-5).

The CT latent y is the bridge's end point (x_T = y); the PET latent x0 its start. The denoiser sees
concat(x_t, MapEncoder(M_sigma, M_mu)), where M_sigma is the attention segmenter's binarised output on the CT
and M_mu = exp(-mu L) the attenuation map (computed in the data pipeline from the CT in HU and its kVp).
Training: Algorithm 1 (L1 between the predicted and true objective). Sampling: Algorithm 2 (``eta=1``) or
the consistent deterministic sampler (``eta=0``) over ``sample_steps`` steps.

``bbdm`` is the same model without either map (the ablation of the paper's Table 4); ``cpdm`` with
``use_attention_map: false`` or ``use_attenuation_map: false`` gives the other rows. ``pixel_space: true``
runs the bridge on the images themselves (no autoencoder).

The autoencoder and segmenter are trained first (``petsynth train vqgan``, ``petsynth train attention``)
and given as checkpoints; they are frozen here and their weights are saved inside every CPDM checkpoint, so
a trained CPDM is one self-contained folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from petsynth.config import Config
from petsynth.data.batch import ct_of
from petsynth.data.intensity import IntensityTransform
from petsynth.diffusion import BrownianBridge, samplers
from petsynth.methods.base import Method, MethodError, StepsEtaOptions, register
from petsynth.methods.parts import (CONTEXT_SLICES_FIELD, CT_WINDOWS_FIELD, GuidanceMaps, LatentSpace,
                                   frozen_autoencoder)
from petsynth.nn.autoencoder import VQAutoencoderConfig
from petsynth.nn.conditioning import MapEncoder
from petsynth.nn.denoiser import DenoiserConfig, build_denoiser
from petsynth.nn.segmenter import SegmenterConfig
from petsynth.tasks import DEFAULT_TASK, get_task


class BridgeConfig(Config):
    num_timesteps: int = Field(1000, ge=2)
    mt_type: Literal["linear", "sin"] = "linear"
    max_var: float = Field(1.0, gt=0)
    objective: Literal["grad", "noise", "ysubx"] = "grad"


class CPDMConfig(Config):
    autoencoder_checkpoint: str | None = Field(None, description="a vqgan run's model folder (latent mode)")
    autoencoder: VQAutoencoderConfig | None = Field(None, description="filled in from the checkpoint")
    pixel_space: bool = Field(False, description="bridge on the images (no autoencoder)")
    segmenter_checkpoint: str | None = Field(None, description="an attention run's model folder")
    segmenter: SegmenterConfig | None = Field(None, description="filled in from the checkpoint")
    segmenter_ct_transform: IntensityTransform | None = Field(None, description="filled in from the checkpoint")
    use_attention_map: bool = True
    use_attenuation_map: bool = True
    attention_threshold: float = Field(0.5, gt=0, lt=1)
    mu_path_length_cm: float = Field(1.0, gt=0, description="L of exp(-mu L); CPDM: 1 cm")
    map_channels: int = Field(3, ge=1, description="channels per map after the 1x1 conv")
    ct_windows: list[tuple[float, float]] = CT_WINDOWS_FIELD
    context_slices: int = CONTEXT_SLICES_FIELD
    bridge: BridgeConfig = Field(default_factory=BridgeConfig)
    denoiser: DenoiserConfig = Field(default_factory=lambda: DenoiserConfig.preset("small"))
    sample_steps: int = Field(10, ge=1, description="default sampling steps of translate")
    eta: float = Field(0.0, ge=0, le=1, description="0: deterministic sampler; 1: Algorithm 2")
    transforms: dict[str, IntensityTransform] | None = Field(None, description="filled in from the autoencoder")


@register
class CPDM(LatentSpace, GuidanceMaps, Method):
    name = "cpdm"
    summary = "latent Brownian bridge CT -> PET with the Attention and Attenuation maps (CPDM)"
    tasks = (DEFAULT_TASK,)
    config_class = CPDMConfig
    sampler_options_class = StepsEtaOptions
    needs_mu_map = True
    default_lr = 1e-4

    def __init__(self, config: CPDMConfig, task: str = DEFAULT_TASK, load_parts: bool = True):
        super().__init__(config, task)
        self._check_variant(config)
        if not config.pixel_space:
            self.autoencoder = frozen_autoencoder(self.name, config, load_parts)
        if config.transforms is None:
            config.transforms = get_task(task).default_transforms()
        self._build_maps(config, load_parts)
        f = 1 if config.pixel_space else config.autoencoder.downsample_factor
        latent_channels = 1 if config.pixel_space else config.autoencoder.latent_channels
        if self.num_maps:
            self.map_encoder = MapEncoder(self.num_maps, f=f, out_channels=config.map_channels)
        denoiser_cfg = config.denoiser.model_copy(update={
            "in_channels": latent_channels + self.num_maps * config.map_channels,
            "out_channels": latent_channels})
        self.denoiser = build_denoiser(DenoiserConfig.model_validate(denoiser_cfg.model_dump()))
        b = config.bridge
        self.bridge = BrownianBridge(b.num_timesteps, b.mt_type, b.max_var, b.objective)

    def _check_variant(self, config: CPDMConfig) -> None:
        pass

    # --- units ------------------------------------------------------------------------------------------
    def intensity_transforms(self) -> dict[str, IntensityTransform]:
        return dict(self.config.transforms)


    def _ct_network(self, ct_hu: torch.Tensor) -> torch.Tensor:
        return self.config.transforms["source"].forward(ct_hu)


    def _conditioning(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """The encoded maps (B, num_maps * map_channels, h, w), or None when there are none."""
        maps = self.maps(batch)
        return self.map_encoder(maps) if maps is not None else None

    def _model_fn(self, cond: torch.Tensor | None):
        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            inp = x_t if cond is None else torch.cat([x_t, cond.to(x_t.dtype)], dim=1)
            return self.denoiser(inp, t)
        return model_fn

    # --- training (Algorithm 1) -------------------------------------------------------------------------
    def losses(self, batch: Mapping[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        t_ = self.config.transforms
        x0 = self.encode(t_["target"].forward(batch["target"]))
        y = self.encode(self._ct_network(ct_of(batch, self.task)))
        cond = self._conditioning(batch)
        t = self.bridge.training_times(x0.shape[0], device=x0.device)
        x_t, objective = self.bridge.q_sample(x0, t, y=y)
        pred = self._model_fn(cond)(x_t, t)
        return {"loss": F.l1_loss(pred.float(), objective.float())}

    # --- sampling (Algorithm 2 / deterministic) ---------------------------------------------------------
    @torch.no_grad()
    def translate(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                  **options: Any) -> torch.Tensor:
        """Synthetic PET in SUV, (B, 1, H, W), from the batch's CT (HU) and maps. Options: ``steps`` (default
        ``sample_steps``), ``eta`` (default ``eta``; 0 deterministic, 1 Algorithm 2)."""
        opts = self.sampler_options(options)
        y = self.encode(self._ct_network(ct_of(batch, self.task)))
        cond = self._conditioning(batch)
        x0 = samplers.bridge(self.bridge, self._model_fn(cond), y, opts.steps or self.config.sample_steps,
                             eta=self.config.eta if opts.eta is None else opts.eta, generator=generator)
        return self.config.transforms["target"].inverse(self.decode(x0).float())


class BBDMConfig(CPDMConfig):
    use_attention_map: bool = False
    use_attenuation_map: bool = False


@register
class BBDM(CPDM):
    """CPDM without its two maps: the plain latent Brownian bridge (BBDM, Li et al. 2023)."""

    name = "bbdm"
    summary = "latent Brownian bridge CT -> PET without maps (BBDM; the CPDM ablation)"
    config_class = BBDMConfig
    needs_mu_map = False

    def _check_variant(self, config: CPDMConfig) -> None:
        if config.use_attention_map or config.use_attenuation_map:
            raise MethodError("bbdm has no guidance maps; use method cpdm for a bridge with maps")


"""``ldm``: conditional latent diffusion (Rombach et al. 2022), a baseline of the CPDM paper.

Gaussian diffusion (:class:`petsynth.diffusion.GaussianDiffusion`: DDPM, T = 1000, LDM's "linear" schedule:
beta^(1/2) linear from 0.0015^(1/2) to 0.0195^(1/2), ``scaled_linear_beta``) in the latent of a trained,
frozen ``vqgan`` autoencoder (the same continuous pre-quantisation latent as cpdm). The PET latent x0 is
noised; the denoiser (MONAI ``DiffusionModelUNet``, as cpdm's) sees concat(x_t, CT latent, maps) and predicts
the noise; loss: MSE. Sampling: DDIM (:func:`petsynth.diffusion.samplers.ddim`), ``sample_steps`` (50) steps
on the uniform timestep grid of the DDIM paper (0, c, 2c, .. with c = T // steps), ``eta`` 0 (deterministic)
by default, then decoded.

Latents are multiplied by ``scale_factor`` (LDM's unit-variance scaling): given, or (None) estimated at the
first training step as 1 / std of that batch's PET latents (averaged over processes) and kept in the
checkpoint as the buffer ``latent_scale``. ``pixel_space: true`` diffuses the images themselves
(no autoencoder, scale 1, x0 predictions clipped to [-1, 1]).

Maps ("w/ (M_sigma, M_mu)", CPDM paper Table 5): as in cpdm, each map is brought to the latent grid by
0.5x bilinear resizes and a learned 1x1 conv to ``map_channels`` channels (MapEncoder) and concatenated
to the denoiser input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from petsynth.config import Config
from petsynth.data.intensity import IntensityTransform
from petsynth.diffusion import GaussianDiffusion, samplers
from petsynth.methods.base import Method, StepsEtaOptions, register
from petsynth.methods.parts import GuidanceMaps, GuidanceMapsConfig, LatentSpace
from petsynth.nn.autoencoder import VQAutoencoderConfig
from petsynth.nn.conditioning import MapEncoder
from petsynth.nn.denoiser import DenoiserConfig, build_denoiser
from petsynth.tasks import DEFAULT_TASK, TASK_NAMES


class NoiseScheduleConfig(Config):
    num_train_timesteps: int = Field(1000, ge=2)
    schedule: Literal["scaled_linear_beta", "linear_beta", "cosine"] = Field(
        "scaled_linear_beta", description="beta schedule; scaled_linear_beta is LDM's 'linear'")
    beta_start: float = Field(0.0015, gt=0, lt=1, description="not used by cosine")
    beta_end: float = Field(0.0195, gt=0, lt=1, description="not used by cosine")

    def process(self) -> GaussianDiffusion:
        return GaussianDiffusion(self.num_train_timesteps, self.schedule, self.beta_start, self.beta_end)


class LDMConfig(GuidanceMapsConfig):
    autoencoder_checkpoint: str | None = Field(None, description="a vqgan run's model folder (latent mode)")
    autoencoder: VQAutoencoderConfig | None = Field(None, description="filled in from the checkpoint")
    pixel_space: bool = Field(False, description="diffusion on the images (no autoencoder)")
    scale_factor: float | None = Field(None, gt=0, description="latent scale; None: 1 / std at the first step")
    map_channels: int = Field(3, ge=1, description="channels per map after the 1x1 conv")
    diffusion: NoiseScheduleConfig = Field(default_factory=NoiseScheduleConfig)
    denoiser: DenoiserConfig = Field(default_factory=lambda: DenoiserConfig.preset("small"))
    sample_steps: int = Field(50, ge=1, description="default DDIM steps of translate")
    eta: float = Field(0.0, ge=0, le=1, description="DDIM eta: 0 deterministic, 1 DDPM-like")
    transforms: dict[str, IntensityTransform] | None = Field(None, description="filled in from the autoencoder")


@register
class LDM(LatentSpace, GuidanceMaps, Method):
    name = "ldm"
    summary = "conditional latent diffusion (DDPM training, DDIM sampling) given the source latent; optional maps"
    tasks = TASK_NAMES
    config_class = LDMConfig
    sampler_options_class = StepsEtaOptions
    default_lr = 1e-4

    def __init__(self, config: LDMConfig, task: str = DEFAULT_TASK, load_parts: bool = True):
        super().__init__(config, task)
        cz = self._build_space(config, load_parts)
        self._build_maps(config, load_parts)
        f = 1 if config.pixel_space else config.autoencoder.downsample_factor
        self.latent_channels = cz
        if self.num_maps:
            self.map_encoder = MapEncoder(self.num_maps, f=f, out_channels=config.map_channels)
        self.denoiser = build_denoiser(DenoiserConfig.model_validate(config.denoiser.model_copy(update={
            "in_channels": 2 * cz + self.num_maps * config.map_channels, "out_channels": cz}).model_dump()))
        self.process = config.diffusion.process()

    def intensity_transforms(self) -> dict[str, IntensityTransform]:
        return dict(self.config.transforms)


    # --- spaces ---------------------------------------------------------------------------------------------

    def _conditions(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """concat(source latent x scale, encoded maps): what the denoiser sees beside x_t."""
        y = self.encode(self.config.transforms["source"].forward(batch["source"])).float() * self.scale
        maps = self.maps(batch)
        return y if maps is None else torch.cat([y, self.map_encoder(maps).to(y.dtype)], dim=1)

    def _model_fn(self, cond: torch.Tensor):
        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.denoiser(torch.cat([x_t, cond.to(x_t.dtype)], dim=1), t)
        return model_fn

    # --- training ---------------------------------------------------------------------------------------------
    def losses(self, batch: Mapping[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        x0 = self.encode(self.config.transforms["target"].forward(batch["target"])).float()
        if float(self.latent_scale) == 0.0:
            self._estimate_scale(x0)
        x0 = x0 * self.scale
        cond = self._conditions(batch)
        noise = torch.randn_like(x0)
        t = self.process.training_times(x0.shape[0], device=x0.device)
        x_t, target = self.process.q_sample(x0, t, noise)
        pred = self._model_fn(cond)(x_t, t)
        return {"loss": F.mse_loss(pred.float(), target)}

    # --- sampling -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def translate(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                  **options: Any) -> torch.Tensor:
        """Synthetic PET in SUV, (B, 1, H, W), by DDIM from Gaussian noise given the batch's source (and maps).
        Options: ``steps`` (default ``sample_steps``), ``eta`` (default ``eta``)."""
        opts = self.sampler_options(options)
        cond = self._conditions(batch)
        shape = (cond.shape[0], self.latent_channels, *cond.shape[-2:])
        x_T = torch.randn(shape, generator=generator, device=generator.device if generator else cond.device)
        model_fn = self._model_fn(cond)
        x0 = samplers.ddim(self.process, lambda x, t: model_fn(x, t).float(), x_T.to(cond.device),
                           opts.steps or self.config.sample_steps,
                           eta=self.config.eta if opts.eta is None else opts.eta,
                           clip_x0=(-1.0, 1.0) if self.config.pixel_space else None, generator=generator)
        return self.config.transforms["target"].inverse(self.decode(x0 / self.scale).float())

"""``jdam`` and ``sde``: score models of PET under the VE-SDE (the JDAM seed, Xie et al.), MRI -> PET.

``jdam`` (joint diffusion attention model): the network sees concat(noisy PET x_t, MRI y) and the noise
level and returns the score of the noisy PET; the MRI is never noised. ``sde``: the seed's ablation, the same
score model of PET alone (no MRI channel), sampled from noise: what the joint model adds is what ``jdam``
gains over it.

Noise process: :class:`petsynth.diffusion.VESDE` (the public code's sigma_min 0.01, sigma_max 348, N = 1000,
sampling eps 1e-5). Training: the seed's Algorithm 1, denoising score matching with lambda(t) = sigma(t)^2,
t ~ U(eps, 1)::

    loss = mean || sigma s_theta(x0 + sigma z, y, sigma) + z ||^2

(``training_sigma: uniform_t``, ``loss_weighting: sigma2``, the defaults.) Options for shorter training runs:
``training_sigma: lognormal`` draws ln sigma ~ N(``lognormal_mean``, ``lognormal_std``^2) (EDM's -1.2, 1.2,
clipped to [sigma_min, sigma_max]) instead of log-uniform over 0.01..348, and ``loss_weighting: edm``
multiplies each sample's term by (sigma^2 + sigma_data^2) / sigma_data^2, EDM's weighting (unit weight on the
network's output at every sigma); the seed's weighting gives mid and high noise levels, where the image's
large-scale structure is decided, little of the gradient.

Network F (a MONAI ``DiffusionModelUNet``, :mod:`petsynth.nn.denoiser`: residual blocks, GroupNorm, SiLU,
self-attention at 16x16; MONAI's blocks have no dropout), with choices of petsynth's made explicit here:

- time input: the normalised log noise level, (N - 1) log(sigma / sigma_min) / log(sigma_max / sigma_min),
  in 0..999 like the DDPM timesteps its sinusoidal embedding is made for (NCSN++ embeds log sigma);
- input: the noisy PET enters as c_in x_t, c_in = 1 / sqrt(sigma^2 + sigma_data^2) (at sigma = 348 the raw
  x_t would drown the MRI channel in the first GroupNorm);
- output (``preconditioning``): "edm" (the default; Karras et al. 2022): the denoiser
  D = c_skip x_t + c_out F with c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
  c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2), and the score s = (D - x_t) / sigma^2;
  "scale_by_sigma" (NCSN++, the public code's): s = F / sigma. The loss above is the same functional of s
  either way. Why EDM: with F / sigma the network must output -z to a precision of data spread / sigma
  (6e-4 at sigma = 348) to denoise; measured on the brain phantoms after 750 steps, its x0 estimate at
  sigma = 348 was off by 20 (RMSE, network units; the data spread is 0.2) and every sample was noise. With
  c_skip the identity part is exact and F's errors reach x0 scaled by c_out <= sigma_data.

Sampling (``translate``): ``sampler`` "pc" (the seed's Algorithm 2: reverse-diffusion predictor + Langevin
corrector, snr 0.075, one corrector step, from the prior N(0, sigma_max^2), NFE = steps + (steps - 1)),
"ode" (probability-flow ODE with Heun steps, NFE = 2 steps - 1: the fast default), "reverse_diffusion" or
"langevin"; the trainer exports the EMA weights (the public code samples with the raw ones). Images are in
the task's windows (PET 0..20 SUV -> [-1, 1]; MR as read, 0..1000 -> [-1, 1]); ``translate`` returns SUV.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from petsynth.config import Config
from petsynth.data.intensity import IntensityTransform
from petsynth.diffusion import VESDE, samplers
from petsynth.methods.base import Method, register
from petsynth.nn.denoiser import DenoiserConfig, build_denoiser
from petsynth.tasks import DEFAULT_TASK, TASK_NAMES, get_task

Sampler = Literal["pc", "ode", "reverse_diffusion", "langevin"]


class VESDEConfig(Config):
    sigma_min: float = Field(0.01, gt=0)
    sigma_max: float = Field(348.0, gt=0)
    num_scales: int = Field(1000, ge=2, description="N: discrete noise scales, the pc sampler's default steps")
    eps: float = Field(1e-5, ge=0, lt=1, description="smallest time of training and sampling")

    def process(self) -> VESDE:
        return VESDE(self.sigma_min, self.sigma_max, self.num_scales, self.eps)


class ScoreSamplerOptions(Config):
    """``translate`` options (None: the model's config)."""

    sampler: Sampler | None = Field(None, description="pc, ode, reverse_diffusion or langevin")
    steps: int | None = Field(None, ge=1, description="noise levels visited (NFE: see the sampler)")
    snr: float | None = Field(None, gt=0, description="Langevin corrector signal-to-noise ratio")
    corrector_steps: int | None = Field(None, ge=0, description="Langevin steps per noise level")
    rho: float | None = Field(None, ge=0, description="ode: Karras spacing of the noise levels; 0: geometric")


class ScoreSDEConfig(Config):
    sde: VESDEConfig = Field(default_factory=VESDEConfig)
    denoiser: DenoiserConfig = Field(default_factory=lambda: DenoiserConfig.preset("jdam-cpu"))
    sigma_data: float = Field(0.5, gt=0, description="data spread (network units) of the c_in, c_skip, c_out scaling")
    training_sigma: Literal["uniform_t", "lognormal"] = Field(
        "uniform_t", description="uniform_t: t ~ U(eps, 1) (the seed); lognormal: ln sigma ~ N(mean, std^2) (EDM)")
    lognormal_mean: float = Field(-1.2, description="training_sigma lognormal: mean of ln sigma")
    lognormal_std: float = Field(1.2, gt=0, description="training_sigma lognormal: std of ln sigma")
    loss_weighting: Literal["sigma2", "edm"] = Field(
        "sigma2", description="sigma2: the seed's lambda = sigma^2; edm: x (sigma^2 + sigma_data^2) / sigma_data^2")
    preconditioning: Literal["edm", "scale_by_sigma"] = Field(
        "edm", description="edm: s = (c_skip x + c_out F - x) / sigma^2; scale_by_sigma (NCSN++): s = F / sigma")
    sampler: Sampler = Field("ode", description="default sampler of translate")
    sample_steps: int = Field(10, ge=1, description="default steps (ode: 10 steps = 19 NFE)")
    snr: float = Field(0.075, gt=0, description="pc/langevin: the public code's 0.075")
    corrector_steps: int = Field(1, ge=0, description="pc/langevin: Langevin steps per level")
    rho: float = Field(7.0, ge=0, description="ode: Karras rho of the noise levels; 0: the geometric grid")
    transforms: dict[str, IntensityTransform] | None = Field(None, description="default: the task's")


@register
class JDAM(Method):
    name = "jdam"
    summary = "joint score model of (noisy PET, source) under the VE-SDE, predictor-corrector or ODE sampling (JDAM)"
    tasks = TASK_NAMES
    config_class = ScoreSDEConfig
    sampler_options_class = ScoreSamplerOptions
    default_lr = 2e-4
    #: whether the network sees the source image beside the noisy PET
    joint: ClassVar[bool] = True

    def __init__(self, config: ScoreSDEConfig, task: str = DEFAULT_TASK, load_parts: bool = True):
        super().__init__(config, task)
        if config.transforms is None:
            config.transforms = get_task(task).default_transforms()
        self.sde = config.sde.process()
        in_channels = 2 if self.joint else 1
        self.denoiser = build_denoiser(DenoiserConfig.model_validate(config.denoiser.model_copy(update={
            "in_channels": in_channels, "out_channels": 1}).model_dump()))

    def intensity_transforms(self) -> dict[str, IntensityTransform]:
        return dict(self.config.transforms)

    def ema_module_names(self) -> list[str]:
        return ["denoiser"]

    # --- the score network ---------------------------------------------------------------------------------
    def network_time(self, sigma: torch.Tensor) -> torch.Tensor:
        """(N - 1) log(sigma / sigma_min) / log(sigma_max / sigma_min): 0 at sigma_min, N - 1 at sigma_max."""
        s = self.sde
        return (s.num_scales - 1) * torch.log(sigma / s.sigma_min) / s.log_ratio

    def score(self, x: torch.Tensor, sigma: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        """s_theta(x, y, sigma): x (B, 1, H, W) noisy PET in network units, sigma (B,), source (B, 1, H, W) in
        network units (ignored by ``sde``) -> the score, like x."""
        return self._sigma_score(x, sigma, source) / sigma.view(-1, 1, 1, 1).to(x.dtype)

    def _sigma_score(self, x: torch.Tensor, sigma: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        """sigma s_theta(x, y, sigma), the quantity the loss compares with -z."""
        s = sigma.view(-1, 1, 1, 1).to(x.dtype)
        sd2 = self.config.sigma_data**2
        c_in = (s**2 + sd2).rsqrt()
        inp = torch.cat([x * c_in, source.to(x.dtype)], dim=1) if self.joint else x * c_in
        out = self.denoiser(inp, self.network_time(sigma.float())).to(x.dtype)
        if self.config.preconditioning == "scale_by_sigma":
            return out
        # (D - x) / sigma with D = c_skip x + c_out F, written without the cancellation of D - x at small sigma
        return self.config.sigma_data * c_in * out - s * c_in**2 * x

    def _source(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        return self.config.transforms["source"].forward(batch["source"]) if self.joint else None

    # --- training (Algorithm 1) -----------------------------------------------------------------------------
    def losses(self, batch: Mapping[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        cfg = self.config
        x0 = cfg.transforms["target"].forward(batch["target"])
        if cfg.training_sigma == "uniform_t":
            sigma = self.sde.sigma(self.sde.training_times(x0.shape[0], device=x0.device)).to(x0.dtype)
        else:
            log_sigma = torch.randn(x0.shape[0], device=x0.device) * cfg.lognormal_std + cfg.lognormal_mean
            sigma = log_sigma.exp().clamp(self.sde.sigma_min, self.sde.sigma_max).to(x0.dtype)
        z = torch.randn_like(x0)
        x_t = x0 + sigma.view(-1, 1, 1, 1) * z
        sigma_score = self._sigma_score(x_t, sigma, self._source(batch))
        per_sample = (sigma_score.float() + z.float()).square().flatten(1).mean(1)
        if cfg.loss_weighting == "edm":
            per_sample = per_sample * (sigma.float() ** 2 + cfg.sigma_data**2) / cfg.sigma_data**2
        return {"loss": per_sample.mean()}

    # --- sampling -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def translate(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                  **options: Any) -> torch.Tensor:
        """Synthetic PET in SUV, (B, 1, H, W), sampled from N(0, sigma_max^2) given the batch's source (jdam) or
        from noise alone (sde). Options: ``sampler``, ``steps``, ``snr``, ``corrector_steps``, ``rho``."""
        opts = self.sampler_options(options)
        cfg = self.config
        name = opts.sampler or cfg.sampler
        steps = opts.steps or cfg.sample_steps
        source = self._source(batch)
        like = batch["source"]
        shape = (like.shape[0], 1, *like.shape[-2:])
        x_T = self.sde.prior_sample(shape, generator=generator, device=generator.device if generator else None)
        x_T = x_T.to(like.device)

        def score_fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.score(x, sigma, source)

        if name == "ode":
            rho = cfg.rho if opts.rho is None else opts.rho
            x0 = samplers.ode(self.sde, score_fn, x_T, steps, rho=rho or None)
        else:
            kwargs = {"snr": opts.snr or cfg.snr,
                      "corrector_steps": cfg.corrector_steps if opts.corrector_steps is None else opts.corrector_steps}
            if name == "reverse_diffusion":
                kwargs = {}
            x0 = samplers.SAMPLERS[name](self.sde, score_fn, x_T, steps, generator=generator, **kwargs)
        return cfg.transforms["target"].inverse(x0.float())


@register
class SDE(JDAM):
    """The seed's ablation: the score model of PET alone, sampled from noise without the source image."""

    name = "sde"
    summary = "score model of PET alone under the VE-SDE, sampled from noise (JDAM's ablation: no source image)"
    joint = False


"""``upete``: unsupervised low-dose PET enhancement trained on standard-dose PET only (Jiang et al., MICCAI 2023).

Training never sees a low-dose image. A standard-dose slice x0 (SUV) is degraded to x_t by the forward
process, both are brought into the diffusion space (the frozen ``vqgan`` latent, as ldm's, or the images in
network units with ``pixel_space``), and the denoiser learns to give back x0's latent from x_t's, at step t:
MSE on the x0 prediction. Forward processes (``process``):

- ``poisson`` (the paper's, :class:`petsynth.diffusion.PoissonDiffusion`): x_t is x0 re-acquired at dose
  fraction d(t) = min_dose^(t / (T - 1)), Poisson deviates on its attenuated projections (the attenuation from
  the slice's CT), FBP; degraded in image space, then encoded;
- ``gaussian`` (the paper's LDM ablation): DDPM noise on the latent of x0 (:class:`~petsynth.diffusion.GaussianDiffusion`).

CT guidance (``ct_guidance``, the paper's CT-guided cross-attention): the noisy latent and the CT (its latent,
or the image in pixel space) each pass a 3x3 convolution to ``guidance_channels`` features, then
:class:`~petsynth.nn.cross_attention.CTGuidedCrossAttention` mixes the PET features with weights from the CT
(windows of ``window``); the result is concatenated to the denoiser's input. The paper's Table 1 ablations are
configurations: LDM (gaussian, no CT), LDM-P (poisson), LDM-CT (gaussian + CT), LDM-P-CT (the default).

Enhancing a low-dose image (``translate``): its dose fraction f (the ``dose_fraction`` option, else the
item's ``dose_fraction``, else the config's) gives the entry step t* = ``timestep_for_dose(f)`` (the same
lambda mapping for the gaussian ablation). The low-dose slice is encoded as x_{t*}, and ``steps`` steps on an
even grid from t* down to 0 each predict x0 and, but for the last, degrade that prediction again to the next
step's level (cold diffusion's plain sampler, Bansal et al. 2022); the last prediction is decoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from petsynth.config import Config
from petsynth.data.intensity import IntensityTransform
from petsynth.diffusion import PoissonDiffusion
from petsynth.methods.base import Method, MethodError, register
from petsynth.methods.ldm import NoiseScheduleConfig
from petsynth.methods.parts import LatentSpace
from petsynth.nn.autoencoder import VQAutoencoderConfig
from petsynth.nn.cross_attention import CTGuidedCrossAttention
from petsynth.nn.denoiser import DenoiserConfig, build_denoiser
from petsynth.physics.attenuation import hu_to_mu
from petsynth.physics.constants import STANDARD_COUNTS_PER_SUV_ML


class PoissonProcessConfig(Config):
    num_timesteps: int = Field(400, ge=2, description="T (the paper: 400)")
    min_dose: float = Field(0.01, gt=0, lt=1, description="dose fraction at t = T - 1")
    counts_per_suv_ml: float = Field(STANDARD_COUNTS_PER_SUV_ML, gt=0, description="the standard dose's counts")
    slice_mm: float = Field(4.0, gt=0, description="slice thickness the counts are computed for")
    attenuation: bool = Field(True, description="attenuate the projections by the CT's mu at 511 keV")


class UPETeOptions(Config):
    steps: int | None = Field(None, ge=1, description="sampling steps from the entry step down to 0")
    dose_fraction: float | None = Field(None, gt=0, le=1, description="the low-dose image's dose fraction")


class UPETeConfig(Config):
    autoencoder_checkpoint: str | None = Field(None, description="a vqgan run's model folder (latent mode)")
    autoencoder: VQAutoencoderConfig | None = Field(None, description="filled in from the checkpoint")
    pixel_space: bool = Field(False, description="diffuse the images (no autoencoder)")
    scale_factor: float | None = Field(None, gt=0, description="latent scale; None: 1 / std at the first step")
    process: Literal["poisson", "gaussian"] = Field("poisson", description="forward process (gaussian: LDM)")
    poisson: PoissonProcessConfig = Field(default_factory=PoissonProcessConfig)
    gaussian: NoiseScheduleConfig = Field(default_factory=lambda: NoiseScheduleConfig(num_train_timesteps=400))
    ct_guidance: bool = Field(True, description="CT-guided cross-attention")
    guidance_channels: int = Field(32, ge=4, description="features of the cross-attention")
    guidance_heads: int = Field(4, ge=1)
    window: int = Field(8, ge=1, description="cross-attention window side, in latent positions")
    denoiser: DenoiserConfig = Field(default_factory=lambda: DenoiserConfig.preset("small"))
    sample_steps: int = Field(4, ge=1, description="default steps of translate")
    dose_fraction: float = Field(0.1, gt=0, le=1, description="dose fraction assumed when nothing says it")
    transforms: dict[str, IntensityTransform] | None = Field(None, description="filled in from the autoencoder")


@register
class UPETe(LatentSpace, Method):
    name = "upete"
    summary = "low-dose PET enhancement trained on standard-dose PET only (Poisson diffusion, CT cross-attention)"
    tasks = ("lpet2spet",)
    config_class = UPETeConfig
    sampler_options_class = UPETeOptions
    default_lr = 1e-4

    def __init__(self, config: UPETeConfig, task: str = "lpet2spet", load_parts: bool = True):
        super().__init__(config, task)
        cz = self.latent_channels = self._build_space(config, load_parts)
        extra = 0
        if config.ct_guidance:
            c = config.guidance_channels
            self.pet_stem = nn.Conv2d(cz, c, 3, padding=1)
            self.ct_stem = nn.Conv2d(cz, c, 3, padding=1)
            self.cross_attention = CTGuidedCrossAttention(c, c, num_heads=config.guidance_heads, window=config.window)
            extra = c
        self.denoiser = build_denoiser(DenoiserConfig.model_validate(config.denoiser.model_copy(update={
            "in_channels": cz + extra, "out_channels": cz}).model_dump()))
        self.gaussian = config.gaussian.process()
        self._poisson: dict[float, PoissonDiffusion] = {}

    @property
    def num_timesteps(self) -> int:
        cfg = self.config
        return cfg.poisson.num_timesteps if cfg.process == "poisson" else cfg.gaussian.num_train_timesteps

    def intensity_transforms(self) -> dict[str, IntensityTransform]:
        return dict(self.config.transforms)

    def ema_module_names(self) -> list[str]:
        return [n for n in ("denoiser", "pet_stem", "ct_stem", "cross_attention") if hasattr(self, n)]

    # --- spaces -----------------------------------------------------------------------------------------------
    def _poisson_process(self, pixel_mm: float) -> PoissonDiffusion:
        """The Poisson process for slices of ``pixel_mm`` pixels (the counts per pixel depend on its size)."""
        key = round(float(pixel_mm), 4)
        if key not in self._poisson:
            p = self.config.poisson
            self._poisson[key] = PoissonDiffusion(p.num_timesteps, p.min_dose, p.counts_per_suv_ml, pixel_mm=key,
                                                  slice_mm=p.slice_mm)
        return self._poisson[key]

    def _to_space(self, suv: torch.Tensor) -> torch.Tensor:
        """SUV images (B, 1, H, W) -> the diffusion space, scaled."""
        return self.encode(self.config.transforms["target"].forward(suv)).float() * self.scale

    def _to_suv(self, z: torch.Tensor) -> torch.Tensor:
        return self.config.transforms["target"].inverse(self.decode(z / self.scale).float())

    def _guidance(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """The CT in the diffusion space (its latent, or the image in network units), or None without CT guidance."""
        if not self.config.ct_guidance:
            return None
        ct = batch.get("guidance")
        if ct is None:
            raise MethodError("upete with ct_guidance needs the CT (the batch's 'guidance'); or ct_guidance: false")
        return self.encode(self.config.transforms["guidance"].forward(ct)).float()

    def _degrade(self, x0_suv: torch.Tensor, t: torch.Tensor, batch: Mapping[str, Any],
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t in the diffusion space from x0 in SUV (the forward process at steps ``t``, (B,))."""
        if self.config.process == "gaussian":
            z0 = self._to_space(x0_suv)
            noise = torch.randn(z0.shape, generator=generator, device=z0.device)
            return self.gaussian.q_sample(z0, t, noise)[0]
        mu = None
        if self.config.poisson.attenuation and batch.get("guidance") is not None:
            mu = hu_to_mu(batch["guidance"].float(), _kvp(batch, x0_suv.shape[0]).view(-1, 1, 1, 1))
        out = torch.empty_like(x0_suv, dtype=torch.float32)
        spacings = _pixel_mm(batch, x0_suv.shape[0])
        for pixel in sorted(set(spacings)):  # one process per pixel size (usually one)
            rows = [b for b, s in enumerate(spacings) if s == pixel]
            out[rows] = self._poisson_process(pixel).q_sample(
                x0_suv[rows].float(), t[rows], generator=generator, mu=None if mu is None else mu[rows])
        return self._to_space(out)

    def _predict_x0(self, z_t: torch.Tensor, t: torch.Tensor, ct: torch.Tensor | None) -> torch.Tensor:
        x = z_t
        if ct is not None:
            features = self.cross_attention(self.pet_stem(z_t), self.ct_stem(ct.to(z_t.dtype)))
            x = torch.cat([z_t, features], dim=1)
        return self.denoiser(x, t)

    # --- training ---------------------------------------------------------------------------------------------
    def losses(self, batch: Mapping[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        """Standard-dose PET only (the batch's "target", and its CT): the low-dose "source" is never read."""
        target = batch["target"]
        if float(self.latent_scale) == 0.0:
            self._estimate_scale(self.encode(self.config.transforms["target"].forward(target)))
        z0 = self._to_space(target)
        t = torch.randint(0, self.num_timesteps, (target.shape[0],), device=target.device)
        z_t = self._degrade(target, t, batch)
        pred = self._predict_x0(z_t, t, self._guidance(batch))
        return {"loss": F.mse_loss(pred.float(), z0)}

    # --- enhancing ----------------------------------------------------------------------------------------------
    def entry_step(self, dose_fraction: float) -> int:
        """t* for a low-dose image of ``dose_fraction``: the Poisson schedule's step of that dose (module docstring)."""
        p = self.config.poisson
        probe = PoissonDiffusion(self.num_timesteps, p.min_dose)
        return probe.timestep_for_dose(dose_fraction)

    @torch.no_grad()
    def translate(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                  **options: Any) -> torch.Tensor:
        """The enhanced PET in SUV, (B, 1, H, W), from the batch's low-dose "source" (module docstring)."""
        opts = self.sampler_options(options)
        low = batch["source"]
        fractions = _dose_fractions(batch, low.shape[0], opts.dose_fraction, self.config.dose_fraction)
        ct = self._guidance(batch)
        z = self._to_space(low)
        steps = opts.steps or self.config.sample_steps
        out = torch.empty_like(low, dtype=torch.float32)
        for fraction in sorted(set(fractions)):  # items of one dose share their step grid
            rows = [b for b, f in enumerate(fractions) if f == fraction]
            grid = np.unique(np.linspace(self.entry_step(fraction), 0, steps + 1).round().astype(int))[::-1]
            z_rows, ct_rows = z[rows], None if ct is None else ct[rows]
            sub = _rows(batch, rows, low.shape[0])
            for i, s in enumerate(grid):
                t = torch.full((len(rows),), int(s), device=low.device, dtype=torch.long)
                z0_hat = self._predict_x0(z_rows, t, ct_rows).float()
                if i + 1 < len(grid):
                    next_t = torch.full_like(t, int(grid[i + 1]))
                    z_rows = self._degrade(self._to_suv(z0_hat).clamp_min(0.0), next_t, sub, generator)
            out[rows] = self._to_suv(z0_hat)
        return out


def _rows(batch: Mapping[str, Any], rows: list[int], n: int) -> dict[str, Any]:
    """The items ``rows`` of a batch of ``n``: its tensors and per-item lists sliced, the rest as is."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == n:
            out[key] = value[rows]
        elif isinstance(value, (list, tuple)) and len(value) == n:
            out[key] = [value[r] for r in rows]
        else:
            out[key] = value
    return out


def _pixel_mm(batch: Mapping[str, Any], n: int) -> list[float]:
    spacings = batch.get("spacing_mm")
    if spacings is None:
        raise MethodError("upete's Poisson process needs the slices' pixel spacing (the batch's 'spacing_mm')")
    return [float(np.mean([float(v) for v in s])) for s in spacings][:n]


def _kvp(batch: Mapping[str, Any], n: int) -> torch.Tensor:
    kvp = batch.get("kvp")
    return kvp.float() if isinstance(kvp, torch.Tensor) else torch.full((n,), 120.0)


def _dose_fractions(batch: Mapping[str, Any], n: int, option: float | None, default: float) -> list[float]:
    """Per item: the option, else the item's recorded dose fraction, else the config's default."""
    if option is not None:
        return [float(option)] * n
    recorded = batch.get("dose_fraction")
    if recorded is not None:
        values = [float(v) if v is not None else default for v in recorded]
        if all(0 < v <= 1 for v in values):
            return values
    return [float(default)] * n

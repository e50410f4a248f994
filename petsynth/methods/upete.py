"""``upete``: unsupervised low-dose PET enhancement trained on standard-dose PET only (Jiang et al., MICCAI 2023).

Training never sees a low-dose image. A standard-dose slice x0 (SUV) is degraded to x_t by the forward
process, both are brought into the diffusion space (the frozen ``vqgan`` latent, as ldm's, or the images in
network units with ``pixel_space``), and the denoiser learns to give back x0's latent from x_t's, at step t:
MSE on the x0 prediction. Forward processes (``process``):

- ``poisson`` (the paper's, :class:`petsynth.diffusion.PoissonDiffusion`): x_t is x0 re-acquired at dose
  fraction d(t) = min_dose^(t / (T - 1)), Poisson deviates on its attenuated projections (the attenuation from
  the slice's CT), FBP; degraded in image space, then encoded;
- ``gaussian`` (the paper's LDM ablation): DDPM noise on the latent of x0 (:class:`~petsynth.diffusion.GaussianDiffusion`);
  enhancing diffuses the low-dose latent to the entry step first (SDEdit).

CT guidance (``ct_guidance``, the paper's CT-guided cross-attention): the noisy latent and the CT (its latent,
or the image in pixel space) each pass a 3x3 convolution to ``guidance_channels`` features, then
:class:`~petsynth.nn.cross_attention.CTGuidedCrossAttention` mixes the PET features with weights from the CT
(windows of ``window``); the result is concatenated to the denoiser's input. The paper's Table 1 ablations are
configurations: LDM (gaussian, no CT), LDM-P (poisson), LDM-CT (gaussian + CT), LDM-P-CT (the default).

Enhancing a low-dose image (``translate``): its dose fraction f (the ``dose_fraction`` option, else the
item's ``dose_fraction``, else the config's) gives the entry step t* = ``timestep_for_dose(f)`` (:meth:`UPETe.entry_step`;
the same lambda mapping for the gaussian ablation). The low-dose slice is encoded
as x_{t*}, and ``steps`` network evaluations on an even grid from t* down to 0 (one: at t* alone) each
predict x0 and, but for the last, degrade that prediction again to the next step's level (cold diffusion's
plain sampler, Bansal et al. 2022); the last prediction is decoded.

3D (``spatial_dims: 3``): the same on volumes. Training takes slabs of ``slab_depth`` consecutive whole
slices (:mod:`petsynth.data.slabs`; each slice re-acquired by the Poisson process at the slab's dose), the
denoiser, stems and cross-attention are 3D, and the autoencoder a 3D ``vqgan`` (or pixel space). A study is
enhanced in windows of ``slab_depth`` slices, ``overlap`` apart, blended with Gaussian weights by MONAI's
sliding-window inference.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from petsynth.config import Config
from petsynth.data.batch import as_slices
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
    steps: int | None = Field(None, ge=1, description="network evaluations, from the entry step down to 0")
    dose_fraction: float | Literal["estimate"] | None = Field(
        None, description="the low-dose image's dose fraction in (0, 1], or 'estimate' (from its noise)")

    @field_validator("dose_fraction")
    @classmethod
    def _in_range(cls, value):
        if isinstance(value, float) and not 0 < value <= 1:
            raise ValueError(f"a dose fraction must be in (0, 1], got {value}")
        return value


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
    spatial_dims: Literal[2, 3] = Field(2, description="2: slices; 3: slabs of slab_depth slices (volumes)")
    slab_depth: int = Field(16, ge=1, description="3D: slices per training slab and per sliding window")
    overlap: float = Field(0.5, ge=0, lt=1, description="3D: overlap of successive windows (Gaussian-blended)")
    denoiser: DenoiserConfig = Field(default_factory=lambda: DenoiserConfig.preset("small"))
    sample_steps: int = Field(1, ge=1, description="default network evaluations of translate (README: 1 measured best)")
    dose_fraction: float | None = Field(None, gt=0, le=1,
                                        description="dose fraction assumed when nothing says it; None: estimated")
    transforms: dict[str, IntensityTransform] | None = Field(None, description="filled in from the autoencoder")


@register
class UPETe(LatentSpace, Method):
    name = "upete"
    summary = "low-dose PET enhancement trained on standard-dose PET only (Poisson diffusion, CT cross-attention)"
    tasks = ("lpet2spet",)
    config_class = UPETeConfig
    sampler_options_class = UPETeOptions
    default_lr = 1e-4
    trains_without_source = True

    def __init__(self, config: UPETeConfig, task: str = "lpet2spet", load_parts: bool = True):
        super().__init__(config, task)
        cz = self.latent_channels = self._build_space(config, load_parts)
        dims = config.spatial_dims
        if not config.pixel_space and config.autoencoder.spatial_dims != dims:
            raise MethodError(f"upete with spatial_dims {dims} needs a {dims}D autoencoder; "
                              f"{config.autoencoder_checkpoint} is {config.autoencoder.spatial_dims}D")
        extra = 0
        if config.ct_guidance:
            c, conv = config.guidance_channels, nn.Conv2d if dims == 2 else nn.Conv3d
            self.pet_stem = conv(cz, c, 3, padding=1)
            self.ct_stem = conv(cz, c, 3, padding=1)
            self.cross_attention = CTGuidedCrossAttention(c, c, num_heads=config.guidance_heads, window=config.window,
                                                          spatial_dims=dims)
            extra = c
        self.denoiser = build_denoiser(DenoiserConfig.model_validate(config.denoiser.model_copy(update={
            "in_channels": cz + extra, "out_channels": cz, "spatial_dims": dims}).model_dump()))
        self.gaussian = config.gaussian.process()
        self._poisson: dict[float, PoissonDiffusion] = {}

    @property
    def slab_depth(self) -> int | None:
        return self.config.slab_depth if self.config.spatial_dims == 3 else None

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
        """x_t in the diffusion space from x0 in SUV, (B, 1, H, W) or (B, 1, D, H, W), at steps ``t`` (B,)."""
        if self.config.process == "gaussian":
            z0 = self._to_space(x0_suv)
            noise = torch.randn(z0.shape, generator=generator, device=z0.device)
            return self.gaussian.q_sample(z0, t, noise)[0]
        return self._to_space(self._reacquire_images(x0_suv, t, batch, generator))

    def _reacquire_images(self, x0_suv: torch.Tensor, t: torch.Tensor, batch: Mapping[str, Any],
                          generator: torch.Generator | None = None) -> torch.Tensor:
        """The Poisson process on slices (B, 1, H, W) or slabs (B, 1, D, H, W) in SUV; each slice of a slab is
        re-acquired at its slab's dose (whole slices: exact). SUV back, the same shape."""
        if x0_suv.ndim == 4:
            return self._reacquire(x0_suv, t, batch, generator)
        b, depth = x0_suv.shape[0], x0_suv.shape[2]
        per_slice = {"guidance": None if batch.get("guidance") is None else as_slices(batch["guidance"]),
                     "kvp": _kvp(batch, b).repeat_interleave(depth),
                     "spacing_mm": [(s, s) for s in _pixel_mm(batch, b) for _ in range(depth)]}
        slices = self._reacquire(as_slices(x0_suv), t.repeat_interleave(depth), per_slice, generator)
        return slices.unflatten(0, (b, depth)).movedim(1, 2)

    def _reacquire(self, x0_suv: torch.Tensor, t: torch.Tensor, batch: Mapping[str, Any],
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """The Poisson forward process on slices (B, 1, H, W) in SUV, attenuated by their CT: SUV back."""
        mu = None
        if self.config.poisson.attenuation and batch.get("guidance") is not None:
            mu = hu_to_mu(batch["guidance"].float(), _kvp(batch, x0_suv.shape[0]).view(-1, 1, 1, 1))
        out = torch.empty_like(x0_suv, dtype=torch.float32)
        spacings = _pixel_mm(batch, x0_suv.shape[0])
        for pixel in sorted(set(spacings)):  # one process per pixel size (usually one)
            rows = [b for b, s in enumerate(spacings) if s == pixel]
            out[rows] = self._poisson_process(pixel).q_sample(
                x0_suv[rows].float(), t[rows], generator=generator, mu=None if mu is None else mu[rows])
        return out

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

    @torch.no_grad()
    def validation_pair(self, batch: Mapping[str, Any], **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(enhanced, standard-dose PET). A batch without low-dose images (a standard-dose-only dataset) gets
        one simulated: its standard-dose PET re-acquired by the Poisson process at the config's dose fraction
        (else 1/10), put in the batch as its "source" for the panels."""
        if batch.get("source") is None:
            fraction = self.config.dose_fraction or 0.1
            target = batch["target"].float()
            t = torch.full((target.shape[0],), self.entry_step(fraction), dtype=torch.long, device=target.device)
            batch["source"] = self._reacquire_images(target.clamp_min(0.0), t, batch)  # type: ignore[index]
            options = {**options, "dose_fraction": fraction}
        return self.translate(batch, **options), batch["target"]

    # --- enhancing ----------------------------------------------------------------------------------------------
    @functools.cached_property
    def _schedule(self) -> PoissonDiffusion:
        """The dose schedule d(t) (the Poisson process's; the gaussian ablation enters by the same mapping)."""
        return PoissonDiffusion(self.num_timesteps, self.config.poisson.min_dose)

    def entry_step(self, dose_fraction: float) -> int:
        """t* for a low-dose image of ``dose_fraction`` f: the step of dose f.

        x_t re-acquires the standard-dose image, itself a draw at dose 1, so its noise holds some of that
        image's too; but reprojected and reconstructed again (Hann window) only about a third of that variance
        survives, and x_{t(f)} is measured 3-7 % noisier than a direct draw at f for f in 1/10..2/5
        (``tests/test_upete.py``): f is the entry, uncorrected."""
        return self._schedule.timestep_for_dose(dose_fraction)

    def _dose_fractions(self, batch: Mapping[str, Any], option: float | str | None) -> list[float]:
        """Per item: the option, else the item's recorded dose fraction, else the config's, else (or with the
        option "estimate") estimated from the noise of the item's study's slices in the batch."""
        n = batch["source"].shape[0]
        if option is not None and option != "estimate":
            return [float(option)] * n
        recorded = batch.get("dose_fraction")
        if option is None and recorded is not None and all(v is not None and 0 < float(v) <= 1 for v in recorded):
            return [float(v) for v in recorded]
        if option is None and self.config.dose_fraction is not None:
            return [self.config.dose_fraction] * n
        studies = batch.get("study") or [None] * n
        fractions = [0.0] * n
        for study in dict.fromkeys(studies):
            rows = [b for b, s in enumerate(studies) if s == study]
            estimate = self.estimate_dose_fraction(_rows(batch, rows, n))
            for b in rows:
                fractions[b] = estimate
        return fractions

    def estimate_dose_fraction(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> float:
        """The dose fraction of the batch's low-dose "source" (slices of one study, or volumes) read off its
        noise by this model's Poisson process (:meth:`PoissonDiffusion.estimate_dose_fraction`), rounded to
        3 significant digits: the step at which the model's own x_t is as noisy. Its draws come from
        ``generator``, by default one seeded 0 (the same images give the same estimate)."""
        low = as_slices(batch["source"])
        ct = batch.get("guidance")
        per_slice = low.shape[0] // batch["source"].shape[0]
        mu = None
        if ct is not None and self.config.poisson.attenuation:
            kvp = _kvp(batch, batch["source"].shape[0]).repeat_interleave(per_slice)
            mu = hu_to_mu(as_slices(ct).float(), kvp.view(-1, 1, 1, 1))
        if low.shape[0] > 16:  # the slices of the middle half suffice
            keep = torch.linspace(low.shape[0] // 4, 3 * low.shape[0] // 4 - 1, 16).round().long()
            low, mu = low[keep], None if mu is None else mu[keep]
        process = self._poisson_process(_pixel_mm(batch, 1)[0])
        if generator is None:  # the same images, the same estimate
            generator = torch.Generator(device=low.device).manual_seed(0)
        try:
            fraction = process.estimate_dose_fraction(low, mu, generator)
        except ValueError as err:
            raise MethodError(f"upete cannot estimate the dose fraction ({err}): give it, "
                              "e.g. --sampler-option dose_fraction=0.1") from None
        return float(f"{fraction:.3g}")

    @torch.no_grad()
    def translate(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                  **options: Any) -> torch.Tensor:
        """The enhanced PET in SUV from the batch's low-dose "source": slices (B, 1, H, W), or volumes
        (B, 1, S, H, W) for a 3D model (windows of ``slab_depth`` slices, Gaussian-blended); module docstring."""
        opts = self.sampler_options(options)
        low = batch["source"]
        n = low.shape[0]
        fractions = self._dose_fractions(batch, opts.dose_fraction)
        steps = opts.steps or self.config.sample_steps
        enhance = self._enhance_volume if low.ndim == 5 else self._enhance
        out = torch.empty_like(low, dtype=torch.float32)
        for fraction in sorted(set(fractions)):  # items of one dose share their step grid
            rows = [b for b, f in enumerate(fractions) if f == fraction]
            out[rows] = enhance(_rows(batch, rows, n), fraction, steps, generator)
        return out

    def _enhance(self, batch: Mapping[str, Any], fraction: float, steps: int,
                 generator: torch.Generator | None) -> torch.Tensor:
        """Items of one dose fraction: enter at its step, ``steps`` steps of the cold-diffusion sampler, SUV.
        The Poisson process takes the low-dose image as x_{t*} as it is; the gaussian ablation first diffuses
        its latent to t* (sqrt(abar) z + sqrt(1 - abar) eps, as a DDPM's x_t is made, SDEdit's entry)."""
        ct = self._guidance(batch)
        z = self._to_space(batch["source"])
        # steps evaluations on an even grid: t* (and, with steps > 1, down to 0); one: x0 predicted from t* at once
        grid = np.unique(np.linspace(self.entry_step(fraction), 0, steps).round().astype(int))[::-1]
        if self.config.process == "gaussian":
            entry = torch.full((z.shape[0],), int(grid[0]), device=z.device, dtype=torch.long)
            noise = torch.randn(z.shape, generator=generator, device=z.device)
            z = self.gaussian.q_sample(z, entry, noise)[0]
        for i, s in enumerate(grid):
            t = torch.full((z.shape[0],), int(s), device=z.device, dtype=torch.long)
            z0_hat = self._predict_x0(z, t, ct).float()
            if i + 1 < len(grid):
                next_t = torch.full_like(t, int(grid[i + 1]))
                z = self._degrade(self._to_suv(z0_hat).clamp_min(0.0), next_t, batch, generator)
        return self._to_suv(z0_hat)

    def _enhance_volume(self, batch: Mapping[str, Any], fraction: float, steps: int,
                        generator: torch.Generator | None) -> torch.Tensor:
        """Volumes (B, 1, S, H, W) by windows of ``slab_depth`` whole slices, ``overlap`` apart, each enhanced by
        :meth:`_enhance` and blended with Gaussian weights (MONAI's sliding-window inference): no seams."""
        from monai.inferers import sliding_window_inference  # here: importing it costs every command a second

        out = []
        for b in range(batch["source"].shape[0]):
            item = _rows(batch, [b], batch["source"].shape[0])
            ct = item.get("guidance") if self.config.ct_guidance else None
            low = item["source"].float()
            stacked = low if ct is None else torch.cat([low, ct.float()], dim=1)  # windows cut both alike
            roi = (self.config.slab_depth, *stacked.shape[-2:])
            out.append(sliding_window_inference(
                stacked, roi, 1, functools.partial(self._enhance_window, item=item, fraction=fraction,
                                                   steps=steps, generator=generator),
                overlap=self.config.overlap, mode="gaussian", padding_mode="replicate"))
        return torch.cat(out)

    def _enhance_window(self, window: torch.Tensor, item: Mapping[str, Any], fraction: float, steps: int,
                        generator: torch.Generator | None) -> torch.Tensor:
        """One window (1, 1 or 2, depth, H, W) of a volume: its low-dose PET (and CT) enhanced."""
        parts = {"source": window[:, :1], "guidance": window[:, 1:] if window.shape[1] > 1 else None}
        return self._enhance({**item, **parts}, fraction, steps, generator)


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

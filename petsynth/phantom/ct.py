"""CT synthesis from a label volume: tissue CT numbers (with their kVp dependence), system blur and
correlated quantum noise whose level depends on the tube voltage.

kVp dependence of CT numbers. Soft tissues are close to water and keep their CT number across 80-140 kVp
here. Bone-like tissues (``Tissue.bone``) do not: their CT number rises as the tube voltage falls. The
phantom moves them so that the *same* tissue keeps the *same* 511 keV attenuation under the bilinear
scaling of Carney et al. (2006) (the table in :mod:`petsynth.physics.constants`):
``mu = a(120) (HU_120 + 1000) + b(120) = a(kVp) (HU_kVp + 1000) + b(kVp)``, solved for ``HU_kVp``
(a, b interpolated linearly in kVp between tabulated voltages). This gives, for cortical bone of 1000 HU at
120 kVp, about 1370 HU at 80 kVp and 920 HU at 140 kVp, the direction and size seen on scanners.

Iodine contrast (documented assumption). Iodine's K-edge (33 keV) lies below the CT spectrum, so its CT number
per mg/ml rises as the tube voltage falls, more steeply than water's. The phantom scales an enhancement given at
120 kVp as ``enh(kVp) = enh_120 * (120 / kVp) ** k`` with ``k = 1.25`` (:data:`IODINE_KVP_EXPONENT`): about
x1.66 at 80 kVp, x1.26 at 100 kVp and x0.82 at 140 kVp, the order of the ratios measured for iodine solutions
in phantoms (roughly 40-45, 26 and 21-22 HU per mg I/ml at 80, 120 and 140 kVp). At 511 keV iodine in these
concentrations (a few mg/ml) adds a negligible amount to mu (photoelectric absorption has vanished and its
Compton share is that of a few mg of matter per ml), so the attenuation map is computed from the unenhanced
CT numbers (see :func:`petsynth.phantom.torso.make_torso`); a scanner converting the enhanced CT with a
bilinear curve would read enhanced blood as bone-like and overestimate mu there.

Noise model (documented assumption). Quantum noise at a fixed dose (CTDIvol) grows as the tube voltage
falls. We use ``sd(kVp) = sd_120 * (120 / kVp) ** gamma`` with ``gamma = 1`` (about +50 % at 80 kVp and
-14 % at 140 kVp versus 120 kVp, the order reported for adult abdomens in studies of tube-potential
selection, e.g. Yu L et al. (2010) Med Phys 37:234); ``sd_120`` (HU, soft tissue) is drawn per study, and
tube-current modulation is assumed to keep it independent of body size. The noise is correlated like
filtered-back-projection CT noise: white Gaussian noise shaped in 2-D by a noise power spectrum
``NPS(f) ~ f * exp(-(f / f0)^2)`` (zero at DC, peak at ``f0 / sqrt(2)`` cycles/mm, ~0.25 for a soft kernel),
then scaled to the target standard deviation. The system blur is Gaussian, ~1.1 mm FWHM in-plane.
"""

from __future__ import annotations

import numpy as np
import torch

from petsynth.phantom import tissues as T
from petsynth.data.geometry import Geometry
from petsynth.physics import constants as C

#: Reference tube voltage of the tissue table.
REFERENCE_KVP: float = 120.0
#: Exponent of the noise-vs-kVp power law at fixed dose.
NOISE_KVP_GAMMA: float = 1.0
#: Exponent of the iodine enhancement-vs-kVp power law (enhancement ~ (120/kVp)^k).
IODINE_KVP_EXPONENT: float = 1.25
#: Range of the soft-tissue noise standard deviation at 120 kVp (HU) drawn per study (CT for attenuation
#: correction / low-dose diagnostic CT).
NOISE_SD_120_HU: tuple[float, float] = (10.0, 20.0)
#: In-plane system blur (FWHM, mm) of a soft reconstruction kernel.
CT_PSF_FWHM_MM: float = 1.1
#: Frequency parameter of the noise power spectrum, cycles/mm.
NPS_F0_PER_MM: float = 0.35
#: Stored CT range (12-bit with RescaleIntercept -1024).
HU_MIN, HU_MAX = -1024.0, 3071.0
#: Tube voltages the phantom picks from (the tabulated ones of Carney 2006).
KVP_CHOICES: tuple[int, ...] = tuple(sorted(C.CARNEY_2006_TABLE))


def _carney_ab(kvp: float) -> tuple[float, float]:
    ks = sorted(C.CARNEY_2006_TABLE)
    if not ks[0] <= kvp <= ks[-1]:
        raise ValueError(f"kVp {kvp} outside {ks[0]}..{ks[-1]}")
    a = np.interp(kvp, ks, [C.CARNEY_2006_TABLE[k][0] for k in ks])
    b = np.interp(kvp, ks, [C.CARNEY_2006_TABLE[k][1] for k in ks])
    return float(a), float(b)


def bone_hu_at_kvp(hu_120: float, kvp: float) -> float:
    """CT number at ``kvp`` of a bone-like tissue whose CT number at 120 kVp is ``hu_120`` (same 511 keV mu
    under Carney's bilinear scaling)."""
    a0, b0 = _carney_ab(REFERENCE_KVP)
    a, b = _carney_ab(kvp)
    mu = a0 * (hu_120 + 1000.0) + b0
    return (mu - b) / a - 1000.0


def noise_sd_at_kvp(sd_120: float, kvp: float, gamma: float = NOISE_KVP_GAMMA) -> float:
    """Noise standard deviation (HU) at ``kvp`` for the same dose as ``sd_120`` at 120 kVp."""
    return float(sd_120 * (REFERENCE_KVP / kvp) ** gamma)


def iodine_factor(kvp: float, exponent: float = IODINE_KVP_EXPONENT) -> float:
    """Iodine enhancement at ``kvp`` relative to 120 kVp: (120 / kVp) ** exponent (see the module docstring)."""
    return float((REFERENCE_KVP / kvp) ** exponent)


def hu_lut(values_120: dict[int, float], kvp: float) -> np.ndarray:
    """256-entry label -> HU table at ``kvp`` from per-label CT numbers at 120 kVp (bone ones moved with kVp).
    Labels absent from ``values_120`` map to air."""
    lut = np.full(256, C.HU_AIR, dtype=np.float32)
    for label, hu in values_120.items():
        tissue = T.TISSUES.get(label)
        lut[label] = bone_hu_at_kvp(hu, kvp) if (tissue is not None and tissue.bone) else hu
    return lut


def _nps_amplitude(ny: int, nx: int, pixel_mm: tuple[float, float], f0_per_mm: float) -> tuple[torch.Tensor, float]:
    """sqrt(NPS) on the rfft2 grid, and the standard deviation it gives to unit white noise."""
    def amp(fy, fx):
        f = torch.sqrt(fx ** 2 + fy ** 2)
        return torch.sqrt(f * torch.exp(-(f / f0_per_mm) ** 2))

    fy = torch.fft.fftfreq(ny, d=pixel_mm[0], dtype=torch.float64).view(-1, 1)
    full = amp(fy, torch.fft.fftfreq(nx, d=pixel_mm[1], dtype=torch.float64).view(1, -1))
    sd = float(torch.sqrt((full ** 2).mean()))  # Parseval: variance of irfft2(rfft2(white) * amp)
    half = amp(fy, torch.fft.rfftfreq(nx, d=pixel_mm[1], dtype=torch.float64).view(1, -1))
    return half.to(torch.float32), sd


def correlated_noise(shape: tuple[int, int, int], pixel_mm: tuple[float, float], generator: torch.Generator,
                     f0_per_mm: float = NPS_F0_PER_MM) -> np.ndarray:
    """Unit-variance noise (nz, ny, nx), each slice shaped by NPS(f) ~ f exp(-(f/f0)^2) (independent slices)."""
    nz, ny, nx = shape
    amp, sd = _nps_amplitude(ny, nx, pixel_mm, f0_per_mm)
    out = np.empty(shape, dtype=np.float32)
    for k0 in range(0, nz, 16):
        k1 = min(nz, k0 + 16)
        white = torch.randn((k1 - k0, ny, nx), generator=generator)
        out[k0:k1] = (torch.fft.irfft2(torch.fft.rfft2(white) * (amp / sd), s=(ny, nx))).numpy()
    return out


def synthesize_ct(labels: np.ndarray, geometry: Geometry, lut: np.ndarray, noise_sd_hu: float,
                  generator: torch.Generator, *, texture_hu: np.ndarray | None = None,
                  psf_fwhm_mm: float = CT_PSF_FWHM_MM, chunk_slices: int = 16) -> np.ndarray:
    """HU volume (float32) from labels: table look-up (+ optional additive ``texture_hu``), in-plane Gaussian
    system blur (``psf_fwhm_mm``), correlated noise of ``noise_sd_hu`` (see the module docstring), clipped to
    the stored range -1024..3071. Blur and noise are applied together per slice in the Fourier domain.
    (Labels are sampled at slice centres; the slice profile along z is not modelled.)"""
    nz, ny, nx = labels.shape
    _, dy, dx = geometry.spacing
    amp, sd = _nps_amplitude(ny, nx, (dy, dx), NPS_F0_PER_MM)
    fy = torch.fft.fftfreq(ny, d=dy).view(-1, 1)
    fx = torch.fft.rfftfreq(nx, d=dx).view(1, -1)
    sigma = psf_fwhm_mm / (2 * np.sqrt(2 * np.log(2)))
    mtf = torch.exp(-2 * np.pi ** 2 * sigma ** 2 * (fx ** 2 + fy ** 2)).to(torch.float32)
    noise_filter = amp * float(noise_sd_hu / sd)
    out = np.empty(labels.shape, dtype=np.float32)
    for k0 in range(0, nz, chunk_slices):
        k1 = min(nz, k0 + chunk_slices)
        hu = lut[labels[k0:k1]]
        if texture_hu is not None:
            hu += texture_hu[k0:k1]
        spec = torch.fft.rfft2(torch.from_numpy(hu)) * mtf
        if noise_sd_hu > 0:
            white = torch.randn((k1 - k0, ny, nx), generator=generator)
            spec += torch.fft.rfft2(white) * noise_filter
        out[k0:k1] = torch.fft.irfft2(spec, s=(ny, nx)).numpy()
    np.clip(out, HU_MIN, HU_MAX, out=out)
    return out


def lung_texture(labels: np.ndarray, geometry: Geometry, rng: np.random.Generator,
                 vessel_hu: float = 800.0, scale_mm: float = 6.0, radius_mm: float = 1.2) -> np.ndarray | None:
    """CT-only texture of the lungs: a network of bright vessel-like tubes (where two smooth random fields
    both cross zero) and gentle density variation. Returns an additive HU volume (zero outside the lungs),
    or None without lung. Not a label: PET sees lung as one tissue."""
    from scipy.ndimage import gaussian_filter

    lung = labels == T.LUNG.label
    if not lung.any():
        return None
    idx = np.nonzero(lung.any(axis=(1, 2)))[0]
    k0, k1 = idx[0], idx[-1] + 1
    idy = np.nonzero(lung[k0:k1].any(axis=(0, 2)))[0]
    idxx = np.nonzero(lung[k0:k1].any(axis=(0, 1)))[0]
    j0, j1, i0, i1 = idy[0], idy[-1] + 1, idxx[0], idxx[-1] + 1
    sub = lung[k0:k1, j0:j1, i0:i1]
    sig = [scale_mm / s for s in geometry.spacing]
    dist2 = np.zeros(sub.shape, dtype=np.float32)
    density = None
    for _ in range(2):
        field = gaussian_filter(rng.standard_normal(sub.shape).astype(np.float32), sig)
        field /= field.std() + 1e-12
        grad = np.sqrt(sum(g ** 2 for g in np.gradient(field, *geometry.spacing)))
        dist2 += (field / (grad + 1e-6)) ** 2  # ~ squared distance (mm^2) to the zero crossing
        density = field if density is None else density
    vessels = np.clip(1.0 - np.sqrt(dist2) / radius_mm, 0.0, 1.0) * vessel_hu
    tex = np.zeros(labels.shape, dtype=np.float32)
    tex[k0:k1, j0:j1, i0:i1] = np.where(sub, vessels + 20.0 * density, 0.0)
    return tex


def kvp_noise_table() -> dict[int, float]:
    """Relative noise at each tabulated kVp (1 at 120 kVp), for the docs."""
    return {k: round(noise_sd_at_kvp(1.0, k), 3) for k in KVP_CHOICES}


__all__ = ["bone_hu_at_kvp", "noise_sd_at_kvp", "iodine_factor", "hu_lut", "correlated_noise", "synthesize_ct",
           "lung_texture", "KVP_CHOICES", "NOISE_SD_120_HU", "REFERENCE_KVP", "IODINE_KVP_EXPONENT"]

"""MR physics of the brain phantom at several main-field strengths (B0): tissue T1, proton density, the
T1-weighted (MPRAGE-like) signal, and how the SNR and the B1 bias field change with B0.

The phantom draws one set of relative T1w values per subject (:mod:`.tissues`, ``t1w``, white matter = 1); those
are its **3 T** appearance. At another field ``B`` each brain tissue's relative value is multiplied by
:func:`contrast_factor` = ``[S_k(B) / S_WM(B)] / [S_k(3) / S_WM(3)]``, with ``S`` the signal equation below;
non-brain tissues (scalp fat, muscle, bone, marrow, ...) keep their drawn values (their T1 laws are not
modelled here).

Sources and model choices:

* **T1 of brain tissue** (seconds, B0 in tesla): power-law fits of Rooney WD, Johnson G, Li X, et al. (2007).
  Magnetic field and tissue dependencies of human brain longitudinal 1H2O relaxation in vivo.
  Magn Reson Med 57:308-318: white matter ``T1 = 0.583 * B0^0.382``, cortical grey matter
  ``T1 = 0.857 * B0^0.376``. CSF: about 4.3 s, independent of B0 (also Rooney et al. 2007). Deep grey matter
  (thalamus, basal ganglia) lies between white and cortical grey matter; the phantom uses the geometric mean
  of the two laws (a model choice, not a fit).
* **Proton density** (relative to CSF = 1): white matter 0.69, grey matter 0.80, CSF 1.0 -- typical literature
  values (the commonly quoted water contents of brain tissue), not one table of any single paper. Deep grey
  matter: the mean of white and grey matter (0.745, a model choice).
* **Signal**: a simplified MPRAGE / inversion-recovery magnitude ``S = PD * |1 - 2 exp(-TI/T1) + exp(-TR/T1)|``
  with one fixed protocol at every field, :data:`PROTOCOL` (the ADNI 3 T MPRAGE timing, TR 2300 ms, TI 900 ms).
  Scanners usually retune TI at each field (longer TI at 7 T) to keep the grey/white contrast; keeping it
  fixed isolates the effect of T1 lengthening (with this protocol the grey/white signal ratio falls as B0
  rises). Change :data:`PROTOCOL` to model another protocol.
* **SNR**: brain SNR grows about as ``B0^1.65`` (Pohmann R, Speck O, Scheffler K (2016). Signal-to-noise ratio
  and MR tissue parameters in human brain imaging at 3, 7, and 9.4 tesla using current receive coil arrays.
  Magn Reson Med 75:801-809). The Rician noise sd of a phantom is given as a fraction of the white-matter
  signal; the drawn fraction is the 3 T value, and at ``B`` it is
  ``sd(B) = sd(3) * (3/B)^1.65 * S_WM(3) / S_WM(B)`` (:func:`noise_sd_factor`): the SNR gain of the field,
  and the loss of white-matter signal of this protocol as T1 lengthens.
* **Bias field** (B1 inhomogeneity): the RF wavelength in tissue shortens about as ``1/B0``, so the transmit and
  receive fields get less uniform as B0 rises. The drawn bias amplitude is the 3 T one; at ``B`` it is scaled
  by ``B/3`` (:func:`bias_amplitude_factor`; a linear scaling is a model choice of the phantom).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Gyromagnetic ratio of 1H over 2 pi (MHz per tesla): the imaging frequency is ``GAMMA_MHZ_PER_T * B0``.
GAMMA_MHZ_PER_T: float = 42.577
#: Field strengths a phantom may be simulated at (tesla, inclusive).
FIELD_RANGE_T: tuple[float, float] = (0.5, 11.7)
#: The field the drawn per-subject T1w values, noise and bias amplitude stand for.
REFERENCE_FIELD_T: float = 3.0
#: SNR of brain imaging ~ B0^SNR_EXPONENT (Pohmann, Speck, Scheffler 2016).
SNR_EXPONENT: float = 1.65

#: Rooney et al. 2007 power laws, T1 = a * B0^b (a in seconds).
T1_LAW_WHITE_MATTER: tuple[float, float] = (0.583, 0.382)
T1_LAW_GREY_MATTER: tuple[float, float] = (0.857, 0.376)
#: CSF T1 (seconds), independent of B0.
T1_CSF_S: float = 4.3
#: Relative proton densities (typical literature values).
PD_WHITE_MATTER: float = 0.69
PD_GREY_MATTER: float = 0.80
PD_CSF: float = 1.0
PD_DEEP_GREY: float = (PD_WHITE_MATTER + PD_GREY_MATTER) / 2


@dataclass(frozen=True)
class Protocol:
    """An MPRAGE-like inversion-recovery protocol (times in ms) and the DICOM facts it writes."""

    name: str
    repetition_time_ms: float
    inversion_time_ms: float
    echo_time_ms: float = 2.98
    flip_angle_deg: float = 9.0


#: The protocol used at every field: the ADNI 3 T MPRAGE timing (TR 2300 ms, TI 900 ms).
PROTOCOL = Protocol("ADNI MPRAGE (3 T timing, kept at every field)", repetition_time_ms=2300.0,
                    inversion_time_ms=900.0)

#: Tissue classes of the signal model.
WHITE, GREY, DEEP_GREY, CSF = "white_matter", "grey_matter", "deep_grey_matter", "csf"


def check_field(field_t: float) -> float:
    """``field_t`` as a float, or ValueError when it lies outside :data:`FIELD_RANGE_T`."""
    b = float(field_t)
    lo, hi = FIELD_RANGE_T
    if not (lo <= b <= hi) or math.isnan(b):
        raise ValueError(f"field strength {field_t!r} T is outside the supported {lo:g}-{hi:g} T")
    return b


def t1_s(tissue: str, field_t: float) -> float:
    """T1 (seconds) of a tissue class (:data:`WHITE`, :data:`GREY`, :data:`DEEP_GREY`, :data:`CSF`) at ``field_t``."""
    b = check_field(field_t)
    if tissue == WHITE:
        a, e = T1_LAW_WHITE_MATTER
        return a * b ** e
    if tissue == GREY:
        a, e = T1_LAW_GREY_MATTER
        return a * b ** e
    if tissue == DEEP_GREY:
        return math.sqrt(t1_s(WHITE, b) * t1_s(GREY, b))
    if tissue == CSF:
        return T1_CSF_S
    raise ValueError(f"no T1 model for tissue class {tissue!r}")


def proton_density(tissue: str) -> float:
    return {WHITE: PD_WHITE_MATTER, GREY: PD_GREY_MATTER, DEEP_GREY: PD_DEEP_GREY, CSF: PD_CSF}[tissue]


def signal(tissue: str, field_t: float, protocol: Protocol = PROTOCOL) -> float:
    """``S = PD * |1 - 2 exp(-TI/T1) + exp(-TR/T1)|`` of a tissue class at ``field_t`` (arbitrary units)."""
    t1 = t1_s(tissue, field_t)
    ti = protocol.inversion_time_ms / 1000.0
    tr = protocol.repetition_time_ms / 1000.0
    return proton_density(tissue) * abs(1.0 - 2.0 * math.exp(-ti / t1) + math.exp(-tr / t1))


def contrast_factor(tissue: str, field_t: float, protocol: Protocol = PROTOCOL) -> float:
    """``[S_k(B) / S_WM(B)] / [S_k(3) / S_WM(3)]``: what a tissue's 3 T value relative to white matter is
    multiplied by at ``field_t``."""
    ref = REFERENCE_FIELD_T
    return (signal(tissue, field_t, protocol) / signal(WHITE, field_t, protocol)) / \
        (signal(tissue, ref, protocol) / signal(WHITE, ref, protocol))


def noise_sd_factor(field_t: float, protocol: Protocol = PROTOCOL) -> float:
    """Noise sd relative to white matter at ``field_t`` over its 3 T value:
    ``(3/B)^1.65 * S_WM(3) / S_WM(B)``."""
    b = check_field(field_t)
    ref = REFERENCE_FIELD_T
    return (ref / b) ** SNR_EXPONENT * signal(WHITE, ref, protocol) / signal(WHITE, b, protocol)


def bias_amplitude_factor(field_t: float) -> float:
    """Bias-field amplitude at ``field_t`` over its 3 T value: ``B/3``."""
    return check_field(field_t) / REFERENCE_FIELD_T


def imaging_frequency_mhz(field_t: float) -> float:
    """1H Larmor frequency (MHz) at ``field_t``."""
    return GAMMA_MHZ_PER_T * float(field_t)


def field_name(field_t: float) -> str:
    """'1.5T', '3T', '7T', '11.7T' (study-id suffix of a field)."""
    return f"{float(field_t):g}T"

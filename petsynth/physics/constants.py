"""Physical constants and published tables, each with its source. The one place for them.

Units: linear attenuation coefficients in cm^-1 at 511 keV; slopes in cm^-1 per HU; times in seconds.
"""

from __future__ import annotations

#: F-18 half-life in seconds (109.77 min; NIST / DDEP nuclear data tables).
F18_HALF_LIFE_S: float = 6586.2

#: Annihilation photon energy, keV.
ANNIHILATION_ENERGY_KEV: float = 511.0

#: HU of air as stored by CT scanners.
HU_AIR: float = -1000.0

#: Expected coincidence counts per ml of tissue at SUV 1 over a standard-dose acquisition, as petsynth models
#: it: the phantom simulator's count level (petsynth.phantom.pet) and uPETe's Poisson diffusion's dose 1.
#: Not a published constant: about 1e5 trues per 3-4 mm slice through an adult trunk, the order of a 2-3 min bed
#: of a clinical scanner (petsynth.phantom.pet's docstring).
STANDARD_COUNTS_PER_SUV_ML: float = 3000.0

# --- Bilinear HU -> mu at 511 keV ------------------------------------------------------------------
# Carney JPJ, Townsend DW, Rappoport V, Bendriem B (2006). Method for transforming CT images for
# attenuation correction in PET/CT imaging. Med Phys 33(4):976-983, Table 1.
# mu = 9.6e-5 * (HU + 1000)                 for HU <= BP
# mu = a * (HU + 1000) + b                  for HU >  BP
CARNEY_SOFT_TISSUE_SLOPE: float = 9.6e-5
#: kVp -> (a [cm^-1/HU], b [cm^-1], break point [HU])
CARNEY_2006_TABLE: dict[int, tuple[float, float, float]] = {
    80: (3.64e-5, 6.26e-2, 50.0),
    100: (4.43e-5, 5.44e-2, 52.0),
    110: (4.92e-5, 4.88e-2, 43.0),
    120: (5.10e-5, 4.71e-2, 47.0),
    130: (5.51e-5, 4.24e-2, 37.0),
    140: (5.64e-5, 4.08e-2, 30.0),
}

# --- Tri-linear HU -> mu at 511 keV ----------------------------------------------------------------
# Abella M, Alessio AM, Mankoff DA, et al. (2012). Accuracy of CT-based attenuation correction in PET/CT
# bone imaging. Phys Med Biol 57(9):2477-2490. The scaling CPDM cites.
# -1000..0 HU: mu = ABELLA_WATER_MU + ABELLA_LOW_SLOPE * HU  (0 at -1000 HU, water 0.093 cm^-1 at 0 HU)
# 0..1000 HU: slope ABELLA_MID_SLOPE[kVp]; above 1000 HU: slope ABELLA_HIGH_SLOPE[kVp]; continuous.
ABELLA_WATER_MU: float = 0.093
ABELLA_LOW_SLOPE: float = 9.3e-5
ABELLA_MID_SLOPE: dict[int, float] = {80: 3.28e-5, 100: 4.0e-5, 120: 4.71e-5, 140: 5.59e-5}
ABELLA_HIGH_SLOPE: dict[int, float] = {80: 0.41e-5, 100: 0.5e-5, 120: 0.589e-5, 140: 0.698e-5}
ABELLA_BONE_BREAK_HU: float = 1000.0

#: Range of tube voltages the tables cover (kVp); values outside are refused, values between are interpolated.
KVP_RANGE: tuple[float, float] = (80.0, 140.0)

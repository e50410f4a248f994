"""Scanner flavours (header style and grids) and size presets.

A *flavour* mimics the habits of a vendor's PET/CT or PET/MR output: Manufacturer string, PET matrix and
pixel size, slice spacing, CT reconstruction, file naming and instance order on disk. The model names say
plainly that these are phantoms. A *preset* scales the grids: ``default`` uses the flavour's clinical
matrices; ``small`` and ``tiny`` shrink them for demos and tests.

The PET emission is simulated on a square *simulation grid* of at most ``max_sim_size`` pixels over at most
``max_sim_fov_mm`` (the projector's cost grows as N^3 per slice); when the output PET grid is finer, the
reconstruction is resampled onto it (see :mod:`petsynth.phantom.pet`).
"""

from __future__ import annotations

from dataclasses import dataclass

from petsynth.physics.constants import F18_HALF_LIFE_S


@dataclass(frozen=True)
class Flavour:
    """Header style and grids of one vendor-like scanner."""

    key: str
    manufacturer: str
    model: str
    institution: str
    pet_size: int
    pet_pixel_mm: float
    pet_slice_mm: float
    ct_size: int
    ct_fov_mm: float
    ct_slice_mm: float
    mr_model: str
    instance_order: str          # "descending": InstanceNumber 1 is the most superior slice
    file_naming: str             # io.dicom.write_series file_naming
    file_prefix: str
    half_life_s: float
    pet_recon_name: str
    ct_kernel: str
    bed_length_mm: float         # axial step between bed positions
    bed_duration_s: float


FLAVOURS: dict[str, Flavour] = {
    "ge": Flavour("ge", "GE MEDICAL SYSTEMS", "petsynth phantom (GE-like Discovery)", "petsynth phantom site",
                  256, 700.0 / 256, 3.27, 512, 500.0, 3.75, "petsynth phantom (GE-like SIGNA PET/MR)",
                  "descending", "instance", "IM", 6588.0, "FBP (petsynth phantom)", "STANDARD", 157.0, 120.0),
    "siemens": Flavour("siemens", "SIEMENS", "petsynth phantom (Siemens-like Biograph)", "petsynth phantom site",
                       200, 4.0728, 3.0, 512, 500.0, 3.0, "petsynth phantom (Siemens-like Biograph mMR)",
                       "ascending", "uid", "", F18_HALF_LIFE_S, "FBP (petsynth phantom)", "B30f", 165.0, 120.0),
    "philips": Flavour("philips", "Philips Medical Systems", "petsynth phantom (Philips-like Vereos)",
                       "petsynth phantom site", 144, 4.0, 4.0, 512, 600.0, 5.0,
                       "petsynth phantom (Philips-like Ingenuity TF PET/MR)", "ascending", "shuffled", "",
                       F18_HALF_LIFE_S, "FBP (petsynth phantom)", "B", 180.0, 90.0),
}


@dataclass(frozen=True)
class Preset:
    """Grid scaling and simulation settings.

    ``pet_scale`` / ``ct_scale`` divide the flavour's matrix (same field of view, larger pixels);
    ``slice_scale`` multiplies slice spacings. ``body_range_mm`` is the covered part of the body
    (reference mm from the vertex, scaled by the subject's height); ``num_slices`` fixes the PET slice
    count instead (spacing = range / count). Brain grids are in ``mr_*`` / ``brain_pet_*``.
    """

    name: str
    pet_scale: float = 1.0
    ct_scale: float = 1.0
    slice_scale: float = 1.0
    body_range_mm: tuple[float, float] = (-15.0, 960.0)
    num_slices: int | None = None
    max_sim_size: int = 128
    max_sim_fov_mm: float = 600.0
    num_angles_per_pixel: float = 1.0
    mr_size: int = 256
    mr_pixel_mm: float = 1.0
    mr_slice_mm: float = 1.2
    brain_pet_size: int = 128
    brain_pet_pixel_mm: float = 2.0
    brain_pet_slice_mm: float = 2.0
    brain_num_slices: int | None = None
    lesions: tuple[int, int] = (1, 6)
    pet_sizes: dict[str, int] | None = None   # per-flavour PET matrix, overriding pet_scale
    pet_fov_mm: float | None = None           # PET field of view, overriding the flavour's
    ct_slice_mm: float | None = None          # CT slice spacing, overriding the flavour's


PRESETS: dict[str, Preset] = {
    "default": Preset("default"),
    "small": Preset("small", pet_scale=2.0, ct_scale=2.0, slice_scale=1.5, body_range_mm=(300.0, 900.0),
                    max_sim_size=128, mr_size=128, mr_pixel_mm=2.0, mr_slice_mm=2.0, brain_pet_size=64,
                    brain_pet_pixel_mm=4.0, brain_pet_slice_mm=4.0),
    "tiny": Preset("tiny", ct_scale=4.0, body_range_mm=(430.0, 590.0), num_slices=16,
                   pet_sizes={"ge": 64, "siemens": 60, "philips": 56}, pet_fov_mm=520.0, ct_slice_mm=5.0,
                   max_sim_size=64, mr_size=64, mr_pixel_mm=4.0, mr_slice_mm=4.0, brain_pet_size=48,
                   brain_pet_pixel_mm=5.0, brain_pet_slice_mm=5.0, brain_num_slices=16, lesions=(2, 4)),
}


def get_preset(name: str | Preset) -> Preset:
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def get_flavour(key: str | Flavour) -> Flavour:
    if isinstance(key, Flavour):
        return key
    try:
        return FLAVOURS[key]
    except KeyError:
        raise ValueError(f"unknown scanner flavour {key!r}; choose one of {sorted(FLAVOURS)}") from None


def scaled_grids(flavour: Flavour, preset: Preset) -> dict:
    """The flavour's PET/CT grids under ``preset`` (sizes rounded to even numbers)."""
    def even(n: float) -> int:
        return max(8, int(round(n / 2)) * 2)

    pet_fov = preset.pet_fov_mm or flavour.pet_size * flavour.pet_pixel_mm
    if preset.pet_sizes and flavour.key in preset.pet_sizes:
        pet_size = int(preset.pet_sizes[flavour.key])
    else:
        pet_size = even(flavour.pet_size / preset.pet_scale)
    ct_size = even(flavour.ct_size / preset.ct_scale)
    return {
        "pet_size": pet_size, "pet_pixel_mm": pet_fov / pet_size,
        "pet_slice_mm": flavour.pet_slice_mm * preset.slice_scale,
        "ct_size": ct_size, "ct_pixel_mm": flavour.ct_fov_mm / ct_size,
        "ct_slice_mm": preset.ct_slice_mm or flavour.ct_slice_mm * preset.slice_scale,
    }


__all__ = ["Flavour", "FLAVOURS", "Preset", "PRESETS", "get_preset", "get_flavour", "scaled_grids"]

"""Brain phantom for MRI -> PET (mr2pet): a PET/MR-like head study with a T1-weighted MRI and FDG PET.

Anatomy (labels on the MR grid, the fine grid here). Scalp (fat over muscle), skull (outer table, diploic
marrow, inner table), CSF space, cerebrum with a folded cortex, cerebellum, brainstem, lateral ventricles,
deep grey nuclei (thalamus, caudate, putamen), eyes with orbital fat. The cortex is made by folding: a
smooth random field (wavelength ~2 cm) defines sulcal sheets where it crosses zero; CSF fills the sulci
down to a sulcal depth; grey matter is the 2.8 mm ribbon under the brain surface and the walls of each
sulcus; white matter fills the rest of the cerebrum.

Images. T1w MRI (MPRAGE-like contrast WM > GM > CSF, see :mod:`tissues`): label signal, a small blur, a
smooth multiplicative bias field (low-order polynomial, up to about +-20 %), and Rician noise (magnitude of
complex Gaussian noise, sd ~2-3 % of white matter). PET: grey/white matter uptake ratio 2.8-4, optional
regional hypometabolism (a lobe-like sphere in one hemisphere, grey matter kept at 50-80 % of normal,
its own label, recorded in truth.json), MR-based attenuation from the labels (their CT numbers at
120 kVp through ``hu_to_mu``), and the emission simulation of :mod:`pet` with brain settings.
"""

from __future__ import annotations

import numpy as np

from petsynth.phantom import tissues as T
from petsynth.phantom.anatomy import Ellipsoid, Tube, paint, rotation
from petsynth.data.geometry import Geometry, gaussian_blur

#: Lobe centres (mm, relative to the cerebrum centre, x towards the hemisphere side, y posterior, z up)
#: for the hypometabolic region.
LOBES: dict[str, tuple[float, float, float]] = {
    "frontal": (30.0, -55.0, 20.0),
    "parietal": (35.0, 25.0, 40.0),
    "temporal": (55.0, -10.0, -20.0),
    "occipital": (25.0, 70.0, 5.0),
}
#: Probability that a brain phantom has a hypometabolic region.
HYPOMETABOLISM_PROBABILITY: float = 0.6
#: Counts per SUV.ml for a brain acquisition (a 10-15 min single bed, see pet.py for the definition).
BRAIN_COUNTS_PER_SUV_ML: float = 10000.0
#: Brain PET resolution (FWHM, mm) and post-filter of the default brain simulation.
BRAIN_RESOLUTION_FWHM_MM: float = 4.0
BRAIN_POSTFILTER_FWHM_MM: float = 2.0
#: T1w signal of white matter in stored units (12-bit range, like most MR scanners).
MR_WHITE_MATTER_SIGNAL: float = 800.0


def _smooth_field(shape, spacing, rng: np.random.Generator, scale_mm: float) -> np.ndarray:
    """Unit-variance Gaussian random field smoothed with a Gaussian of ``scale_mm`` sigma."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape).astype(np.float32), [scale_mm / s for s in spacing],
                        mode="wrap")
    return f / (f.std() + 1e-12)


def _sheet_distance(field: np.ndarray, spacing) -> np.ndarray:
    """Approximate distance (mm) to the zero crossing of a smooth field: |f| / |grad f|."""
    grads = np.gradient(field, *spacing)
    g = np.sqrt(sum(x * x for x in grads))
    return np.abs(field) / (g + 1e-6)


def brain_labels(geometry: Geometry, rng: np.random.Generator, center: np.ndarray, scale: float,
                 hypometabolism: dict | None) -> np.ndarray:
    """Label volume of the head on ``geometry`` (axis-aligned)."""
    s = scale
    c = np.asarray(center, dtype=np.float64)
    L = T
    head_r = np.array([76.0, 96.0, 115.0]) * s
    head_c = c + np.array([0.0, 5.0, -38.0]) * s
    cran_c = c + np.array([0.0, 2.0, -10.0]) * s
    cran_r = np.array([72.0, 92.0, 84.0]) * s
    shapes = [
        Ellipsoid(L.FAT.label, head_c, head_r),
        Ellipsoid(L.MUSCLE.label, head_c, head_r - 3.0),
    ]
    for shrink, tissue in ((4.0, L.CORTICAL_BONE), (6.0, L.MARROW), (8.5, L.CORTICAL_BONE), (10.5, L.CSF)):
        shapes.append(Ellipsoid(tissue.label, cran_c, cran_r - shrink))
    # orbits and eyes
    for side in (-1, 1):
        eye_c = c + np.array([side * 32.0, -74.0, -40.0]) * s
        shapes.append(Ellipsoid(L.FAT.label, eye_c + np.array([0, 10.0, 0]) * s, np.array([18.0, 22.0, 16.0]) * s))
        shapes.append(Ellipsoid(L.CSF.label, eye_c, np.full(3, 12.0 * s)))
    labels = paint(shapes, geometry)

    xs, ys, zs = geometry.axes()
    X = xs.astype(np.float32)[None, None, :]  # broadcast against (nz, ny, nx)
    Y = ys.astype(np.float32)[None, :, None]
    Z = zs.astype(np.float32)[:, None, None]
    # cerebrum: an ellipsoid about 2 mm inside the inner table on top
    cb_r = np.array([cran_r[0] - 12.5, cran_r[1] - 12.5, 60.0 * s])
    cb_c = c + np.array([0.0, 2.0, 0.0]) * s
    u, v, w = (X - cb_c[0]) / cb_r[0], (Y - cb_c[1]) / cb_r[1], (Z - cb_c[2]) / cb_r[2]
    r = np.sqrt(u * u + v * v + w * w)
    r_eff = float(3.0 / (1 / cb_r).sum())
    depth = (1.0 - r) * r_eff  # ~ mm below the cerebral surface
    cerebrum = r <= 1.0
    # cerebellum, posterior-inferior, below the tentorium
    cbl_c = c + np.array([0.0, 42.0, -50.0]) * s
    cbl_r = np.array([52.0, 34.0, 26.0]) * s
    cu = (X - cbl_c[0]) / cbl_r[0]
    cv = (Y - cbl_c[1]) / cbl_r[1]
    cw = (Z - cbl_c[2]) / cbl_r[2]
    cr = np.sqrt(cu * cu + cv * cv + cw * cw)
    cerebellum = (cr <= 1.0) & ~(r <= 1.04)
    # folding fields (same grid, physical scales)
    sp = geometry.spacing
    fold = _smooth_field(geometry.shape, sp, rng, scale_mm=3.5 * s)
    sulcus_dist = _sheet_distance(fold, sp)
    sulcal_depth = 22.0 + 6.0 * _smooth_field(geometry.shape, sp, rng, 12.0)
    sulcus = cerebrum & (depth < sulcal_depth) & (sulcus_dist < 0.8)
    midline = (np.abs(X - c[0]) < 1.2) & (Z > cb_c[2] - 0.05 * cb_r[2])
    fissure = cerebrum & midline
    gm = cerebrum & ((depth < 3.0) | ((depth < sulcal_depth + 3.0) & (sulcus_dist < 3.2)) |
                     (np.abs(X - c[0]) < 3.0) & (Z > cb_c[2] - 0.05 * cb_r[2]))
    labels[cerebrum] = L.WHITE_MATTER.label
    labels[gm] = L.GREY_MATTER.label
    labels[sulcus | fissure] = L.CSF.label
    # cerebellum: grey with fine folia and a white core
    folia = _sheet_distance(_smooth_field(geometry.shape, sp, rng, scale_mm=2.5 * s), sp)
    labels[cerebellum] = L.GREY_MATTER.label
    labels[cerebellum & (cr < 0.45)] = L.WHITE_MATTER.label
    labels[cerebellum & (cr > 0.5) & (folia < 0.5)] = L.CSF.label
    brain_any = cerebrum | cerebellum
    del u, v, w, cu, cv, cw, fold, sulcus_dist, folia, r, cr, depth, sulcal_depth, gm, sulcus, fissure
    # deep structures, ventricles, brainstem (analytic shapes painted over)
    deep = []
    for side in (-1, 1):
        deep.append(Ellipsoid(L.DEEP_GREY.label, c + np.array([side * 11.0, 8.0, -2.0]) * s,
                              np.array([9.0, 15.0, 9.0]) * s))                        # thalamus
        deep.append(Ellipsoid(L.DEEP_GREY.label, c + np.array([side * 25.0, -8.0, 0.0]) * s,
                              np.array([6.0, 16.0, 10.0]) * s, rot=rotation(side * 10)))   # putamen
        deep.append(Ellipsoid(L.DEEP_GREY.label, c + np.array([side * 13.0, -18.0, 10.0]) * s,
                              np.array([6.0, 9.0, 8.0]) * s))                         # caudate head
        vent = [c + np.array([side * 5.0, -28.0, 12.0]) * s, c + np.array([side * 9.0, 0.0, 18.0]) * s,
                c + np.array([side * 11.0, 28.0, 12.0]) * s, c + np.array([side * 20.0, 30.0, -10.0]) * s]
        deep.append(Tube(L.CSF.label, vent, np.array([5.0, 5.5, 6.0, 3.0]) * s))          # lateral ventricle
    deep.append(Ellipsoid(L.CSF.label, c + np.array([0.0, 5.0, 0.0]) * s, np.array([2.0, 12.0, 8.0]) * s))
    deep.append(Tube(L.WHITE_MATTER.label, [c + np.array([0.0, 12.0, -20.0]) * s,
                                            c + np.array([0.0, 22.0, -50.0]) * s,
                                            c + np.array([0.0, 28.0, -95.0]) * s], np.array([12, 11, 9]) * s))
    labels = _overpaint(labels, deep, geometry)
    # the cranial cavity away from the brain (skull base, below the temporal lobes): cancellous bone
    from scipy.ndimage import binary_dilation

    iters = max(1, int(round(3.5 / min(sp[1], sp[2]))))
    near_brain = binary_dilation(brain_any | (labels == L.WHITE_MATTER.label), iterations=iters)
    labels[(labels == L.CSF.label) & ~near_brain & (Z < cb_c[2])] = L.MARROW.label
    if hypometabolism is not None:
        hc = np.asarray(hypometabolism["center_mm"])
        rad = hypometabolism["radius_mm"]
        sphere = paint([Ellipsoid(1, hc, np.full(3, rad))], geometry).astype(bool)
        labels[sphere & (labels == L.GREY_MATTER.label)] = L.GM_HYPOMETABOLIC.label
    return labels


def _overpaint(labels: np.ndarray, shapes, geometry: Geometry) -> np.ndarray:
    """Paint ``shapes`` over an existing label volume (label 255 marks 'untouched')."""
    top = paint(shapes, geometry, background=255)
    return np.where(top == 255, labels, top).astype(np.uint8)


def t1w_mri(labels: np.ndarray, geometry: Geometry, values: dict[int, float], rng: np.random.Generator,
            noise_fraction: float, bias_amplitude: float) -> np.ndarray:
    """T1-weighted magnitude image (float32, stored units, white matter ~800)."""
    lut = np.zeros(256, dtype=np.float32)
    for lab, v in values.items():
        lut[lab] = v * MR_WHITE_MATTER_SIGNAL
    img = gaussian_blur(lut[labels], 1.0, geometry.spacing)
    nz, ny, nx = geometry.shape
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx),
                             indexing="ij")
    terms = [xx, yy, zz, xx * yy, yy * zz, xx * zz, xx * xx - 0.33, yy * yy - 0.33, zz * zz - 0.33]
    coef = rng.uniform(-1, 1, len(terms))
    bias = sum(cf * t for cf, t in zip(coef, terms))
    bias = np.exp(bias_amplitude * bias / (np.abs(bias).max() + 1e-9)).astype(np.float32)
    img *= bias
    sd = noise_fraction * MR_WHITE_MATTER_SIGNAL
    n1 = rng.standard_normal(img.shape, dtype=np.float32) * sd
    n2 = rng.standard_normal(img.shape, dtype=np.float32) * sd
    out = np.sqrt((img + n1) ** 2 + n2 ** 2)
    return np.clip(out, 0, 4095).astype(np.float32)


def make_brain(seed: int = 0, *, index: int = 0, preset="default", flavour: str | None = None, sim=None,
               hypometabolism: bool | None = None, study_id: str | None = None):
    """Simulate one PET/MR brain study in memory (task mr2pet).

    Returns a :class:`~petsynth.phantom.study.PhantomStudy` with images MR (T1w) and PT (SUV) and truth
    volumes labels / suv_truth / suv_truth_blurred / mu on the PET grid and labels_mr on the MR grid.
    ``hypometabolism``: force (True/False) the regional hypometabolism; None draws it (probability 0.6).
    """
    import torch

    from petsynth import __version__
    from petsynth.phantom.pet import PETSimConfig, area_resample, simulate_emission, simulation_grid
    from petsynth.phantom.presets import FLAVOURS, get_flavour, get_preset
    from petsynth.phantom.study import Image, PhantomStudy, sample_acquisition, study_id_for
    from petsynth.data.geometry import resample
    from petsynth.physics import hu_to_mu

    pre = get_preset(preset)
    sim = sim or PETSimConfig(resolution_fwhm_mm=BRAIN_RESOLUTION_FWHM_MM, counts_per_suv_ml=BRAIN_COUNTS_PER_SUV_ML,
                              postfilter_fwhm_mm=BRAIN_POSTFILTER_FWHM_MM)
    rng = np.random.default_rng([int(seed), int(index), 1])
    tgen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    flv = get_flavour(flavour) if flavour else FLAVOURS[sorted(FLAVOURS)[int(rng.integers(len(FLAVOURS)))]]
    scale = float(rng.uniform(0.92, 1.08))
    weight = float(np.round(rng.uniform(50, 100), 1))
    acq = sample_acquisition(rng, weight, flv, brain=True)
    center = np.array([rng.uniform(-8, 8), rng.uniform(-10, 10), rng.uniform(-10, 10)])

    # grids: the MR (fine, labels) and PET, sharing the frame of reference of a PET/MR scanner
    z_top = center[2] + 90.0 * scale
    if pre.brain_num_slices:
        n_pet = int(pre.brain_num_slices)
        dz = pre.brain_pet_slice_mm
        z_pet = center[2] + 10.0 + dz * (np.arange(n_pet) - (n_pet - 1) / 2)
    else:
        dz = pre.brain_pet_slice_mm
        n_pet = int(np.ceil(200.0 * scale / dz))
        z_pet = z_top - dz * np.arange(n_pet)[::-1]
    pet_geom = Geometry.axial((pre.brain_pet_size,) * 2, (pre.brain_pet_pixel_mm,) * 2, z_pet)
    lo, hi = z_pet[0] - dz / 2, z_pet[-1] + dz / 2
    n_mr = int(np.ceil((hi - lo) / pre.mr_slice_mm))
    z_mr = (lo + hi) / 2 + pre.mr_slice_mm * (np.arange(n_mr) - (n_mr - 1) / 2)
    mr_geom = Geometry.axial((pre.mr_size,) * 2, (pre.mr_pixel_mm,) * 2, z_mr)

    # tissue values
    hu120 = {t.label: float(rng.uniform(*t.hu)) for t in T.TISSUES.values()}
    suv = {t.label: float(rng.uniform(*t.suv)) for t in T.TISSUES.values()}
    t1 = {t.label: float(rng.uniform(*t.t1w)) for t in T.TISSUES.values()}
    hu120[T.AIR.label], suv[T.AIR.label], t1[T.AIR.label] = -1000.0, 0.0, 0.0
    ratio = float(rng.uniform(*T.GM_WM_RATIO))
    suv[T.WHITE_MATTER.label] = suv[T.GREY_MATTER.label] / ratio
    suv[T.DEEP_GREY.label] = suv[T.GREY_MATTER.label] * float(rng.uniform(0.85, 1.0))
    hypo = None
    if hypometabolism is None:
        hypometabolism = bool(rng.random() < HYPOMETABOLISM_PROBABILITY)
    if hypometabolism:
        lobe = str(rng.choice(sorted(LOBES)))
        side = int(rng.choice([-1, 1]))
        off = np.array(LOBES[lobe]) * np.array([side, 1.0, 1.0]) * scale
        frac = float(rng.uniform(*T.HYPOMETABOLISM_FRACTION))
        hypo = {"lobe": lobe, "hemisphere": "left" if side > 0 else "right",
                "center_mm": (center + off).round(2).tolist(), "radius_mm": round(float(rng.uniform(22, 32)), 2),
                "fraction_of_normal": round(frac, 4), "label": T.GM_HYPOMETABOLIC.label}
        suv[T.GM_HYPOMETABOLIC.label] = suv[T.GREY_MATTER.label] * frac
    else:
        suv[T.GM_HYPOMETABOLIC.label] = suv[T.GREY_MATTER.label]

    labels_mr = brain_labels(mr_geom, rng, center, scale, hypo)
    noise_fraction = float(rng.uniform(0.02, 0.035))
    bias_amp = float(rng.uniform(0.08, 0.2))
    mr = t1w_mri(labels_mr, mr_geom, t1, rng, noise_fraction, bias_amp)

    suv_lut = np.zeros(256, dtype=np.float32)
    hu_lut = np.full(256, -1000.0, dtype=np.float32)
    for lab in T.TISSUES:
        suv_lut[lab] = suv[lab]
        hu_lut[lab] = hu120[lab]
    suv_truth = area_resample(suv_lut[labels_mr], mr_geom, pet_geom)
    labels_pet = np.rint(resample(labels_mr.astype(np.float32), mr_geom, pet_geom, mode="nearest")).astype(np.uint8)
    mu_pet = hu_to_mu(area_resample(hu_lut[labels_mr], mr_geom, pet_geom, fill=-1000.0), 120.0)
    suv_blur = gaussian_blur(suv_truth, sim.resolution_fwhm_mm, pet_geom.spacing)
    sim_geom = simulation_grid(pet_geom, pre.max_sim_size, pre.max_sim_fov_mm)
    act = suv_blur if sim_geom == pet_geom else area_resample(suv_blur, pet_geom, sim_geom)
    mu_sim = mu_pet if sim_geom == pet_geom else area_resample(mu_pet, pet_geom, sim_geom)
    recon, stats = simulate_emission(act, mu_sim, sim_geom, [], sim, tgen)
    pet = recon[1.0] if sim_geom == pet_geom else np.maximum(area_resample(recon[1.0], sim_geom, pet_geom), 0)

    sid = study_id or study_id_for("mr2pet", int(seed), int(index))
    study = PhantomStudy(sid, "mr2pet", flv, acq)
    study.images["MR"] = Image("MR", mr, mr_geom, "T1w MPRAGE-like (phantom)")
    study.images["PT"] = Image("PT", pet.astype(np.float32), pet_geom, "PET brain AC (phantom)", 1.0)
    study.truth_images["labels"] = Image("LABEL", labels_pet, pet_geom, "tissue labels, PET grid")
    study.truth_images["suv_truth"] = Image("PT", suv_truth, pet_geom, "noise-free SUV before blur")
    study.truth_images["suv_truth_blurred"] = Image("PT", suv_blur, pet_geom, "noise-free SUV after blur")
    study.truth_images["mu"] = Image("MU", mu_pet.astype(np.float32), pet_geom, "mu 511 keV (cm-1)")
    study.truth_images["labels_mr"] = Image("LABEL", labels_mr, mr_geom, "tissue labels, MR grid")
    study.truth = {
        "software": {"name": "petsynth", "version": __version__, "generator": "petsynth.phantom.make_brain"},
        "study_id": sid, "task": "mr2pet", "seed": int(seed), "index": int(index), "preset": pre.name,
        "flavour": flv.key, "manufacturer": flv.manufacturer,
        "subject": {"weight_kg": weight, "head_scale": scale, "brain_center_mm": center.round(2).tolist()},
        "acquisition": acq.to_dict(),
        "mr": {"contrast": "T1w (MPRAGE-like)", "white_matter_signal": MR_WHITE_MATTER_SIGNAL,
               "rician_noise_sd_fraction_of_wm": noise_fraction, "bias_field_amplitude": bias_amp},
        "pet": {"sim": sim.to_dict(), "stats": stats, "dose_fractions": [1.0], "gm_wm_ratio": ratio,
                "attenuation": "mu from the label CT numbers at 120 kVp (MR-based AC with bone)",
                "suv_truth": "noise-free SUVbw on the PET grid: mean of the MR-grid truth over each PET voxel, "
                             "before the resolution blur",
                "suv_truth_blurred": f"suv_truth blurred by a 3-D Gaussian of FWHM {sim.resolution_fwhm_mm} mm"},
        "hypometabolism": hypo,
        "labels": [{"label": t.label, "name": t.name, "suv": round(suv[t.label], 5),
                    "hu_120kvp": round(hu120[t.label], 2), "t1w_relative": round(t1[t.label], 4)}
                   for t in T.TISSUES.values()],
        "lesion_label_base": T.LESION_BASE, "lesions": [],
    }
    return study

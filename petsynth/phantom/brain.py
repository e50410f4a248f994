"""Brain phantom for MRI -> PET (mr2pet): a PET/MR-like head study with a T1-weighted MRI and FDG PET.

Anatomy (labels on the MR grid, the fine grid here). Scalp (fat over muscle), skull (outer table, diploic
marrow, inner table), CSF space, cerebrum with a folded cortex, cerebellum, brainstem, lateral ventricles,
deep grey nuclei (thalamus, caudate, putamen), eyes with orbital fat. The cortex is made by folding: a
smooth random field (wavelength ~2 cm) defines sulcal sheets where it crosses zero; CSF fills the sulci
down to a sulcal depth; grey matter is the 2.8 mm ribbon under the brain surface and the walls of each
sulcus; white matter fills the rest of the cerebrum.

Images. T1w MRI (MPRAGE-like contrast WM > GM > CSF, see :mod:`tissues`): label signal, a small blur, a
smooth multiplicative bias field (low-order polynomial, up to about +-20 %), and Rician noise (magnitude of
complex Gaussian noise, sd ~2-3 % of white matter). These are the 3 T appearance; ``field_tesla`` /
:func:`make_brain_fields` give the same subject at other B0 (1.5-7 T and beyond), with the T1, SNR and bias
physics of :mod:`.mr_field`. PET: grey/white matter uptake ratio 2.8-4, cerebellar grey matter below the
cortex and the brainstem (labels of their own, for SUVR), optional regional hypometabolism (lobe-like spheres,
grey matter kept at 50-80 % of normal, its own label, recorded in truth.json; ``pattern`` picks healthy,
AD-like or one lobe), MR-based attenuation from the labels (their CT numbers at 120 kVp through ``hu_to_mu``),
and the emission simulation of :mod:`pet` with brain settings. ``pet_displacement`` moves the head in the PET
image (a separate PET visit in another frame of reference) to test registration.

Random streams (all seeded by (seed, index)): the main generator ``[seed, index, 1]`` draws everything the
phantom drew before fields, patterns and displacements existed, in the same order, so a default 3 T study is
unchanged; ``[seed, index, 2]`` draws the derived brain tissue values (cerebellum, brainstem);
``[seed, index, 3, round(10 B)]`` the MR noise at a field B other than 3 T; ``[seed, index, 4]`` the regions of
an explicit ``pattern``; ``[seed, index, 5]`` the PET displacement and visit gap.
"""

from __future__ import annotations

import numpy as np

from petsynth.phantom import tissues as T
from petsynth.phantom.anatomy import Ellipsoid, Tube, paint, rotation
from petsynth.data.geometry import Geometry, gaussian_blur
from petsynth.data.registration import RigidTransform

#: Lobe centres (mm, relative to the cerebrum centre, x towards the hemisphere side, y posterior, z up)
#: for the hypometabolic region.
LOBES: dict[str, tuple[float, float, float]] = {
    "frontal": (30.0, -55.0, 20.0),
    "parietal": (35.0, 25.0, 40.0),
    "temporal": (55.0, -10.0, -20.0),
    "occipital": (25.0, 70.0, 5.0),
}
#: Probability that a brain phantom has a hypometabolic region (``pattern=None``).
HYPOMETABOLISM_PROBABILITY: float = 0.6
#: Extra regions of the AD-like pattern (besides bilateral temporal and parietal): the posterior cingulate /
#: precuneus, on the midline (offset and radius range in mm, same frame as :data:`LOBES`).
POSTERIOR_CINGULATE: tuple[float, float, float] = (0.0, 35.0, 22.0)
POSTERIOR_CINGULATE_RADIUS_MM: tuple[float, float] = (12.0, 16.0)
#: Radius range (mm) of a lobe's hypometabolic sphere.
LOBE_RADIUS_MM: tuple[float, float] = (22.0, 32.0)
#: Hypometabolism patterns of ``make_brain(pattern=...)`` and the diagnosis each records.
PATTERNS: dict[str, str] = {"hc": "healthy control", "ad": "AD-like",
                            **{lobe: f"focal {lobe}" for lobe in LOBES}}
#: Cerebellar grey matter SUV over cortical grey matter, and brainstem SUV over white matter (uniform ranges).
CEREBELLAR_GREY_FRACTION: tuple[float, float] = (0.75, 0.9)
BRAINSTEM_OVER_WHITE: tuple[float, float] = (1.0, 1.3)
#: Limits of a random PET displacement (``pet_displacement="random"``): overall rotation angle and shift.
RANDOM_ROTATION_DEG: float = 10.0
RANDOM_TRANSLATION_MM: float = 20.0
#: Days between the MR and a displaced (separate-visit) PET: drawn uniformly from this inclusive range.
PET_VISIT_DAYS: tuple[int, int] = (1, 60)
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
                 hypometabolism: dict | list[dict] | None) -> np.ndarray:
    """Label volume of the head on ``geometry`` (axis-aligned).

    ``hypometabolism``: a region dict (``center_mm``, ``radius_mm``) or a list of them; cortical grey matter
    inside any becomes :data:`~tissues.GM_HYPOMETABOLIC`. The cerebellum's grey and white matter and the
    brainstem get their own labels (:data:`~tissues.CEREBELLAR_GREY`, ``CEREBELLAR_WHITE``, ``BRAINSTEM``)."""
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
    # orbits and eyes (painted again over the brain below, inside their bony walls)
    orbits = []
    for side in (-1, 1):
        eye_c = c + np.array([side * 32.0, -74.0, -40.0]) * s
        fat_c, fat_r = eye_c + np.array([0, 10.0, 0]) * s, np.array([18.0, 22.0, 16.0]) * s
        orbits += [Ellipsoid(L.CORTICAL_BONE.label, fat_c, fat_r + 2.5 * s),  # the orbital roof and walls
                   Ellipsoid(L.FAT.label, fat_c, fat_r), Ellipsoid(L.CSF.label, eye_c, np.full(3, 12.0 * s))]
    labels = paint(shapes + orbits[1::3] + orbits[2::3], geometry)

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
    # the cranial cavity less 2 mm of CSF under the inner table: neither cerebrum nor cerebellum reaches beyond it
    in_r = cran_r - 12.5
    iu, iv, iw = (X - cran_c[0]) / in_r[0], (Y - cran_c[1]) / in_r[1], (Z - cran_c[2]) / in_r[2]
    ri = np.sqrt(iu * iu + iv * iv + iw * iw)
    del iu, iv, iw
    # ~ mm below the cerebral surface (the nearer of the cerebrum's ellipsoid and the cavity's)
    depth = np.minimum((1.0 - r) * r_eff, (1.0 - ri) * float(3.0 / (1 / in_r).sum()))
    cerebrum = depth >= 0.0
    # cerebellum, posterior-inferior, below the tentorium
    cbl_c = c + np.array([0.0, 42.0, -50.0]) * s
    cbl_r = np.array([52.0, 34.0, 26.0]) * s
    cu = (X - cbl_c[0]) / cbl_r[0]
    cv = (Y - cbl_c[1]) / cbl_r[1]
    cw = (Z - cbl_c[2]) / cbl_r[2]
    cr = np.sqrt(cu * cu + cv * cv + cw * cw)
    cerebellum = (cr <= 1.0) & ~(r <= 1.04) & (ri <= 1.0)
    del ri
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
    labels[cerebellum] = L.CEREBELLAR_GREY.label
    labels[cerebellum & (cr < 0.45)] = L.CEREBELLAR_WHITE.label
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
    stem = [c + np.array([0.0, 12.0, -20.0]) * s, c + np.array([0.0, 22.0, -50.0]) * s,
            c + np.array([0.0, 28.0, -95.0]) * s]
    stem_r = np.array([12.0, 11.0, 9.0]) * s
    # below the cerebellum the cord runs in the spinal canal: CSF around it inside a bony ring (the foramen
    # magnum, the vertebrae), as in a real head; without it the brainstem would touch the neck muscles
    canal = [c + np.array([0.0, 24.0, -68.0]) * s, c + np.array([0.0, 28.0, -95.0]) * s,
             c + np.array([0.0, 30.0, -130.0]) * s]
    deep.append(Tube(L.CORTICAL_BONE.label, canal, np.array([16.0, 16.0, 16.0]) * s))
    deep.append(Tube(L.CSF.label, canal, np.array([12.5, 12.5, 12.5]) * s))
    for side in (-1, 1):  # the cerebellar peduncles: white matter joining the cerebellum to the brainstem
        deep.append(Tube(L.CEREBELLAR_WHITE.label, [c + np.array([side * 4.0, 22.0, -46.0]) * s,
                                                    c + np.array([side * 16.0, 40.0, -50.0]) * s],
                         np.array([5.0, 5.0]) * s))
    deep.append(Tube(L.BRAINSTEM.label, stem, stem_r))
    deep += orbits  # the orbits lie under the frontal lobes, behind bone (the orbital roof)
    labels = _overpaint(labels, deep, geometry)
    # the cranial cavity away from the brain (skull base, below the temporal lobes): dense bone (petrous bone,
    # clivus), so that, as in a head, the brain is enclosed by CSF and bone
    from scipy.ndimage import binary_dilation

    iters = max(1, int(round(3.5 / min(sp[1], sp[2]))))
    white = np.isin(labels, (L.WHITE_MATTER.label, L.CEREBELLAR_WHITE.label, L.BRAINSTEM.label))
    near_brain = binary_dilation(brain_any | white, iterations=iters)
    cu, cv, cw = (X - cran_c[0]) / (cran_r[0] - 10.5), (Y - cran_c[1]) / (cran_r[1] - 10.5), \
        (Z - cran_c[2]) / (cran_r[2] - 10.5)
    in_cranium = cu * cu + cv * cv + cw * cw <= 1.0  # not the eyes, not the spinal canal
    labels[(labels == L.CSF.label) & ~near_brain & in_cranium & (Z < cb_c[2])] = L.CORTICAL_BONE.label
    regions = [hypometabolism] if isinstance(hypometabolism, dict) else list(hypometabolism or [])
    if regions:
        sphere = paint([Ellipsoid(1, np.asarray(r["center_mm"]), np.full(3, r["radius_mm"])) for r in regions],
                       geometry).astype(bool)
        labels[sphere & (labels == L.GREY_MATTER.label)] = L.GM_HYPOMETABOLIC.label
    return labels


def _overpaint(labels: np.ndarray, shapes, geometry: Geometry) -> np.ndarray:
    """Paint ``shapes`` over an existing label volume (label 255 marks 'untouched')."""
    top = paint(shapes, geometry, background=255)
    return np.where(top == 255, labels, top).astype(np.uint8)


def t1w_mri(labels: np.ndarray, geometry: Geometry, values: dict[int, float], rng: np.random.Generator,
            noise_fraction: float, bias_amplitude: float, coef: np.ndarray | None = None) -> np.ndarray:
    """T1-weighted magnitude image (float32, stored units, white matter ~800).

    ``coef``: the 9 bias-field polynomial coefficients (the field's shape); None draws them from ``rng``
    first. The Rician noise is drawn from ``rng``."""
    lut = np.zeros(256, dtype=np.float32)
    for lab, v in values.items():
        lut[lab] = v * MR_WHITE_MATTER_SIGNAL
    img = gaussian_blur(lut[labels], 1.0, geometry.spacing)
    nz, ny, nx = geometry.shape
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx),
                             indexing="ij")
    terms = [xx, yy, zz, xx * yy, yy * zz, xx * zz, xx * xx - 0.33, yy * yy - 0.33, zz * zz - 0.33]
    if coef is None:
        coef = bias_coefficients(rng)
    bias = sum(cf * t for cf, t in zip(coef, terms))
    bias = np.exp(bias_amplitude * bias / (np.abs(bias).max() + 1e-9)).astype(np.float32)
    img *= bias
    sd = noise_fraction * MR_WHITE_MATTER_SIGNAL
    n1 = rng.standard_normal(img.shape, dtype=np.float32) * sd
    n2 = rng.standard_normal(img.shape, dtype=np.float32) * sd
    out = np.sqrt((img + n1) ** 2 + n2 ** 2)
    return np.clip(out, 0, 4095).astype(np.float32)


def bias_coefficients(rng: np.random.Generator) -> np.ndarray:
    """The 9 coefficients (uniform in [-1, 1]) of the bias-field polynomial of :func:`t1w_mri`."""
    return rng.uniform(-1, 1, 9)


def _rotation_matrix(rotation_deg) -> np.ndarray:
    """R = Rz @ Ry @ Rx for angles (rx, ry, rz) in degrees about the LPS x, y, z axes (x applied first)."""
    rx, ry, rz = np.deg2rad(np.asarray(rotation_deg, dtype=np.float64))
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def pet_frame_matrix(rotation_deg, translation_mm, center_mm) -> np.ndarray:
    """4x4 map of a point p in the MR's world frame (LPS mm) to the same anatomical point q in the PET's world
    frame: ``q = R (p - c) + c + t`` with R = :func:`_rotation_matrix` (``rotation_deg``), c = ``center_mm``,
    t = ``translation_mm`` (:meth:`~petsynth.data.registration.RigidTransform.about`)."""
    return RigidTransform.about(_rotation_matrix(rotation_deg), translation_mm, center_mm).matrix


def _draw_displacement(gen: np.random.Generator) -> tuple[list[float], list[float]]:
    """Random rotation (each angle uniform in +-10 deg, overall angle <= 10 deg) and shift (<= 20 mm)."""
    lim_r, lim_t = RANDOM_ROTATION_DEG, RANDOM_TRANSLATION_MM
    while True:
        rot = gen.uniform(-lim_r, lim_r, 3)
        if RigidTransform.about(_rotation_matrix(rot)).rotation_deg <= lim_r:
            break
    while True:
        shift = gen.uniform(-lim_t, lim_t, 3)
        if np.linalg.norm(shift) <= lim_t:
            break
    return [round(float(v), 4) for v in rot], [round(float(v), 4) for v in shift]


def _pattern_regions(pattern: str, gen: np.random.Generator, center: np.ndarray, scale: float,
                     frac: float) -> list[dict]:
    """Hypometabolic regions of an explicit ``pattern`` (see :data:`PATTERNS`)."""
    def region(lobe: str, side: int, offset, radius_range) -> dict:
        off = np.asarray(offset, dtype=np.float64) * np.array([side if side else 1, 1.0, 1.0]) * scale
        hemi = "midline" if side == 0 else ("left" if side > 0 else "right")
        return {"lobe": lobe, "hemisphere": hemi, "center_mm": (center + off).round(2).tolist(),
                "radius_mm": round(float(gen.uniform(*radius_range)), 2), "fraction_of_normal": round(frac, 4),
                "label": T.GM_HYPOMETABOLIC.label}

    if pattern == "hc":
        return []
    if pattern == "ad":
        out = [region(lobe, side, LOBES[lobe], LOBE_RADIUS_MM) for lobe in ("temporal", "parietal")
               for side in (1, -1)]
        out.append(region("posterior_cingulate", 0, POSTERIOR_CINGULATE, POSTERIOR_CINGULATE_RADIUS_MM))
        return out
    side = int(gen.choice([-1, 1]))
    return [region(pattern, side, LOBES[pattern], LOBE_RADIUS_MM)]


def _diagnosis(regions: list[dict], pattern: str | None) -> str:
    if pattern is not None:
        return PATTERNS[pattern]
    return f"focal {regions[0]['lobe']}" if regions else PATTERNS["hc"]


def _check_displacement(pet_displacement) -> None:
    if pet_displacement is None or pet_displacement == "random":
        return
    if not isinstance(pet_displacement, dict) or not set(pet_displacement) <= {"rotation_deg", "translation_mm",
                                                                              "center_mm"}:
        raise ValueError("pet_displacement must be None, 'random' or a dict with rotation_deg (rx, ry, rz), "
                         f"translation_mm (tx, ty, tz) and optionally center_mm; got {pet_displacement!r}")
    for key in pet_displacement:
        if np.asarray(pet_displacement[key], dtype=np.float64).shape != (3,):
            raise ValueError(f"pet_displacement[{key!r}] must be three numbers, got {pet_displacement[key]!r}")


def make_brain_fields(seed: int, index: int = 0, fields=(1.5, 3.0, 5.0, 7.0), **kw) -> list:
    """The same subject's T1w MR at each B0 of ``fields`` (tesla) with one PET and one truth.

    Anatomy and PET are simulated once; returns one :class:`~petsynth.phantom.study.PhantomStudy` per field,
    in the order given, named ``<study_id>-<f>T`` (``mr2pet-s7-0000-1.5T``; ``study_id`` defaults to the
    usual ``<task>-s<seed>-<index:04d>``, recorded as the studies' ``patient_id``). They share the PET image
    and every truth volume (the same objects); only the MR image and the truth record's ``mr`` part (and the
    ``t1w_relative`` of each label row) differ. ``kw``: the other arguments of :func:`make_brain`. The 3 T study's
    arrays equal ``make_brain(seed, index=index, **kw)``'s bit for bit.
    """
    return _simulate_brain(seed, index, fields, suffix=True, **kw)


def make_brain(seed: int = 0, *, index: int = 0, preset="default", flavour: str | None = None, sim=None,
               hypometabolism: bool | None = None, study_id: str | None = None, field_tesla: float = 3.0,
               pattern: str | None = None, pet_displacement: dict | str | None = None):
    """Simulate one PET/MR brain study in memory (task mr2pet).

    Returns a :class:`~petsynth.phantom.study.PhantomStudy` with images MR (T1w) and PT (SUV) and truth
    volumes labels / suv_truth / suv_truth_blurred / mu on the PET grid and labels_mr on the MR grid.
    ``hypometabolism``: force (True/False) one random lobe's hypometabolism; None draws it (probability 0.6).
    ``field_tesla``: B0 of the MR (0.5-11.7 T; 3 T is the drawn appearance, see :mod:`.mr_field`).
    ``pattern``: None (the default draw above), "hc" (none), "ad" (bilateral temporal and parietal plus the
    posterior cingulate) or one lobe ("frontal", "parietal", "temporal", "occipital"; random hemisphere); an
    explicit pattern leaves the subject's anatomy and MR noise as with ``pattern=None``.
    ``pet_displacement``: None, "random" (rotation <= 10 deg, shift <= 20 mm) or
    ``{"rotation_deg": (rx, ry, rz), "translation_mm": (tx, ty, tz)[, "center_mm": (x, y, z)]}``: the head is
    moved in the PET image (only ``images["PT"]``), as at a separate PET visit in another frame of reference;
    truth.json ``pet_frame`` records the map (the truth volumes stay in the MR's frame).
    """
    return _simulate_brain(seed, index, (field_tesla,), suffix=False, preset=preset, flavour=flavour, sim=sim,
                           hypometabolism=hypometabolism, study_id=study_id, pattern=pattern,
                           pet_displacement=pet_displacement)[0]


def _simulate_brain(seed: int, index: int, fields, *, suffix: bool, preset="default", flavour: str | None = None,
                    sim=None, hypometabolism: bool | None = None, study_id: str | None = None,
                    pattern: str | None = None, pet_displacement: dict | str | None = None) -> list:
    """One subject's anatomy and PET, and one study per field (see :func:`make_brain`)."""
    import torch

    from petsynth.phantom import mr_field as MF

    from petsynth import __version__
    from petsynth.phantom.pet import PETSimConfig, area_resample, simulate_emission, simulation_grid
    from petsynth.phantom.presets import FLAVOURS, get_flavour, get_preset
    from petsynth.phantom.study import Image, PhantomStudy, sample_acquisition, study_id_for
    from petsynth.data.geometry import resample, resample_affine
    from petsynth.physics import hu_to_mu

    fields = [MF.check_field(f) for f in fields]
    if not fields or len(set(fields)) != len(fields):
        raise ValueError(f"fields must be distinct field strengths, got {fields}")
    if pattern is not None and pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; choose one of {', '.join(PATTERNS)} (or None)")
    if pattern is not None and hypometabolism is not None:
        raise ValueError("give pattern or hypometabolism, not both")
    _check_displacement(pet_displacement)
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
    # tissue values (main stream: the drawn tissues only, in the order of the table without the derived ones)
    drawn = T.drawn_tissues()
    hu120 = {t.label: float(rng.uniform(*t.hu)) for t in drawn}
    suv = {t.label: float(rng.uniform(*t.suv)) for t in drawn}
    t1 = {t.label: float(rng.uniform(*t.t1w)) for t in drawn}
    hu120[T.AIR.label], suv[T.AIR.label], t1[T.AIR.label] = -1000.0, 0.0, 0.0
    ratio = float(rng.uniform(*T.GM_WM_RATIO))
    suv[T.WHITE_MATTER.label] = suv[T.GREY_MATTER.label] / ratio
    suv[T.DEEP_GREY.label] = suv[T.GREY_MATTER.label] * float(rng.uniform(0.85, 1.0))
    # derived brain tissues (their own stream): CT number and T1w of grey / white matter
    aux = np.random.default_rng([int(seed), int(index), 2])
    for derived, like in ((T.CEREBELLAR_GREY, T.GREY_MATTER), (T.CEREBELLAR_WHITE, T.WHITE_MATTER),
                          (T.BRAINSTEM, T.WHITE_MATTER)):
        hu120[derived.label], t1[derived.label] = hu120[like.label], t1[like.label]
    cbl_fraction = float(aux.uniform(*CEREBELLAR_GREY_FRACTION))
    stem_ratio = float(aux.uniform(*BRAINSTEM_OVER_WHITE))
    suv[T.CEREBELLAR_GREY.label] = suv[T.GREY_MATTER.label] * cbl_fraction
    suv[T.CEREBELLAR_WHITE.label] = suv[T.WHITE_MATTER.label]
    suv[T.BRAINSTEM.label] = suv[T.WHITE_MATTER.label] * stem_ratio
    # hypometabolism: the default draw always runs on the main stream (an explicit pattern discards it and
    # draws its regions from its own stream, so the subject's anatomy does not depend on the pattern)
    regions: list[dict] = []
    frac = 1.0
    if hypometabolism is None:
        hypometabolism = bool(rng.random() < HYPOMETABOLISM_PROBABILITY)
    if hypometabolism:
        lobe = str(rng.choice(sorted(LOBES)))
        side = int(rng.choice([-1, 1]))
        off = np.array(LOBES[lobe]) * np.array([side, 1.0, 1.0]) * scale
        frac = float(rng.uniform(*T.HYPOMETABOLISM_FRACTION))
        regions = [{"lobe": lobe, "hemisphere": "left" if side > 0 else "right",
                    "center_mm": (center + off).round(2).tolist(), "radius_mm": round(float(rng.uniform(22, 32)), 2),
                    "fraction_of_normal": round(frac, 4), "label": T.GM_HYPOMETABOLIC.label}]
    if pattern is not None:
        pgen = np.random.default_rng([int(seed), int(index), 4])
        frac = float(pgen.uniform(*T.HYPOMETABOLISM_FRACTION))
        regions = _pattern_regions(pattern, pgen, center, scale, frac)
    suv[T.GM_HYPOMETABOLIC.label] = suv[T.GREY_MATTER.label] * (frac if regions else 1.0)

    labels_mr = brain_labels(mr_geom, rng, center, scale, regions)
    noise_fraction = float(rng.uniform(0.02, 0.035))
    bias_amp = float(rng.uniform(0.08, 0.2))
    coef = bias_coefficients(rng)
    mr_images = {}
    for b in fields:
        if b == MF.REFERENCE_FIELD_T:  # the drawn appearance, noise from the main stream (as always)
            mr_images[b] = (t1, noise_fraction, bias_amp,
                            t1w_mri(labels_mr, mr_geom, t1, rng, noise_fraction, bias_amp, coef=coef))
            continue
        values = dict(t1)
        for lab, cls in _MR_CLASS.items():
            values[lab] = t1[lab] * MF.contrast_factor(cls, b)
        nf = noise_fraction * MF.noise_sd_factor(b)
        ba = bias_amp * MF.bias_amplitude_factor(b)
        noise_rng = np.random.default_rng([int(seed), int(index), 3, int(round(b * 10))])
        mr_images[b] = (values, nf, ba, t1w_mri(labels_mr, mr_geom, values, noise_rng, nf, ba, coef=coef))

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
    pet = pet.astype(np.float32)

    pet_frame, visit_days = None, 0
    if pet_displacement is not None:
        dgen = np.random.default_rng([int(seed), int(index), 5])
        if pet_displacement == "random":
            rot, shift = _draw_displacement(dgen)
            pivot = center
        else:
            rot = [float(v) for v in pet_displacement.get("rotation_deg", (0.0, 0.0, 0.0))]
            shift = [float(v) for v in pet_displacement.get("translation_mm", (0.0, 0.0, 0.0))]
            pivot = np.asarray(pet_displacement.get("center_mm", center), dtype=np.float64)
        visit_days = int(dgen.integers(PET_VISIT_DAYS[0], PET_VISIT_DAYS[1] + 1))
        pivot = np.asarray(pivot, dtype=np.float64).round(4)  # as recorded, so the record reproduces the matrix
        m = pet_frame_matrix(rot, shift, pivot)
        # PET_displaced(q) = PET(M^-1 q): sample the PET, its voxels placed at M @ affine, on its own grid
        pet = np.maximum(resample_affine(pet, m @ pet_geom.affine, pet_geom, mode="bilinear", fill=0.0), 0)
        pet_frame = {"matrix": m.round(9).tolist(), "rotation_deg": list(rot), "translation_mm": list(shift),
                     "center_mm": pivot.tolist(),
                     "rotation_angle_deg": round(RigidTransform(m).rotation_deg, 4),
                     "convention": "q = matrix @ [p, 1]: p a point in the MR's world frame (LPS mm), q the same "
                                   "anatomical point in the PET's world frame; matrix = [R, c + t - R c], "
                                   "R = Rz Ry Rx (rotation_deg about the LPS x, y, z axes, x first), "
                                   "c = center_mm, t = translation_mm. PET image(q) = undisplaced PET(matrix^-1 q); "
                                   "the PET keeps its grid; truth volumes stay in the MR's frame."}

    base_id = study_id or study_id_for("mr2pet", int(seed), int(index))
    images_pt = Image("PT", pet, pet_geom, "PET brain AC (phantom)", 1.0)
    truth_images = {
        "labels": Image("LABEL", labels_pet, pet_geom, "tissue labels, PET grid"),
        "suv_truth": Image("PT", suv_truth, pet_geom, "noise-free SUV before blur"),
        "suv_truth_blurred": Image("PT", suv_blur, pet_geom, "noise-free SUV after blur"),
        "mu": Image("MU", mu_pet.astype(np.float32), pet_geom, "mu 511 keV (cm-1)"),
        "labels_mr": Image("LABEL", labels_mr, mr_geom, "tissue labels, MR grid"),
    }
    studies = []
    for b in fields:
        values, nf, ba, mr = mr_images[b]
        sid = f"{base_id}-{MF.field_name(b)}" if suffix else base_id
        study = PhantomStudy(sid, "mr2pet", flv, acq)
        study.images["MR"] = Image("MR", mr, mr_geom, f"T1w MPRAGE-like {MF.field_name(b)} (phantom)"
                                   if b != MF.REFERENCE_FIELD_T else "T1w MPRAGE-like (phantom)")
        study.images["PT"] = images_pt
        study.truth_images = dict(truth_images)
        study.truth = _brain_truth(sid, base_id, seed, index, pre, flv, weight, scale, center, acq, sim, stats,
                                   ratio, regions, pattern, suv, hu120, values, b, nf, ba, noise_fraction,
                                   bias_amp, cbl_fraction, stem_ratio, pet_frame, visit_days, __version__)
        studies.append(study)
    return studies


#: MR signal class of each brain label (the labels whose T1w value follows B0, :mod:`.mr_field`).
_MR_CLASS: dict[int, str] = {
    T.WHITE_MATTER.label: "white_matter", T.CEREBELLAR_WHITE.label: "white_matter",
    T.BRAINSTEM.label: "white_matter", T.GREY_MATTER.label: "grey_matter",
    T.GM_HYPOMETABOLIC.label: "grey_matter", T.CEREBELLAR_GREY.label: "grey_matter",
    T.DEEP_GREY.label: "deep_grey_matter", T.CSF.label: "csf",
}


def _brain_truth(sid, base_id, seed, index, pre, flv, weight, scale, center, acq, sim, stats, ratio, regions,
                 pattern, suv, hu120, t1, field_t, noise_fraction, bias_amp, noise_3t, bias_3t, cbl_fraction,
                 stem_ratio, pet_frame, visit_days, version) -> dict:
    import copy

    from petsynth.phantom import mr_field as MF

    proto = MF.PROTOCOL
    return {
        "software": {"name": "petsynth", "version": version, "generator": "petsynth.phantom.make_brain"},
        "study_id": sid, "patient_id": base_id, "task": "mr2pet", "seed": int(seed), "index": int(index),
        "preset": pre.name, "flavour": flv.key, "manufacturer": flv.manufacturer,
        "subject": {"weight_kg": weight, "head_scale": scale, "brain_center_mm": center.round(2).tolist()},
        "acquisition": acq.to_dict(),
        "mr": {"contrast": "T1w (MPRAGE-like)", "white_matter_signal": MR_WHITE_MATTER_SIGNAL,
               "field_strength_t": float(field_t),
               "imaging_frequency_mhz": round(MF.imaging_frequency_mhz(field_t), 4),
               "protocol": {"name": proto.name, "repetition_time_ms": proto.repetition_time_ms,
                            "inversion_time_ms": proto.inversion_time_ms, "echo_time_ms": proto.echo_time_ms,
                            "flip_angle_deg": proto.flip_angle_deg,
                            "signal": "PD * |1 - 2 exp(-TI/T1) + exp(-TR/T1)|"},
               "t1_ms": {cls: round(1000.0 * MF.t1_s(cls, field_t), 2)
                         for cls in (MF.WHITE, MF.GREY, MF.DEEP_GREY, MF.CSF)},
               "t1_ms_by_label": {str(lab): round(1000.0 * MF.t1_s(cls, field_t), 2)
                                  for lab, cls in _MR_CLASS.items()},
               "proton_density": {cls: MF.proton_density(cls) for cls in (MF.WHITE, MF.GREY, MF.DEEP_GREY, MF.CSF)},
               "signal_relative_to_wm": {cls: round(MF.signal(cls, field_t) / MF.signal(MF.WHITE, field_t), 6)
                                         for cls in (MF.WHITE, MF.GREY, MF.DEEP_GREY, MF.CSF)},
               "rician_noise_sd_fraction_of_wm": noise_fraction, "bias_field_amplitude": bias_amp,
               "rician_noise_sd_fraction_of_wm_3t": noise_3t, "bias_field_amplitude_3t": bias_3t,
               "non_brain_tissues": "keep their drawn (3 T) T1w values at every field"},
        "pet": {"sim": sim.to_dict(), "stats": stats, "dose_fractions": [1.0], "gm_wm_ratio": ratio,
                "attenuation": "mu from the label CT numbers at 120 kVp (MR-based AC with bone)",
                "suv_truth": "noise-free SUVbw on the PET grid: mean of the MR-grid truth over each PET voxel, "
                             "before the resolution blur",
                "suv_truth_blurred": f"suv_truth blurred by a 3-D Gaussian of FWHM {sim.resolution_fwhm_mm} mm"},
        "reference_regions": {"cerebellar_grey_over_cortical_grey": round(cbl_fraction, 5),
                              "brainstem_over_white": round(stem_ratio, 5)},
        "hypometabolism": copy.deepcopy(regions),
        "hypometabolism_pattern": pattern,
        "diagnosis": _diagnosis(regions, pattern),
        "truth_frame": "mr",
        "pet_frame": copy.deepcopy(pet_frame),
        "pet_visit_days_after_mr": int(visit_days),
        "labels": [{"label": t.label, "name": t.name, "suv": round(suv[t.label], 5),
                    "hu_120kvp": round(hu120[t.label], 2), "t1w_relative": round(t1[t.label], 4)}
                   for t in T.TISSUES.values()],
        "lesion_label_base": T.LESION_BASE, "lesions": [],
    }

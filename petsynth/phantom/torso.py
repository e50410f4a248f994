"""Whole-body (torso) anatomy: a seeded subject -> an ordered list of labelled shapes.

Body frame. Distances down the body, ``d`` in mm from the vertex (top of the head) for a reference adult
(about 175 cm tall), are scaled by the subject's height factor; lateral (x) and antero-posterior (y)
sizes by the width factors. World coordinates are DICOM LPS (mm): +x the patient's left, +y posterior,
+z superior; the vertex sits at ``z_vertex`` and ``z = z_vertex - d * height``. The patient lies supine,
head first, arms raised out of the field of view, on a carbon-fibre table (shell + foam core).

Organs and structures (paint order; later wins): body fat, body-wall muscle, trachea, table, head
(scalp, skull with diploe, CSF, brain), neck, thoracic cavity, lungs, heart (myocardium, ventricular and
atrial blood), aorta and iliac arteries, vena cava, abdominal cavity (bowel) with visceral fat, liver,
spleen, kidneys with renal pelvis, psoas, bladder, spine (vertebral bodies with marrow, discs, arch,
canal), ribs, sternum, pelvis (iliac wings, sacrum), hips and femurs, thighs, then lesions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from petsynth.phantom import tissues as T
from petsynth.phantom.anatomy import Ellipsoid, Shape, Tube, ZProfile, paint, rotation
from petsynth.data.geometry import Geometry, block_mean
from petsynth.tasks import DEFAULT_TASK, TASKS, get_task

#: Reference body landmarks: d (mm from the vertex), half-width ax, half-depth ay, centre y of the trunk.
TRUNK_KNOTS = np.array([
    # d,    ax,    ay,   cy
    [280.0, 62.0, 62.0, 15.0],
    [300.0, 110.0, 80.0, 10.0],
    [330.0, 158.0, 100.0, 4.0],
    [380.0, 166.0, 112.0, 0.0],
    [460.0, 166.0, 118.0, 0.0],
    [560.0, 160.0, 118.0, 0.0],
    [650.0, 152.0, 116.0, -4.0],
    [760.0, 160.0, 112.0, -4.0],
    [840.0, 176.0, 108.0, 0.0],
    [900.0, 180.0, 100.0, 2.0],
])
#: Default length of the body covered (mm from the vertex, reference height): vertex to upper thigh.
BODY_LENGTH_MM: float = 960.0
#: Lesion hosts and their probabilities.
LESION_HOSTS: dict[str, float] = {"lung": 0.2, "liver": 0.25, "node": 0.2, "bone": 0.15, "soft_tissue": 0.2}


@dataclass
class TorsoSubject:
    """Sampled parameters of one subject (all that the shapes need); recorded in truth.json."""

    seed: list[int]
    height: float              # scale of d
    width: float               # lateral scale
    depth: float               # antero-posterior scale
    fat_mm: float              # subcutaneous fat thickness
    weight_kg: float
    z_vertex: float            # world z of the vertex (mm)
    x0: float                  # world x of the body midline
    y0: float                  # world y of the trunk centre
    jitter: dict[str, np.ndarray] = field(default_factory=dict)  # organ offsets (mm, x/y/d) and scales
    bladder_fill: float = 1.0
    hu: dict[int, float] = field(default_factory=dict)   # label -> HU at 120 kVp
    suv: dict[int, float] = field(default_factory=dict)  # label -> SUVbw
    lesions: list[dict] = field(default_factory=list)

    # --- body frame helpers --------------------------------------------------------------------------
    def z(self, d: float) -> float:
        return self.z_vertex - d * self.height

    def p(self, x: float, y: float, d: float, organ: str | None = None) -> np.ndarray:
        """World point of a reference-frame point (x, y lateral/AP in mm at unit scale, d down the body)."""
        j = self.jitter.get(organ, np.zeros(4)) if organ else np.zeros(4)
        return np.array([self.x0 + (x + j[0]) * self.width, self.y0 + (y + j[1]) * self.depth,
                         self.z(d + j[2])])

    def s(self, rx: float, ry: float, rz: float, organ: str | None = None) -> np.ndarray:
        """Semi-axes scaled by the body factors (and an organ's own size factor)."""
        f = self.jitter.get(organ, np.ones(4))[3] if organ else 1.0
        return np.array([rx * self.width * f, ry * self.depth * f, rz * self.height * f])

    def trunk(self, d: np.ndarray, shrink: float = 0.0):
        """Trunk half-axes and centre at reference depths ``d`` (minus ``shrink`` mm)."""
        kd = TRUNK_KNOTS[:, 0]
        ax = np.interp(d, kd, TRUNK_KNOTS[:, 1]) * self.width - shrink
        ay = np.interp(d, kd, TRUNK_KNOTS[:, 2]) * self.depth - shrink
        cy = self.y0 + np.interp(d, kd, TRUNK_KNOTS[:, 3]) * self.depth
        return ax, ay, np.full_like(ax, self.x0), cy

    def table_top_y(self) -> float:
        d = np.linspace(300, 900, 61)
        ax, ay, _, cy = self.trunk(d)
        return float(np.max(cy + ay)) + 2.0


def sample_torso_subject(rng: np.random.Generator, seed: list[int]) -> TorsoSubject:
    """Draw one subject: body size and shape, organ positions and sizes, tissue values."""
    height = float(rng.uniform(0.92, 1.08))
    width = float(rng.uniform(0.86, 1.18))
    depth = float(width * rng.uniform(0.92, 1.1))
    fat_mm = float(np.clip(8 + 40 * (width - 0.86) + rng.normal(0, 4), 4, 35))
    weight = float(np.round(72.0 * width * depth * height * rng.uniform(0.93, 1.07), 1))
    subj = TorsoSubject(seed=list(seed), height=height, width=width, depth=depth, fat_mm=fat_mm,
                        weight_kg=weight, z_vertex=float(rng.uniform(-60, 120)),
                        x0=float(rng.uniform(-12, 12)), y0=float(rng.uniform(-15, 10)))
    for organ in ("brain", "lung_r", "lung_l", "heart", "liver", "spleen", "kidney_r", "kidney_l",
                  "bladder", "aorta", "spine", "pelvis", "stomach"):
        subj.jitter[organ] = np.array([rng.normal(0, 6), rng.normal(0, 5), rng.normal(0, 10),
                                       rng.uniform(0.88, 1.12)])
    subj.bladder_fill = float(rng.uniform(0.65, 1.35))
    for t in T.torso_tissues():
        subj.hu[t.label] = float(rng.uniform(*t.hu))
        subj.suv[t.label] = float(rng.uniform(*t.suv))
    subj.hu[T.AIR.label] = -1000.0
    subj.suv[T.AIR.label] = 0.0
    return subj


# --- shapes ---------------------------------------------------------------------------------------------
@dataclass
class RibCage(Shape):
    """Paired ribs: bands around an elliptical cage that drop (caudally) from back to front."""

    center_x: float = 0.0
    center_y: float = 0.0
    ax: float = 150.0
    ay: float = 100.0
    z_posterior: list[float] = field(default_factory=list)  # world z of each rib at the spine
    drop: float = 40.0          # how much lower (mm) the rib is at the front
    half_height: float = 5.0
    half_width: float = 4.5
    reach: list[float] = field(default_factory=list)  # max angle from the back (rad) per rib

    def bounds(self):
        zs = np.asarray(self.z_posterior)
        lo = np.array([self.center_x - self.ax - 10, self.center_y - self.ay - 10, zs.min() - self.drop - 10])
        hi = np.array([self.center_x + self.ax + 10, self.center_y + self.ay + 10, zs.max() + 10])
        return lo, hi

    def contains(self, x, y, z):
        u = (x - self.center_x) / self.ax
        v = (y - self.center_y) / self.ay
        r = np.sqrt(u * u + v * v)
        mean_r = 0.5 * (self.ax + self.ay)
        near_ring = np.abs(r - 1.0) * mean_r <= self.half_width
        theta = np.arctan2(np.abs(u), v)  # 0 at the back (posterior, +y), pi at the front
        out = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=bool)
        drop_profile = self.drop * (1 - np.cos(theta)) / 2
        for zp, reach in zip(self.z_posterior, self.reach):
            zr = zp - drop_profile
            out |= near_ring & (np.abs(z - zr) <= self.half_height) & (theta <= reach) & (theta >= 0.12)
        return out


def _spine_profile(s: TorsoSubject):
    """Reference-frame centre line (y) and body radii of the vertebral column by depth d."""
    d = np.array([215.0, 280.0, 330.0, 420.0, 520.0, 600.0, 700.0, 790.0])
    y = np.array([22.0, 30.0, 55.0, 68.0, 66.0, 58.0, 48.0, 58.0])
    rx = np.array([9.0, 11.0, 13.0, 15.0, 17.0, 20.0, 23.0, 24.0])
    ry = np.array([8.0, 9.0, 11.0, 13.0, 15.0, 16.0, 18.0, 18.0])
    return d, y, rx, ry


def torso_shapes(s: TorsoSubject, d_max: float | None = None) -> list[Shape]:
    """All shapes of subject ``s``, in paint order (lesions included)."""
    L = T
    sh: list[Shape] = []
    d_max = max(BODY_LENGTH_MM + 40, d_max or 0.0)
    # ---- body outline: fat, then muscle wall (trunk), neck -------------------------------------------
    dk_trunk = TRUNK_KNOTS[:, 0]
    ax, ay, cx, cy = s.trunk(dk_trunk)
    zk = np.array([s.z(d) for d in dk_trunk])[::-1]
    sh.append(ZProfile(L.FAT.label, zk, cx[::-1], cy[::-1], ax[::-1], ay[::-1], power=2.3))
    axm, aym, _, _ = s.trunk(dk_trunk, shrink=s.fat_mm)
    sh.append(ZProfile(L.MUSCLE.label, zk, cx[::-1], cy[::-1], np.maximum(axm, 5)[::-1],
                       np.maximum(aym, 5)[::-1], power=2.3))
    # thighs (below the trunk), fat then muscle
    for side in (-1, 1):
        dd = np.array([860.0, 900.0, d_max])
        zz = np.array([s.z(d) for d in dd])[::-1]
        cxs = s.x0 + side * np.array([70.0, 88.0, 92.0])[::-1] * s.width
        cys = np.full(3, s.y0 + 5 * s.depth)
        axs = np.array([70.0, 86.0, 76.0])[::-1] * s.width
        ays = np.array([80.0, 86.0, 78.0])[::-1] * s.depth
        sh.append(ZProfile(L.FAT.label, zz, cxs, cys, axs, ays))
        sh.append(ZProfile(L.MUSCLE.label, zz, cxs, cys, axs - s.fat_mm * 0.7, ays - s.fat_mm * 0.7))
    # neck
    sh.append(ZProfile(L.MUSCLE.label, [s.z(300), s.z(190)], s.x0, s.y0 + 15 * s.depth,
                       58 * s.width, 60 * s.depth))
    # ---- table (under the back, whole length) ----------------------------------------------------------
    ty = s.table_top_y()
    z_lo, z_hi = s.z(d_max + 60), s.z(-60)
    sh.append(ZProfile(L.TABLE.label, [z_lo, z_hi], 0.0, ty + 22.0, 200.0, 20.0, power=6.0))
    sh.append(ZProfile(L.TABLE_CORE.label, [z_lo, z_hi], 0.0, ty + 22.0, 196.0, 16.0, power=6.0))
    # ---- head -------------------------------------------------------------------------------------------
    head_c = s.p(0, 0, 120)
    sh.append(Ellipsoid(L.MUSCLE.label, head_c, s.s(75, 98, 120) * np.array([1, 1, 1])))
    cran_c = s.p(0, 4, 98, "brain")
    cran_r = s.s(72, 92, 84)
    for shrink, lab in ((0, L.CORTICAL_BONE), (2.5, L.MARROW), (5, L.CORTICAL_BONE), (7, L.CSF), (9.5, L.BRAIN)):
        sh.append(Ellipsoid(lab.label, cran_c, cran_r - shrink))
    # ventricles (CSF) inside the brain
    for side in (-1, 1):
        sh.append(Ellipsoid(L.CSF.label, cran_c + np.array([side * 9, -5, 8]) * s.width, s.s(6, 28, 12),
                            rot=rotation(side * 8, 0, 0)))
    # ---- airway: trachea down to the carina, main bronchi ------------------------------------------
    sh.append(Tube(L.AIR.label, [s.p(0, -20, 205), s.p(0, -12, 300), s.p(0, 10, 405)], [8, 9, 9]))
    for side in (-1, 1):
        sh.append(Tube(L.AIR.label, [s.p(0, 10, 405), s.p(side * 30, 18, 430)], [7, 5]))
    # ---- thoracic cavity (mediastinal fat) and lungs ------------------------------------------------
    dth = np.array([300.0, 330.0, 420.0, 520.0, 570.0])
    axc, ayc, cxc, cyc = s.trunk(dth, shrink=s.fat_mm + 20.0)
    zth = np.array([s.z(d) for d in dth])[::-1]
    taper = np.array([0.5, 0.9, 1, 1, 0.9])
    sh.append(ZProfile(L.FAT.label, zth, cxc[::-1], cyc[::-1] + 5, np.maximum(axc * taper, 5)[::-1],
                       np.maximum(ayc * taper, 5)[::-1]))
    ax_in = float(np.interp(450, dth, axc))
    ay_in = float(np.interp(450, dth, ayc))
    for side, key, dc, rz in ((-1, "lung_r", 440.0, 125.0), (1, "lung_l", 450.0, 128.0)):
        j = s.jitter[key]
        c = np.array([s.x0 + side * 0.5 * ax_in + j[0], s.y0 + 8 * s.depth + j[1], s.z(dc + j[2])])
        r = np.array([0.5 * ax_in, 0.86 * ay_in, rz * s.height]) * j[3]
        sh.append(Ellipsoid(L.LUNG.label, c, r, clip=[((-side, 0, 0), -side * s.x0 - 16.0)]))
    # ---- heart -------------------------------------------------------------------------------------------
    hc = s.p(28, -0.3 * 110, 470, "heart")
    hr = s.s(58, 47, 62, "heart")
    hrot = rotation(35, 25, 0)
    sh.append(Ellipsoid(L.MYOCARDIUM.label, hc, hr, rot=hrot))
    lv_c = hc + hrot @ np.array([14.0, 0.0, -4.0])
    sh.append(Ellipsoid(L.BLOOD.label, lv_c, hr * np.array([0.42, 0.45, 0.62]), rot=hrot))
    rv_c = hc + hrot @ np.array([-24.0, -6.0, 0.0])
    sh.append(Ellipsoid(L.BLOOD.label, rv_c, hr * np.array([0.38, 0.45, 0.6]), rot=hrot))
    sh.append(Ellipsoid(L.BLOOD.label, hc + np.array([-5.0, 12.0, 40.0 * s.height]), s.s(30, 24, 18)))
    # ---- great vessels -----------------------------------------------------------------------------------
    ja = s.jitter["aorta"]
    aorta = [s.p(5, -20, 450), s.p(3, -18, 395), s.p(12, 10, 375), s.p(22, 42, 395), s.p(20, 52, 480),
             s.p(16, 40, 600), s.p(10, 22, 700), s.p(5, 10, 770)]
    aorta = [q + np.array([ja[0], ja[1], 0.0]) for q in aorta]
    sh.append(Tube(L.BLOOD.label, aorta, [15, 14, 13, 12, 12, 11, 10, 10]))
    for side in (-1, 1):
        sh.append(Tube(L.BLOOD.label, [aorta[-1], s.p(side * 45, 18, 830), s.p(side * 80, 0, 890)], [8, 7, 7]))
    sh.append(Tube(L.BLOOD.label, [s.p(-22, 10, 480), s.p(-22, 30, 600), s.p(-18, 25, 770)], [12, 12, 11]))
    # ---- abdominal cavity (bowel) with visceral fat ------------------------------------------------------
    dab = np.array([560.0, 620.0, 760.0, 850.0])
    axa, aya, cxa, cya = s.trunk(dab, shrink=s.fat_mm + 15.0)
    zab = np.array([s.z(d) for d in dab])[::-1]
    taper = np.array([0.7, 1, 1, 0.8])
    sh.append(ZProfile(L.BOWEL.label, zab, cxa[::-1], (cya - 0.18 * aya)[::-1],
                       (0.86 * axa * taper)[::-1], (0.72 * aya * taper)[::-1]))
    rng = np.random.default_rng([*s.seed, 7])
    n_fat = int(6 + 20 * max(s.width - 0.86, 0))
    for _ in range(n_fat):
        c = s.p(rng.uniform(-110, 110), rng.uniform(-80, 20), rng.uniform(600, 820))
        sh.append(Ellipsoid(L.FAT.label, c, rng.uniform(12, 30, 3) * s.width, rot=rotation(rng.uniform(0, 180))))
    # stomach (soft tissue wall, fluid and an air cap)
    st_c = s.p(45, -45, 575, "stomach")
    st_r = s.s(45, 35, 45, "stomach")
    sh.append(Ellipsoid(L.SOFT_TISSUE.label, st_c, st_r))
    sh.append(Ellipsoid(L.BOWEL.label, st_c, st_r - 5))
    sh.append(Ellipsoid(L.AIR.label, st_c, st_r - 5, clip=[((0, 0, -1), -(st_c[2] + 0.45 * st_r[2]))]))
    # ---- liver, spleen -------------------------------------------------------------------------------
    ax_ab = float(np.interp(600, dab, axa))
    ay_ab = float(np.interp(600, dab, aya))
    j = s.jitter["liver"]
    lc = np.array([s.x0 - 0.42 * ax_ab + j[0], s.y0 + 0.02 * ay_ab + j[1], s.z(590 + j[2])])
    sh.append(Ellipsoid(L.LIVER.label, lc, np.array([0.46 * ax_ab, 0.72 * ay_ab, 78 * s.height]) * j[3],
                        rot=rotation(-15, 0, 0)))
    sh.append(Ellipsoid(L.LIVER.label, lc + np.array([0.48 * ax_ab, -0.4 * ay_ab, 18 * s.height]),
                        np.array([0.34 * ax_ab, 0.3 * ay_ab, 42 * s.height]) * j[3], rot=rotation(10, 0, 0)))
    j = s.jitter["spleen"]
    sh.append(Ellipsoid(L.SPLEEN.label,
                        np.array([s.x0 + 0.62 * ax_ab + j[0], s.y0 + 0.38 * ay_ab + j[1], s.z(590 + j[2])]),
                        np.array([30 * s.width, 55 * s.depth, 52 * s.height]) * j[3], rot=rotation(40)))
    # ---- kidneys, psoas, bladder ---------------------------------------------------------------------------
    for side, key, dc in ((-1, "kidney_r", 675.0), (1, "kidney_l", 660.0)):
        j = s.jitter[key]
        kc = np.array([s.x0 + side * 72 * s.width + j[0], s.y0 + 0.5 * ay_ab + j[1], s.z(dc + j[2])])
        krot = rotation(side * -25, side * 12, 0)
        sh.append(Ellipsoid(L.KIDNEY.label, kc, np.array([27, 33, 56]) * j[3], rot=krot))
        sh.append(Ellipsoid(L.RENAL_PELVIS.label, kc + krot @ np.array([-side * 12.0, -6.0, 0.0]),
                            np.array([9, 9, 17]) * j[3], rot=krot))
    for side in (-1, 1):
        sh.append(Tube(L.MUSCLE.label, [s.p(side * 32, 58, 640), s.p(side * 48, 40, 760),
                                        s.p(side * 62, 10, 850)], [11, 22, 24]))
    j = s.jitter["bladder"]
    sh.append(Ellipsoid(L.BLADDER.label, s.p(0, -0.3 * 100, 870, "bladder"),
                        np.array([42, 34, 34]) * s.bladder_fill * j[3]))
    # ---- spine --------------------------------------------------------------------------------------------
    sd, sy, srx, sry = _spine_profile(s)
    js = s.jitter["spine"]
    zsp = np.array([s.z(d) for d in sd])[::-1]
    ysp = (s.y0 + sy * s.depth + js[1])[::-1]
    xsp = np.full(len(sd), s.x0)
    sh.append(ZProfile(L.CORTICAL_BONE.label, zsp, xsp, ysp, srx[::-1], sry[::-1]))
    sh.append(ZProfile(L.MARROW.label, zsp, xsp, ysp, srx[::-1] - 2.2, sry[::-1] - 2.2))
    # intervertebral discs
    d = 230.0
    while d < 785.0:
        hv = np.interp(d, [215, 330, 600, 790], [15, 20, 26, 30]) * s.height
        disc = np.interp(d, [215, 330, 600, 790], [4, 5, 8, 9]) * s.height
        zc = s.z(d + hv)
        sub = [zc - disc / 2, zc + disc / 2]
        yy = s.y0 + np.interp(d + hv, sd, sy) * s.depth + js[1]
        rr = (np.interp(d + hv, sd, srx), np.interp(d + hv, sd, sry))
        sh.append(ZProfile(L.SOFT_TISSUE.label, sub, s.x0, yy, rr[0] + 0.5, rr[1] + 0.5))
        d += hv + disc / s.height
    # neural arch and canal behind the bodies
    arch = [np.array([s.x0, s.y0 + (yv * s.depth) + js[1] + ry_ + 9, s.z(dv)]) for dv, yv, ry_ in zip(sd, sy, sry)]
    sh.append(Tube(L.CORTICAL_BONE.label, arch, 13.0))
    sh.append(Tube(L.CSF.label, arch, 7.5))
    # ---- ribs and sternum ------------------------------------------------------------------------------
    drc = np.array([330.0, 450.0, 560.0])
    axr, ayr, cxr, cyr = s.trunk(drc, shrink=s.fat_mm + 12.0)
    n_ribs = 12
    d_post = np.linspace(335, 560, n_ribs)
    reach = np.concatenate([np.full(7, 0.85 * np.pi), np.linspace(0.8, 0.55, n_ribs - 7) * np.pi])
    sh.append(RibCage(L.CORTICAL_BONE.label, center_x=s.x0, center_y=float(np.mean(cyr)) + 4,
                      ax=float(np.mean(axr)), ay=float(np.mean(ayr)),
                      z_posterior=[s.z(d) for d in d_post], drop=55.0 * s.height, reach=list(reach)))
    y_st = s.y0 - float(np.interp(420, drc, ayr)) - 2
    sh.append(ZProfile(L.CORTICAL_BONE.label, [s.z(520), s.z(335)], s.x0, y_st, 17 * s.width, 7.0))
    sh.append(ZProfile(L.MARROW.label, [s.z(518), s.z(337)], s.x0, y_st, 14 * s.width, 4.5))
    # ---- pelvis, hips, femurs ------------------------------------------------------------------------
    jp = s.jitter["pelvis"]
    ax_p = float(np.interp(800, TRUNK_KNOTS[:, 0], TRUNK_KNOTS[:, 1]))
    for side in (-1, 1):
        c = s.p(side * 0.62 * ax_p + jp[0], 25 + jp[1], 790 + jp[2])
        rot = rotation(side * 50, side * 15, 0)
        sh.append(Ellipsoid(L.CORTICAL_BONE.label, c, s.s(11, 62, 55), rot=rot))
        sh.append(Ellipsoid(L.MARROW.label, c, s.s(11, 62, 55) - np.array([4, 4, 4]), rot=rot))
    sac_c = s.p(0 + jp[0], 62 + jp[1], 815 + jp[2])
    sac_rot = rotation(0, 0, -25)
    sh.append(Ellipsoid(L.CORTICAL_BONE.label, sac_c, s.s(45, 20, 58), rot=sac_rot))
    sh.append(Ellipsoid(L.MARROW.label, sac_c, s.s(45, 20, 58) - 4, rot=sac_rot))
    for side in (-1, 1):
        hip = s.p(side * 0.56 * ax_p + jp[0], 8 + jp[1], 885 + jp[2])
        sh.append(Ellipsoid(L.CORTICAL_BONE.label, hip, np.full(3, 24.0)))
        sh.append(Ellipsoid(L.MARROW.label, hip, np.full(3, 20.0)))
        shaft = [hip, s.p(side * (0.56 * ax_p + 20), 8, 915), s.p(side * 90, 5, 960), s.p(side * 90, 5, d_max + 40)]
        sh.append(Tube(L.CORTICAL_BONE.label, shaft, [14, 14, 14, 13]))
        sh.append(Tube(L.MARROW.label, shaft, [10, 9, 8, 8]))
        sh.append(Tube(L.CORTICAL_BONE.label, [hip, s.p(side * 22, -55, 885)], 9.0))  # pubic ramus
    # ---- lesions -------------------------------------------------------------------------------------
    for les in s.lesions:
        sh.append(Ellipsoid(les["label"], les["center_mm"], les["radii_mm"], rot=np.asarray(les["rotation"])))
    return sh


def place_lesions(s: TorsoSubject, rng: np.random.Generator, n: int, d_range: tuple[float, float],
                  host_probs: dict[str, float] | None = None) -> None:
    """Draw ``n`` lesions inside host tissues within the body range ``d_range`` (reference mm from the
    vertex) and store them on the subject (label, host, centre, radii, rotation, SUV, HU)."""
    host_probs = host_probs or LESION_HOSTS
    shapes = torso_shapes(s)
    z_hi, z_lo = s.z(d_range[0]), s.z(d_range[1])
    step = 6.0
    zs = np.arange(z_lo + 10, z_hi - 10, step)
    if zs.size < 1:
        return
    coarse = Geometry.axial((84, 84), (step, step), zs, (s.x0, s.y0))
    lab = paint(shapes, coarse)
    host_labels = {
        "lung": [T.LUNG.label], "liver": [T.LIVER.label], "node": [T.FAT.label, T.BOWEL.label],
        "bone": [T.MARROW.label], "soft_tissue": [T.MUSCLE.label],
    }
    names = list(host_probs)
    probs = np.array([host_probs[k] for k in names], dtype=np.float64)
    probs /= probs.sum()
    xs, ys, zz = coarse.axes()
    for _ in range(n):
        for _attempt in range(20):
            host = names[int(rng.choice(len(names), p=probs))]
            cand = np.argwhere(np.isin(lab, host_labels[host]))
            if host == "node":  # nodes in the mediastinum / abdomen, not in the subcutaneous fat
                keep = np.abs(xs[cand[:, 2]] - s.x0) < 0.55 * 160 * s.width
                cand = cand[keep]
            if len(cand) == 0:
                continue
            k, j, i = cand[rng.integers(len(cand))]
            r_max = {"bone": 12.0, "node": 15.0, "lung": 18.0}.get(host, T.LESION_RADIUS_MM[1])
            radius = float(np.exp(rng.uniform(np.log(T.LESION_RADIUS_MM[0]), np.log(r_max))))
            c = np.array([xs[i], ys[j], zz[k]]) + rng.uniform(-step / 2, step / 2, 3)
            # the centre's neighbourhood (+-0.7 r) should be the host
            ok = True
            for ax in range(3):
                for sgn in (-1, 1):
                    q = c.copy()
                    q[ax] += sgn * 0.7 * radius
                    qi = np.rint(coarse.world_to_index(q)).astype(int)
                    if (np.any(qi < 0) or np.any(qi >= np.array(coarse.shape[::-1]))
                            or lab[qi[2], qi[1], qi[0]] not in host_labels[host]):
                        ok = False
            if not ok:
                continue
            n_les = len(s.lesions)
            suv = float(np.exp(rng.uniform(np.log(T.LESION_SUV[0]), np.log(T.LESION_SUV[1]))))
            if host == "liver":
                hu = s.hu[T.LIVER.label] - rng.uniform(10, 25)
            elif host == "bone":
                hu = float(rng.choice([rng.uniform(*T.LESION_HU), rng.uniform(500, 900)]))
            else:
                hu = float(rng.uniform(*T.LESION_HU))
            radii = radius * rng.uniform(0.85, 1.15, 3)
            rot = rotation(rng.uniform(0, 180), rng.uniform(-30, 30), rng.uniform(-30, 30))
            s.lesions.append({"label": T.LESION_BASE + n_les, "host": host, "center_mm": c.round(2).tolist(),
                              "radii_mm": radii.round(2).tolist(), "rotation": rot.round(6).tolist(),
                              "suv": round(suv, 4), "hu_120kvp": round(float(hu), 1)})
            break


# --- whole study ---------------------------------------------------------------------------------------
def _lesion_tables(s: TorsoSubject) -> tuple[dict[int, float], dict[int, float], set[int]]:
    hu = dict(s.hu)
    suv = dict(s.suv)
    bone_like = set()
    for les in s.lesions:
        hu[les["label"]] = les["hu_120kvp"]
        suv[les["label"]] = les["suv"]
        if les["host"] == "bone" and les["hu_120kvp"] > 300:
            bone_like.add(les["label"])
    return hu, suv, bone_like


def paint_truth(shapes, geometry: Geometry, suv_lut: np.ndarray, supersample: int = 3,
                chunk_slices: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Labels (at voxel centres) and partial-volume SUV truth (mean over ``supersample``^2 in-plane
    sub-voxels) on an axis-aligned ``geometry``, slab by slab."""
    ss = int(supersample)
    if ss < 1 or ss % 2 == 0:
        raise ValueError("supersample must be an odd positive integer (its centre sample gives the label)")
    nz = geometry.shape[0]
    labels = np.zeros(geometry.shape, dtype=np.uint8)
    suv = np.zeros(geometry.shape, dtype=np.float32)
    zs = geometry.z_positions()
    for k0 in range(0, nz, chunk_slices):
        k1 = min(nz, k0 + chunk_slices)
        slab = Geometry((k1 - k0, *geometry.shape[1:]), geometry.spacing, (*geometry.origin[:2], zs[k0]))
        fine = paint(shapes, slab.refined((1, ss, ss)))
        labels[k0:k1] = fine[:, ss // 2::ss, ss // 2::ss]
        suv[k0:k1] = block_mean(suv_lut[fine], (1, ss, ss))
    return labels, suv


def pet_ct_geometries(s: TorsoSubject, flavour, preset, rng: np.random.Generator):
    """PET and CT grids covering the preset's body range for subject ``s``."""
    from petsynth.phantom.presets import scaled_grids

    g = scaled_grids(flavour, preset)
    d0, d1 = preset.body_range_mm
    z_top, z_bot = s.z(d0), s.z(d1)
    if preset.num_slices:
        n_pet = int(preset.num_slices)
        dz = (z_top - z_bot) / n_pet
    else:
        dz = g["pet_slice_mm"]
        n_pet = int(np.floor((z_top - z_bot) / dz)) + 1
    z_pet = z_bot + dz * np.arange(n_pet)
    pet = Geometry.axial((g["pet_size"], g["pet_size"]), (g["pet_pixel_mm"], g["pet_pixel_mm"]), z_pet, (0.0, 0.0))
    dzc = g["ct_slice_mm"]
    lo, hi = z_pet[0] - dz / 2, z_pet[-1] + dz / 2
    n_ct = int(np.ceil((hi - lo) / dzc))
    z_ct = (lo + hi) / 2 + dzc * (np.arange(n_ct) - (n_ct - 1) / 2)
    ct_center = (0.0, float(np.round(rng.uniform(-15, 15), 1)))
    ct = Geometry.axial((g["ct_size"], g["ct_size"]), (g["ct_pixel_mm"], g["ct_pixel_mm"]), z_ct, ct_center)
    return pet, ct, dz


def make_torso(seed: int = 0, *, index: int = 0, task: str = DEFAULT_TASK, preset="default",
               flavour: str | None = None, kvp: float | None = None, dose_fractions=(),
               sim=None, study_id: str | None = None, hu_to_mu_method: str = "bilinear"):
    """Simulate one whole-body PET/CT study in memory.

    Args:
        seed, index: the subject is fully determined by (seed, index).
        task: "ct2pet" or "lpet2spet" (the latter also reconstructs ``dose_fractions``).
        preset: "default", "small", "tiny" or a :class:`~petsynth.phantom.presets.Preset`.
        flavour: "ge", "siemens", "philips" (default: drawn from the seed).
        kvp: CT tube voltage (default: drawn from 80, 100, 110, 120, 130, 140).
        dose_fractions: low-dose levels in (0, 1) to reconstruct besides the standard dose.
        sim: :class:`~petsynth.phantom.pet.PETSimConfig` (default settings when None).

    Returns:
        :class:`~petsynth.phantom.study.PhantomStudy` with images CT (HU), PT (SUV) and PT_low_<f>,
        and truth volumes on the PET grid (labels, suv_truth, suv_truth_blurred, mu) and CT grid (labels_ct).
    """
    import torch

    from petsynth import __version__
    from petsynth.phantom import ct as ctmod
    from petsynth.data.geometry import gaussian_blur
    from petsynth.phantom.pet import PETSimConfig, area_resample, simulate_emission, simulation_grid
    from petsynth.phantom.presets import FLAVOURS, get_flavour, get_preset
    from petsynth.phantom.study import (
        Image, PhantomStudy, fraction_name, sample_acquisition, study_id_for)
    from petsynth.physics import hu_to_mu

    if get_task(task).phantom != "torso":
        torso_tasks = [n for n, t in TASKS.items() if t.phantom == "torso"]
        raise ValueError(f"make_torso task must be one of {torso_tasks}, got {task!r}")
    pre = get_preset(preset)
    sim = sim or PETSimConfig()
    rng = np.random.default_rng([int(seed), int(index)])
    tgen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    flv = get_flavour(flavour) if flavour else FLAVOURS[sorted(FLAVOURS)[int(rng.integers(len(FLAVOURS)))]]
    kvp_val = float(kvp) if kvp is not None else float(rng.choice(ctmod.KVP_CHOICES))
    subj = sample_torso_subject(rng, [int(seed), int(index)])
    n_les = int(rng.integers(pre.lesions[0], pre.lesions[1] + 1))
    place_lesions(subj, rng, n_les, (max(pre.body_range_mm[0], 150.0), pre.body_range_mm[1]))
    acq = sample_acquisition(rng, subj.weight_kg, flv, brain=False, kvp=kvp_val)
    pet_geom, ct_geom, _ = pet_ct_geometries(subj, flv, pre, rng)
    shapes = torso_shapes(subj, d_max=pre.body_range_mm[1] + 60)
    hu120, suv, bone_like = _lesion_tables(subj)

    # ---- CT ----------------------------------------------------------------------------------------------
    lut_hu = ctmod.hu_lut(hu120, kvp_val)
    for lab in bone_like:
        lut_hu[lab] = ctmod.bone_hu_at_kvp(hu120[lab], kvp_val)
    labels_ct = paint(shapes, ct_geom)
    noise120 = float(rng.uniform(*ctmod.NOISE_SD_120_HU))
    noise_sd = ctmod.noise_sd_at_kvp(noise120, kvp_val)
    texture = ctmod.lung_texture(labels_ct, ct_geom, rng)
    ct_hu = ctmod.synthesize_ct(labels_ct, ct_geom, lut_hu, noise_sd, tgen, texture_hu=texture)
    del texture

    # ---- PET truth -----------------------------------------------------------------------------------
    suv_lut = np.zeros(256, dtype=np.float32)
    for lab, v in suv.items():
        suv_lut[lab] = v
    ss = 3 if pet_geom.spacing[2] > 1.5 else 1
    labels_pet, suv_truth = paint_truth(shapes, pet_geom, suv_lut, supersample=ss)
    suv_blur = gaussian_blur(suv_truth, sim.resolution_fwhm_mm, pet_geom.spacing)

    # ---- attenuation from the CT, emission, reconstruction --------------------------------------------
    sim_geom = simulation_grid(pet_geom, pre.max_sim_size, pre.max_sim_fov_mm)
    # as scanners do: CT averaged down to the PET grid, then converted to mu at 511 keV
    mu_sim = hu_to_mu(area_resample(ct_hu, ct_geom, sim_geom, fill=-1000.0), kvp_val, method=hu_to_mu_method)
    mu_pet = mu_sim if sim_geom == pet_geom else area_resample(mu_sim, sim_geom, pet_geom)
    act_sim = suv_blur if sim_geom == pet_geom else area_resample(suv_blur, pet_geom, sim_geom)
    if sim.num_angles is None and pre.num_angles_per_pixel != 1.0:
        n_angles = max(8, int(round(sim_geom.shape[2] * pre.num_angles_per_pixel)))
        sim = dataclasses.replace(sim, num_angles=n_angles)
    fractions = sorted({float(f) for f in dose_fractions if float(f) != 1.0}, reverse=True) \
        if get_task(task).low_dose_source else []
    recon, stats = simulate_emission(act_sim, mu_sim, sim_geom, fractions, sim, tgen)
    if sim_geom != pet_geom:
        recon = {f: np.maximum(area_resample(v, sim_geom, pet_geom), 0.0) for f, v in recon.items()}

    sid = study_id or study_id_for(task, int(seed), int(index))
    study = PhantomStudy(sid, task, flv, acq)
    study.images["CT"] = Image("CT", ct_hu, ct_geom, "CT for attenuation correction (phantom)")
    study.images["PT"] = Image("PT", recon[1.0], pet_geom, "PET AC (phantom)", 1.0)
    for f in fractions:
        study.images[f"PT_low_{fraction_name(f)}"] = Image("PT", recon[f], pet_geom,
                                                           f"PET AC low dose {fraction_name(f)} (phantom)", f)
    study.truth_images["labels"] = Image("LABEL", labels_pet, pet_geom, "organ labels, PET grid")
    study.truth_images["suv_truth"] = Image("PT", suv_truth, pet_geom, "noise-free SUV before blur")
    study.truth_images["suv_truth_blurred"] = Image("PT", suv_blur, pet_geom, "noise-free SUV after blur")
    study.truth_images["mu"] = Image("MU", mu_pet.astype(np.float32), pet_geom, "mu 511 keV (cm-1) from CT")
    study.truth_images["labels_ct"] = Image("LABEL", labels_ct, ct_geom, "organ labels, CT grid")

    label_rows = []
    for t in T.torso_tissues():
        label_rows.append({"label": t.label, "name": t.name, "suv": round(suv.get(t.label, 0.0), 5),
                           "hu_120kvp": round(hu120.get(t.label, -1000.0), 2),
                           "hu": round(float(lut_hu[t.label]), 2), "suv_range": list(t.suv),
                           "hu_range_120kvp": list(t.hu)})
    lesions = []
    for les in subj.lesions:
        lesions.append({**{k: v for k, v in les.items() if k != "rotation"},
                        "hu": round(float(lut_hu[les["label"]]), 2), "rotation": les["rotation"]})
    study.truth = {
        "software": {"name": "petsynth", "version": __version__, "generator": "petsynth.phantom.make_torso"},
        "study_id": sid, "task": task, "seed": int(seed), "index": int(index), "preset": pre.name,
        "flavour": flv.key, "manufacturer": flv.manufacturer,
        "subject": {"weight_kg": subj.weight_kg, "height_scale": subj.height, "width_scale": subj.width,
                    "depth_scale": subj.depth, "subcutaneous_fat_mm": subj.fat_mm, "z_vertex_mm": subj.z_vertex,
                    "midline_xy_mm": [subj.x0, subj.y0]},
        "acquisition": acq.to_dict(),
        "ct": {"kvp": kvp_val, "noise_sd_hu": noise_sd, "noise_sd_120kvp_hu": noise120,
               "noise_model": "sd(kVp) = sd_120 * (120/kVp)^1, NPS ~ f exp(-(f/0.35/mm)^2)",
               "hu_to_mu_method": hu_to_mu_method},
        "pet": {"sim": sim.to_dict(), "stats": stats, "dose_fractions": [1.0, *fractions],
                "truth_supersample_inplane": ss,
                "suv_truth": "noise-free SUVbw on the PET grid: mean over each voxel (partial volume), before "
                             "the resolution blur",
                "suv_truth_blurred": f"suv_truth blurred by a 3-D Gaussian of FWHM {sim.resolution_fwhm_mm} mm "
                                     "(the emission image that was projected)"},
        "labels": label_rows, "lesion_label_base": T.LESION_BASE, "lesions": lesions,
    }
    return study

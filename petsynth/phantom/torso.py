"""Whole-body (torso) anatomy: a seeded subject -> an ordered list of labelled shapes.

Body frame. Distances down the body, ``d`` in mm from the vertex (top of the head) for a reference adult
(about 175 cm tall), are scaled by the subject's height factor; lateral (x) and antero-posterior (y)
sizes by the width factors. World coordinates are DICOM LPS (mm): +x the patient's left, +y posterior,
+z superior; the vertex sits at ``z_vertex`` and ``z = z_vertex - d * height``. The patient lies supine,
head first, on a carbon-fibre table (shell + foam core), with the arms either raised out of the field of
view or along the trunk (``arms``: skin/fat, muscle, humerus, radius and ulna with cortex and marrow, hands),
fitted inside the PET and CT fields of view (:func:`fit_arms`).

Per subject (drawn from a stream of its own, so the anatomy's draws do not depend on them): the myocardium's
fasting state (its FDG uptake), the arm position and, on request, a contrast-enhanced (portal-venous) CT.
Lesions have a class (CT-visible, CT-occult, benign) and a kind (:data:`petsynth.phantom.tissues.LESION_KINDS`).

Organs and structures (paint order; later wins): body fat, body-wall muscle, trachea, table, head
(scalp, skull with diploe, CSF, brain), neck, thoracic cavity, lungs, heart (myocardium, ventricular and
atrial blood), aorta and iliac arteries, vena cava, abdominal cavity (bowel) with visceral fat, liver,
spleen, kidneys with renal pelvis, psoas, bladder, spine (vertebral bodies with marrow, discs, arch,
canal), ribs, sternum, pelvis (iliac wings, sacrum), hips and femurs, thighs, then lesions. Arms along the
trunk are painted after the body outline (their shoulder bridge before it).
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
#: Arms along the trunk (reference adult): d (mm from the vertex) of the centre-line knots and the skin radius
#: there (mm, scaled by the width factor): shoulder at d 325, elbow at about 620, wrist at 860; the hand
#: follows (an ellipsoid down to about d 1010).
ARM_KNOTS = np.array([
    # d,    r
    [325.0, 44.0],
    [360.0, 48.0],
    [480.0, 44.0],
    [600.0, 38.0],
    [640.0, 37.0],
    [700.0, 39.0],
    [860.0, 26.0],
])
#: Humerus (d range) and forearm bones (radius and ulna, d range) of an arm along the trunk.
HUMERUS_D: tuple[float, float] = (345.0, 615.0)
FOREARM_D: tuple[float, float] = (630.0, 855.0)
#: Hand: centre d and semi-axes (lateral, antero-posterior, along the body), palm against the thigh.
HAND_D: float = 935.0
HAND_SEMI_MM: tuple[float, float, float] = (15.0, 40.0, 75.0)
#: Margins (mm) kept between the arms and the edge of the PET reconstruction circle / the CT field of view.
ARM_PET_MARGIN_MM: float = 12.0
ARM_CT_MARGIN_MM: float = 5.0
#: Arm positions and contrast options of :func:`make_torso`.
ARMS_CHOICES: tuple[str, ...] = ("raised", "sides", "random")
CONTRAST_CHOICES: tuple[str, ...] = ("none", "venous", "random")


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
    myocardium_state: str = "partial"                     # key of tissues.MYOCARDIUM_STATES
    arms: str = "raised"                                  # "raised" or "sides"
    arm_gap_mm: float = 10.0                              # trunk-arm gap (after fitting)
    arm_scale: float = 1.0                                # arm thickness factor (after fitting; 1 = as drawn)
    arm_fit: dict = field(default_factory=dict)           # what fit_arms changed (truth.json)
    contrast: str = "none"                                # "none" or "venous"
    enhancement: dict[int, float] = field(default_factory=dict)  # label -> venous enhancement (HU, 120 kVp)

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


def _pick(rng: np.random.Generator, probs: dict[str, float]) -> str:
    names = list(probs)
    p = np.array([probs[k] for k in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def sample_subject_state(s: TorsoSubject, rng: np.random.Generator, *, arms: str = "random",
                         contrast: str = "none") -> None:
    """Draw the subject's physiology and protocol into ``s``: the myocardium's fasting state and its SUV,
    the arm position (``arms``: "raised", "sides" or "random" with :data:`~petsynth.phantom.tissues.ARMS_SIDES_PROB`)
    with its trunk-arm gap, and the CT contrast (``contrast``: "none", "venous" or "random" with
    :data:`~petsynth.phantom.tissues.CONTRAST_VENOUS_PROB`) with the per-organ venous enhancement. Every value is
    drawn whatever is requested, so a subject's other values do not depend on the options."""
    if arms not in ARMS_CHOICES:
        raise ValueError(f"arms must be one of {ARMS_CHOICES}, got {arms!r}")
    if contrast not in CONTRAST_CHOICES:
        raise ValueError(f"contrast must be one of {CONTRAST_CHOICES}, got {contrast!r}")
    state = _pick(rng, {k: v[0] for k, v in T.MYOCARDIUM_STATES.items()})
    s.myocardium_state = state
    s.suv[T.MYOCARDIUM.label] = float(rng.uniform(*T.MYOCARDIUM_STATES[state][1]))
    u_arms = float(rng.uniform())
    s.arm_gap_mm = float(rng.uniform(*T.ARM_GAP_MM))
    s.arms = arms if arms != "random" else ("sides" if u_arms < T.ARMS_SIDES_PROB else "raised")
    u_contrast = float(rng.uniform())
    enhancement = {lab: float(rng.uniform(*r)) for lab, r in T.VENOUS_ENHANCEMENT_HU.items()}
    s.contrast = contrast if contrast != "random" else ("venous" if u_contrast < T.CONTRAST_VENOUS_PROB else "none")
    s.enhancement = enhancement if s.contrast == "venous" else {}


# --- arms along the trunk ---------------------------------------------------------------------------------
def arm_centerline(s: TorsoSubject, d: np.ndarray, gap: float | None = None, scale: float | None = None):
    """Centre line of the arms at reference depths ``d``: (|x offset| from the midline, world y, skin radius),
    clear of the trunk by ``gap`` mm (default: the subject's) at every depth within 50 mm."""
    gap = s.arm_gap_mm if gap is None else gap
    scale = s.arm_scale if scale is None else scale
    d = np.asarray(d, dtype=np.float64)
    r = np.interp(d, ARM_KNOTS[:, 0], ARM_KNOTS[:, 1]) * s.width * scale
    win = np.linspace(-50.0, 50.0, 11)
    dd = np.clip(d[:, None] + win[None, :], TRUNK_KNOTS[0, 0], TRUNK_KNOTS[-1, 0])
    ax_w, _, _, _ = s.trunk(dd.ravel())
    clear = ax_w.reshape(dd.shape).max(axis=1)
    _, ay, _, cy = s.trunk(np.clip(d, TRUNK_KNOTS[0, 0], TRUNK_KNOTS[-1, 0]))
    y = np.minimum(cy + 0.35 * ay, s.table_top_y() - 2.0 - r)
    return clear + gap + r, y, r


def _arm_extent(s: TorsoSubject, d: np.ndarray, center_xy, gap: float, scale: float) -> float:
    """Largest distance (mm) from ``center_xy`` of any point of either arm (hand included) at depths ``d``."""
    off, y, r = arm_centerline(s, d, gap, scale)
    hand = (d >= ARM_KNOTS[-1, 0])
    ax = np.where(hand, HAND_SEMI_MM[0] * s.width * scale, r)
    ay = np.where(hand, HAND_SEMI_MM[1] * s.width * scale, r)
    if hand.any():  # the hand hangs below the wrist's centre line
        off_w, y_w, r_w = arm_centerline(s, np.array([ARM_KNOTS[-1, 0]]), gap, scale)
        off = np.where(hand, off_w[0] - r_w[0] + HAND_SEMI_MM[0] * s.width * scale, off)
        y = np.where(hand, y_w[0], y)
    t = np.linspace(0, 2 * np.pi, 25)[:, None]
    worst = 0.0
    for side in (-1, 1):
        px = s.x0 + side * off[None, :] + ax[None, :] * np.cos(t)
        py = y[None, :] + ay[None, :] * np.sin(t)
        worst = max(worst, float(np.max(np.hypot(px - center_xy[0], py - center_xy[1]))))
    return worst


def fit_arms(s: TorsoSubject, d_range: tuple[float, float], pet_center_xy, pet_radius_mm: float,
             ct_center_xy, ct_radius_mm: float) -> float | None:
    """Fit arms along the trunk inside the PET reconstruction circle and the CT field of view over the imaged
    depths ``d_range`` (reference mm from the vertex); never truncate them.

    PET (its field of view is fixed): narrow the trunk-arm gap to 0, then thin the arms down to 0.7, then let
    them press into the subcutaneous fat (gap down to -fat/2), then thin them further (down to 0.35); if they
    still do not fit, the subject's arms are raised instead (recorded). CT: narrow the gap to 0 if needed, then,
    if the arms still cross the CT field of view, return the extended field of view (mm, a multiple of 10) the
    CT must be reconstructed with, else None. Updates ``s.arm_gap_mm``, ``s.arm_scale`` and ``s.arm_fit``."""
    if s.arms != "sides":
        return None
    lo = max(ARM_KNOTS[0, 0] - 60.0, d_range[0] - 20.0)
    hi = min(HAND_D + HAND_SEMI_MM[2], d_range[1] + 20.0)
    d = np.arange(lo, hi + 5.0, 5.0)
    drawn_gap = s.arm_gap_mm
    gap, scale = drawn_gap, 1.0
    d = d[(d >= ARM_KNOTS[0, 0]) & (d <= HAND_D)]
    fit = {"drawn_gap_mm": round(drawn_gap, 2)}
    if d.size == 0:
        s.arm_fit = {**fit, "gap_mm": round(gap, 2), "radius_scale": 1.0, "adjusted": False}
        return None
    pet_limit = pet_radius_mm - ARM_PET_MARGIN_MM
    stages = ((0.0, 1.0), (0.0, 0.7), (-0.5 * s.fat_mm, 0.7), (-0.5 * s.fat_mm, 0.35))
    for gap_min, scale_min in stages:
        while _arm_extent(s, d, pet_center_xy, gap, scale) > pet_limit:
            if gap > gap_min:
                gap = max(gap_min, gap - 2.0)
            elif scale > scale_min:
                scale = max(scale_min, scale - 0.02)
            else:
                break
        if _arm_extent(s, d, pet_center_xy, gap, scale) <= pet_limit:
            break
    else:
        s.arms = "raised"
        s.arm_fit = {**fit, "fallback": "arms do not fit the PET field of view: raised instead"}
        return None
    ct_fov = None
    ct_limit = ct_radius_mm - ARM_CT_MARGIN_MM
    if _arm_extent(s, d, ct_center_xy, gap, scale) > ct_limit and gap > 0.0:
        gap = 0.0
    need = _arm_extent(s, d, ct_center_xy, gap, scale)
    if need > ct_limit:
        ct_fov = float(np.ceil(2.0 * (need + ARM_CT_MARGIN_MM) / 10.0) * 10.0)
    s.arm_gap_mm, s.arm_scale = float(gap), float(scale)
    s.arm_fit = {**fit, "gap_mm": round(gap, 2), "radius_scale": round(scale, 3),
                 "adjusted": bool(gap != drawn_gap or scale != 1.0), "ct_extended_fov_mm": ct_fov}
    return ct_fov


def arm_shapes(s: TorsoSubject) -> tuple[list[Shape], list[Shape]]:
    """Shapes of the arms along the trunk: (shoulder bridges, painted before the body outline so that the trunk
    wins; the arms themselves, painted after it). Empty when the arms are raised."""
    if s.arms != "sides":
        return [], []
    L = T
    d = ARM_KNOTS[:, 0]
    off, y, r = arm_centerline(s, d)
    arm_fat = float(np.clip(0.6 * s.fat_mm, 3.0, 20.0)) * s.arm_scale
    r_mus = np.maximum(r - arm_fat, 0.55 * r)
    zs = np.array([s.z(v) for v in d])
    before, after = [], []
    for side in (-1, 1):
        xs = s.x0 + side * off
        pts = np.stack([xs, y, zs], axis=1)
        # shoulder: soft tissue bridging the trunk and the top of the arm (deltoid, axilla)
        bx = s.x0 + side * (off[1] - 0.6 * r[1])
        bc = np.array([bx, y[1] - 5.0, s.z(345.0)])
        bsemi = np.array([0.4 * r[1] + max(s.arm_gap_mm, 0.0) + 10.0, r[1], 45.0 * s.height])  # trunk to arm
        before.append(Ellipsoid(L.FAT.label, bc, bsemi))
        before.append(Ellipsoid(L.MUSCLE.label, bc, np.maximum(bsemi - arm_fat, 5.0)))
        after.append(Tube(L.FAT.label, pts, r))
        after.append(Tube(L.MUSCLE.label, pts, r_mus))
        # hand, palm against the thigh: soft tissue without bones
        off_w, r_w = off[-1], r[-1]
        hc = np.array([s.x0 + side * (off_w - r_w + HAND_SEMI_MM[0] * s.width * s.arm_scale), y[-1], s.z(HAND_D)])
        hs = np.array(HAND_SEMI_MM) * np.array([s.width * s.arm_scale, s.width * s.arm_scale, s.height])
        after.append(Ellipsoid(L.FAT.label, hc, hs))
        after.append(Ellipsoid(L.MUSCLE.label, hc, np.maximum(hs - np.array([4.0, 6.0, 6.0]), 3.0)))
        # humerus: head, shaft and the condyles; cortical bone around marrow
        def at(dv):
            o, yy, rr = arm_centerline(s, np.array([dv]))
            return np.array([s.x0 + side * o[0], yy[0], s.z(dv)]), float(rr[0])

        h0, rh0 = at(HUMERUS_D[0])
        h1, rh1 = at(0.5 * (HUMERUS_D[0] + HUMERUS_D[1]))
        h2, rh2 = at(HUMERUS_D[1])
        cort = [min(11.0, 0.45 * rr) for rr in (rh0, rh1, rh2)]
        head = min(22.0, 0.8 * rh0)
        after.append(Ellipsoid(L.CORTICAL_BONE.label, h0, np.full(3, head)))
        after.append(Ellipsoid(L.MARROW.label, h0, np.full(3, head - 3.0)))
        after.append(Tube(L.CORTICAL_BONE.label, [h0, h1, h2], cort))
        after.append(Tube(L.MARROW.label, [h0, h1, h2], [c * 0.55 for c in cort]))
        # radius and ulna side by side (antero-posterior), thin cortices
        f0, rf0 = at(FOREARM_D[0])
        f1, rf1 = at(FOREARM_D[1])
        fr = [min(7.0, 0.22 * rf0), min(6.0, 0.25 * rf1)]
        sep = [min(10.0, 0.35 * rf0), min(8.0, 0.35 * rf1)]
        for sgn in (-1, 1):
            p0 = f0 + np.array([0.0, sgn * sep[0], 0.0])
            p1 = f1 + np.array([0.0, sgn * sep[1], 0.0])
            after.append(Tube(L.CORTICAL_BONE.label, [p0, p1], fr))
            after.append(Tube(L.MARROW.label, [p0, p1], [0.5 * v for v in fr]))
    return before, after


def inside_trunk_cavity(s: TorsoSubject, x, y, z, margin_mm: float = 8.0) -> np.ndarray:
    """Whether points lie inside the trunk's muscle wall by ``margin_mm`` (not subcutaneous, not in the arms)."""
    d = (s.z_vertex - np.asarray(z, dtype=np.float64)) / s.height
    ax, ay, cx, cy = s.trunk(np.clip(d, TRUNK_KNOTS[0, 0], TRUNK_KNOTS[-1, 0]), shrink=s.fat_mm + margin_mm)
    ok = (d >= TRUNK_KNOTS[0, 0]) & (d <= TRUNK_KNOTS[-1, 0]) & (ax > 1) & (ay > 1)
    q = ((np.asarray(x) - cx) / np.maximum(ax, 1)) ** 2 + ((np.asarray(y) - cy) / np.maximum(ay, 1)) ** 2
    return ok & (q < 1.0)


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
    arms_before, arms_after = arm_shapes(s)
    sh.extend(arms_before)
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
    # arms along the trunk (none when raised)
    sh.extend(arms_after)
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
                  class_probs: dict[str, float] | None = None) -> None:
    """Draw ``n`` lesions within the body range ``d_range`` (reference mm from the vertex) and store them on the
    subject. Each lesion's class is drawn from ``class_probs`` (default
    :data:`~petsynth.phantom.tissues.LESION_CLASS_PROBS`), then a kind of that class
    (:data:`~petsynth.phantom.tissues.LESION_KINDS`, by weight; redrawn when no room is found in its host), its
    centre in the kind's host tissue with the neighbourhood (+-0.7 r) in the host too, size, orientation, SUV
    and CT number at 120 kVp (absolute, or relative to the host's)."""
    class_probs = class_probs or T.LESION_CLASS_PROBS
    shapes = torso_shapes(s)
    z_hi, z_lo = s.z(d_range[0]), s.z(d_range[1])
    step = 6.0
    zs = np.arange(z_lo + 10, z_hi - 10, step)
    if zs.size < 1:
        return
    coarse = Geometry.axial((84, 84), (step, step), zs, (s.x0, s.y0))
    lab = paint(shapes, coarse)
    xs, ys, zz = coarse.axes()
    candidates: dict[str, np.ndarray] = {}
    for _ in range(n):
        cls = _pick(rng, class_probs)
        kinds = T.lesion_kinds(cls)
        weights = {k.name: k.weight for k in kinds}
        for _attempt in range(20):
            kind = T.LESION_KINDS[_pick(rng, weights)]
            if kind.name not in candidates:
                cand = np.argwhere(np.isin(lab, kind.hosts))
                if kind.interior and len(cand):  # mediastinal / abdominal, not subcutaneous or in the arms
                    cand = cand[inside_trunk_cavity(s, xs[cand[:, 2]], ys[cand[:, 1]], zz[cand[:, 0]])]
                candidates[kind.name] = cand
            cand = candidates[kind.name]
            if len(cand) == 0:
                continue
            k, j, i = cand[rng.integers(len(cand))]
            radius = float(np.exp(rng.uniform(*np.log(kind.radius_mm))))
            c = np.array([xs[i], ys[j], zz[k]]) + rng.uniform(-step / 2, step / 2, 3)
            host_label = int(lab[k, j, i])
            # the centre's neighbourhood (+-0.7 r) should be the host
            ok = True
            for ax in range(3):
                for sgn in (-1, 1):
                    q = c.copy()
                    q[ax] += sgn * 0.7 * radius
                    qi = np.rint(coarse.world_to_index(q)).astype(int)
                    if (np.any(qi < 0) or np.any(qi >= np.array(coarse.shape[::-1]))
                            or lab[qi[2], qi[1], qi[0]] != host_label):
                        ok = False
            if not ok:
                continue
            n_les = len(s.lesions)
            if kind.suv is None:
                suv = float(np.exp(rng.uniform(np.log(T.LESION_SUV[0]), np.log(T.LESION_SUV[1]))))
            else:
                suv = float(rng.uniform(*kind.suv))
            host_hu = float(s.hu[host_label])
            hu = float(rng.uniform(*kind.hu)) if kind.hu is not None else host_hu + float(rng.uniform(*kind.hu_offset))
            radii = radius * rng.uniform(0.85, 1.15, 3)
            rot = rotation(rng.uniform(0, 180), rng.uniform(-30, 30), rng.uniform(-30, 30))
            s.lesions.append({"label": T.LESION_BASE + n_les, "class": cls, "kind": kind.name,
                              "host": T.TISSUES[host_label].name, "host_label": host_label,
                              "center_mm": c.round(2).tolist(), "radii_mm": radii.round(2).tolist(),
                              "rotation": rot.round(6).tolist(), "suv": round(suv, 4),
                              "hu_120kvp": round(hu, 1), "host_hu_120kvp": round(host_hu, 1)})
            break


# --- whole study ---------------------------------------------------------------------------------------
def _lesion_tables(s: TorsoSubject) -> tuple[dict[int, float], dict[int, float], set[int]]:
    """Per-label CT number at 120 kVp and SUV, lesions included, and the lesion labels whose CT number moves
    with kVp like bone."""
    hu = dict(s.hu)
    suv = dict(s.suv)
    bone_like = set()
    for les in s.lesions:
        hu[les["label"]] = les["hu_120kvp"]
        suv[les["label"]] = les["suv"]
        if T.LESION_KINDS[les["kind"]].bone:
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
               sim=None, study_id: str | None = None, hu_to_mu_method: str = "bilinear",
               arms: str = "random", contrast: str = "none"):
    """Simulate one whole-body PET/CT study in memory.

    Args:
        seed, index: the subject is fully determined by (seed, index).
        task: "ct2pet" or "lpet2spet" (the latter also reconstructs ``dose_fractions``).
        preset: "default", "small", "tiny" or a :class:`~petsynth.phantom.presets.Preset`.
        flavour: "ge", "siemens", "philips" (default: drawn from the seed).
        kvp: CT tube voltage (default: drawn from 80, 100, 110, 120, 130, 140).
        dose_fractions: low-dose levels in (0, 1) to reconstruct besides the standard dose.
        sim: :class:`~petsynth.phantom.pet.PETSimConfig` (default settings when None).
        arms: "raised" (out of the field of view), "sides" (along the trunk, fitted inside the PET and CT
            fields of view, see :func:`fit_arms`) or "random" (sides with probability
            :data:`~petsynth.phantom.tissues.ARMS_SIDES_PROB`).
        contrast: "none", "venous" (portal-venous iodine enhancement of the CT,
            :data:`~petsynth.phantom.tissues.VENOUS_ENHANCEMENT_HU` scaled with kVp by
            :func:`~petsynth.phantom.ct.iodine_factor`) or "random"
            (:data:`~petsynth.phantom.tissues.CONTRAST_VENOUS_PROB`). The attenuation map (PET simulation and
            the truth ``mu``) always comes from the unenhanced CT numbers: iodine adds next to nothing to mu at
            511 keV.

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
    side_rng = np.random.default_rng([int(seed), int(index), 1])  # physiology and protocol: a stream of their own
    sample_subject_state(subj, side_rng, arms=arms, contrast=contrast)
    n_les = int(rng.integers(pre.lesions[0], pre.lesions[1] + 1))
    pet_geom, ct_geom, _ = pet_ct_geometries(subj, flv, pre, rng)
    sim_geom = simulation_grid(pet_geom, pre.max_sim_size, pre.max_sim_fov_mm)
    ct_fov_mm = ct_geom.shape[2] * ct_geom.spacing[2]
    # arms along the trunk: inside the PET reconstruction circle (of the simulation grid, within the output
    # grid) and the CT field of view (extended when they cross it)
    pet_radius = 0.5 * min(sim_geom.shape[2] * sim_geom.spacing[2], pet_geom.shape[1] * pet_geom.spacing[1],
                           pet_geom.shape[2] * pet_geom.spacing[2])
    ext_fov = fit_arms(subj, pre.body_range_mm, sim_geom.center()[:2], pet_radius, ct_geom.center()[:2],
                       0.5 * ct_fov_mm)
    if ext_fov is not None and ext_fov > ct_fov_mm:
        n_ct = ct_geom.shape[2]
        ct_geom = Geometry.axial((n_ct, n_ct), (ext_fov / n_ct, ext_fov / n_ct), ct_geom.z_positions(),
                                 tuple(ct_geom.center()[:2]))
        ct_fov_mm = ext_fov
    place_lesions(subj, rng, n_les, (max(pre.body_range_mm[0], 150.0), pre.body_range_mm[1]))
    for les in subj.lesions:  # venous enhancement of each lesion (used with contrast only)
        how = T.LESION_KINDS[les["kind"]].enhancement
        e = subj.enhancement.get(les["host_label"], 0.0) if how == "host" else float(side_rng.uniform(*how))
        les["enhancement_hu_120kvp"] = round(e, 2) if subj.contrast == "venous" else 0.0
    acq = sample_acquisition(rng, subj.weight_kg, flv, brain=False, kvp=kvp_val)
    shapes = torso_shapes(subj, d_max=pre.body_range_mm[1] + 60)
    hu120, suv, bone_like = _lesion_tables(subj)

    # ---- CT ----------------------------------------------------------------------------------------------
    lut_native = ctmod.hu_lut(hu120, kvp_val)  # unenhanced CT numbers at this kVp
    for lab in bone_like:
        lut_native[lab] = ctmod.bone_hu_at_kvp(hu120[lab], kvp_val)
    iodine = ctmod.iodine_factor(kvp_val)
    enh_lut = np.zeros(256, dtype=np.float32)
    if subj.contrast == "venous":
        for lab, e in subj.enhancement.items():
            enh_lut[lab] = e * iodine
        for les in subj.lesions:
            enh_lut[les["label"]] = les["enhancement_hu_120kvp"] * iodine
    lut_hu = lut_native + enh_lut
    labels_ct = paint(shapes, ct_geom)
    noise120 = float(rng.uniform(*ctmod.NOISE_SD_120_HU))
    noise_sd = ctmod.noise_sd_at_kvp(noise120, kvp_val)
    texture = ctmod.lung_texture(labels_ct, ct_geom, rng)
    ct_native = None
    if subj.contrast == "venous":  # the same noise on the unenhanced CT numbers, for the attenuation map
        state = tgen.get_state()
        ct_native = ctmod.synthesize_ct(labels_ct, ct_geom, lut_native, noise_sd, tgen, texture_hu=texture)
        tgen.set_state(state)
    ct_hu = ctmod.synthesize_ct(labels_ct, ct_geom, lut_hu, noise_sd, tgen, texture_hu=texture)
    if ct_native is None:
        ct_native = ct_hu
    del texture

    # ---- PET truth -----------------------------------------------------------------------------------
    suv_lut = np.zeros(256, dtype=np.float32)
    for lab, v in suv.items():
        suv_lut[lab] = v
    ss = 3 if pet_geom.spacing[2] > 1.5 else 1
    labels_pet, suv_truth = paint_truth(shapes, pet_geom, suv_lut, supersample=ss)
    suv_blur = gaussian_blur(suv_truth, sim.resolution_fwhm_mm, pet_geom.spacing)

    # ---- attenuation from the CT, emission, reconstruction --------------------------------------------
    # as scanners do: CT averaged down to the PET grid, then converted to mu at 511 keV; from the unenhanced CT
    # numbers (iodine adds next to nothing to mu at 511 keV; the enhanced HU would read as bone-like)
    mu_sim = hu_to_mu(area_resample(ct_native, ct_geom, sim_geom, fill=-1000.0), kvp_val, method=hu_to_mu_method)
    del ct_native
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
    ct_desc = ("CT with IV contrast, portal venous (phantom)" if subj.contrast == "venous"
               else "CT for attenuation correction (phantom)")
    study.images["CT"] = Image("CT", ct_hu, ct_geom, ct_desc)
    study.images["PT"] = Image("PT", recon[1.0], pet_geom, "PET AC (phantom)", 1.0)
    for f in fractions:
        study.images[f"PT_low_{fraction_name(f)}"] = Image("PT", recon[f], pet_geom,
                                                           f"PET AC low dose {fraction_name(f)} (phantom)", f)
    study.truth_images["labels"] = Image("LABEL", labels_pet, pet_geom, "organ labels, PET grid")
    study.truth_images["suv_truth"] = Image("PT", suv_truth, pet_geom, "noise-free SUV before blur")
    study.truth_images["suv_truth_blurred"] = Image("PT", suv_blur, pet_geom, "noise-free SUV after blur")
    study.truth_images["mu"] = Image("MU", mu_pet.astype(np.float32), pet_geom,
                                     "mu 511 keV (cm-1) from the unenhanced CT numbers")
    study.truth_images["labels_ct"] = Image("LABEL", labels_ct, ct_geom, "organ labels, CT grid")

    label_rows = []
    for t in T.torso_tissues():
        label_rows.append({"label": t.label, "name": t.name, "suv": round(suv.get(t.label, 0.0), 5),
                           "hu_120kvp": round(hu120.get(t.label, -1000.0), 2),
                           "hu": round(float(lut_hu[t.label]), 2), "hu_native": round(float(lut_native[t.label]), 2),
                           "enhancement_hu": round(float(enh_lut[t.label]), 2), "suv_range": list(t.suv),
                           "hu_range_120kvp": list(t.hu)})
    lesions = []
    for les in subj.lesions:
        lab, host = les["label"], les["host_label"]
        lesions.append({**{k: v for k, v in les.items() if k != "rotation"},
                        "hu": round(float(lut_hu[lab]), 2), "hu_native": round(float(lut_native[lab]), 2),
                        "enhancement_hu": round(float(enh_lut[lab]), 2), "host_hu": round(float(lut_hu[host]), 2),
                        "rotation": les["rotation"]})
    enhancement = [{"label": int(lab),
                    "name": T.TISSUES[lab].name if lab in T.TISSUES else f"lesion_{lab - T.LESION_BASE}",
                    "hu_120kvp": round(float(enh_lut[lab] / iodine), 2), "hu": round(float(enh_lut[lab]), 2)}
                   for lab in np.nonzero(enh_lut)[0]]
    subject = {"weight_kg": subj.weight_kg, "height_scale": subj.height, "width_scale": subj.width,
               "depth_scale": subj.depth, "subcutaneous_fat_mm": subj.fat_mm, "z_vertex_mm": subj.z_vertex,
               "midline_xy_mm": [subj.x0, subj.y0], "myocardium_state": subj.myocardium_state, "arms": subj.arms}
    if subj.arm_fit:
        subject["arm_fit"] = subj.arm_fit
    study.truth = {
        "software": {"name": "petsynth", "version": __version__, "generator": "petsynth.phantom.make_torso"},
        "study_id": sid, "task": task, "seed": int(seed), "index": int(index), "preset": pre.name,
        "flavour": flv.key, "manufacturer": flv.manufacturer,
        "subject": subject,
        "acquisition": acq.to_dict(),
        "ct": {"kvp": kvp_val, "noise_sd_hu": noise_sd, "noise_sd_120kvp_hu": noise120,
               "noise_model": "sd(kVp) = sd_120 * (120/kVp)^1, NPS ~ f exp(-(f/0.35/mm)^2)",
               "hu_to_mu_method": hu_to_mu_method, "fov_mm": round(float(ct_fov_mm), 2),
               "extended_fov": bool(ct_fov_mm > flv.ct_fov_mm + 1e-6),
               "contrast": subj.contrast, "iodine_factor": round(iodine, 4) if subj.contrast == "venous" else None,
               "iodine_model": f"enhancement(kVp) = enhancement_120 * (120/kVp)^{ctmod.IODINE_KVP_EXPONENT}",
               "enhancement": enhancement,
               "mu_from": "unenhanced CT numbers (same voxels and noise, iodine enhancement removed)"},
        "pet": {"sim": sim.to_dict(), "stats": stats, "dose_fractions": [1.0, *fractions],
                "truth_supersample_inplane": ss,
                "suv_truth": "noise-free SUVbw on the PET grid: mean over each voxel (partial volume), before "
                             "the resolution blur",
                "suv_truth_blurred": f"suv_truth blurred by a 3-D Gaussian of FWHM {sim.resolution_fwhm_mm} mm "
                                     "(the emission image that was projected)"},
        "labels": label_rows, "lesion_label_base": T.LESION_BASE, "lesions": lesions,
    }
    return study

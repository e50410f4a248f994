"""The phantom label table: every tissue, its label id, and the ranges its CT number, FDG uptake and T1w MR
signal are drawn from. All the phantom's tissue constants live here, in the open.

Label volumes are integers (uint8): ``0`` is air outside the body; ids below :data:`LESION_BASE` are the tissues
of :data:`TISSUES`; lesion ``n`` (0-based, as listed in truth.json) has label ``LESION_BASE + n``.

Per subject, one value per tissue is drawn uniformly from each range (seeded), so subjects differ.

FDG uptake, SUVbw about 60 min after injection (adult, fasting). Ranges are typical normal values, chosen to
sit inside what these publications report (they are not one table of any of them):
  - Wang Y, Chiu E, Rosenberg J, Gambhir SS (2007). Standardized uptake value atlas: characterization of
    physiological 2-deoxy-2-[18F]fluoro-D-glucose uptake in normal tissues. Mol Imaging Biol 9:83-90.
  - Zincirkeser S, Sahin E, Halac M, Sager S (2007). Standardized uptake values of normal organs on
    18F-fluorodeoxyglucose positron emission tomography and computed tomography imaging.
    J Int Med Res 35:231-236.
  - Ramos CD, Erdi YE, Gonen M, et al. (2001). FDG-PET standardized uptake values in normal anatomical
    structures using iterative reconstruction segmented attenuation correction and filtered
    back-projection. Eur J Nucl Med 28:155-164.
  - Reference regions (liver, blood pool in the descending aorta): Boellaard R et al. (2015). FDG PET/CT:
    EANM procedure guidelines for tumour imaging, version 2.0. Eur J Nucl Med Mol Imaging 42:328-354;
    Wahl RL, Jacene H, Kasamon Y, Lodge MA (2009). From RECIST to PERCIST. J Nucl Med 50 Suppl 1:122S-150S.
  Myocardium is deliberately wide (1.5-12): its uptake depends on the fasting state, drawn per subject from
  :data:`MYOCARDIUM_STATES`. Bladder and renal pelvis
  hold excreted tracer (urine) and are high and variable. Lesions: 3-15 covers typical FDG-avid tumours and
  nodes.
  Brain phantom: grey-matter SUV 7-10 with a grey/white ratio of 2.8-4.0 (the 3-4:1 usually seen in FDG
  brain PET; e.g. the grey/white contrast assumed by brain PET phantoms such as Hoffman's, 4:1).

CT numbers (HU) on unenhanced CT at 120 kVp, typical textbook ranges (e.g. fat -120..-80, muscle 40-55,
liver 50-65, lung parenchyma about -850; cf. Lamba R et al. (2014) CT Hounsfield numbers of soft tissues on
unenhanced abdominal CT scans. AJR 203:1013-1020). Cortical bone 700-1500 and red marrow/cancellous bone
200-400 are given at 120 kVp and moved with kVp in :mod:`petsynth.phantom.ct` (bone numbers rise as
the tube voltage falls).

T1-weighted MR signal (MPRAGE-like), relative to white matter = 1: WM > GM > CSF; fat (scalp, diploic
marrow) bright; cortical bone and air dark. These are contrast assumptions of the phantom, not
measurements, and stand for 3 T; the brain phantom moves the brain tissues' values with the field strength
(:mod:`petsynth.phantom.mr_field`: published T1 laws and an inversion-recovery signal equation).

Labels 23-25 (cerebellar grey and white matter, brainstem) belong to the brain phantom only and are derived
from grey / white matter rather than drawn (:data:`DERIVED_BRAIN_TISSUES`).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Lesion n has label LESION_BASE + n.
LESION_BASE: int = 100


@dataclass(frozen=True)
class Tissue:
    """One row of the label table. Ranges are (low, high); a value is drawn uniformly per subject."""

    label: int
    name: str
    hu: tuple[float, float]          # CT number at 120 kVp
    suv: tuple[float, float]         # FDG SUVbw
    t1w: tuple[float, float] = (0.0, 0.0)  # T1w signal relative to white matter
    bone: bool = False               # CT number depends on kVp (see ct.py)


AIR = Tissue(0, "air", (-1000, -1000), (0.0, 0.0), (0.0, 0.0))
FAT = Tissue(1, "fat", (-120, -80), (0.2, 0.4), (1.1, 1.3))
MUSCLE = Tissue(2, "muscle", (40, 55), (0.5, 1.0), (0.40, 0.50))
LUNG = Tissue(3, "lung", (-880, -820), (0.4, 0.7), (0.02, 0.05))
MYOCARDIUM = Tissue(4, "myocardium", (35, 50), (1.5, 12.0), (0.45, 0.55))  # SUV: union of MYOCARDIUM_STATES
BLOOD = Tissue(5, "blood_pool", (35, 50), (1.5, 2.0), (0.25, 0.35))
LIVER = Tissue(6, "liver", (50, 65), (2.0, 3.0), (0.60, 0.70))
SPLEEN = Tissue(7, "spleen", (40, 50), (1.5, 2.5), (0.50, 0.60))
KIDNEY = Tissue(8, "kidney", (25, 35), (2.0, 4.0), (0.45, 0.55))
RENAL_PELVIS = Tissue(9, "renal_pelvis", (0, 10), (5.0, 20.0), (0.10, 0.15))
BLADDER = Tissue(10, "bladder", (0, 10), (5.0, 30.0), (0.10, 0.15))
BRAIN = Tissue(11, "brain", (30, 40), (6.0, 10.0), (0.75, 0.85))
CORTICAL_BONE = Tissue(12, "cortical_bone", (700, 1500), (0.3, 0.6), (0.02, 0.06), bone=True)
MARROW = Tissue(13, "bone_marrow", (200, 400), (1.5, 2.0), (0.80, 0.95), bone=True)
BOWEL = Tissue(14, "bowel", (20, 40), (1.0, 2.0), (0.45, 0.60))
CSF = Tissue(15, "csf", (5, 15), (0.2, 0.4), (0.12, 0.18))
TABLE = Tissue(16, "table_shell", (300, 500), (0.0, 0.0), (0.0, 0.0))
TABLE_CORE = Tissue(17, "table_core", (-900, -850), (0.0, 0.0), (0.0, 0.0))
GREY_MATTER = Tissue(18, "grey_matter", (35, 45), (7.0, 10.0), (0.58, 0.66))
WHITE_MATTER = Tissue(19, "white_matter", (20, 30), (2.0, 3.0), (1.0, 1.0))  # SUV set from the GM/WM ratio
GM_HYPOMETABOLIC = Tissue(20, "grey_matter_hypometabolic", (35, 45), (3.5, 8.0), (0.58, 0.66))
DEEP_GREY = Tissue(21, "deep_grey_matter", (35, 45), (6.0, 9.0), (0.68, 0.76))
SOFT_TISSUE = Tissue(22, "soft_tissue", (20, 40), (0.8, 1.2), (0.50, 0.60))
# Brain reference regions (brain phantom only), split out of grey/white matter so that SUVR to the cerebellum
# or the pons can be computed. Their values are not drawn from these ranges (which only document them): CT
# number and T1w are those of grey (cerebellar grey) or white matter (cerebellar white, brainstem); SUV is
# cortical grey x U(0.75, 0.9) (cerebellar grey: lower FDG uptake than the cortex), white matter (cerebellar
# white) and white matter x U(1.0, 1.3) (brainstem), see petsynth.phantom.brain.
CEREBELLAR_GREY = Tissue(23, "cerebellar_grey_matter", (35, 45), (5.0, 9.0), (0.58, 0.66))
CEREBELLAR_WHITE = Tissue(24, "cerebellar_white_matter", (20, 30), (2.0, 3.0), (1.0, 1.0))
BRAINSTEM = Tissue(25, "brainstem", (20, 30), (2.0, 4.0), (1.0, 1.0))

#: Every tissue by label id.
TISSUES: dict[int, Tissue] = {t.label: t for t in (
    AIR, FAT, MUSCLE, LUNG, MYOCARDIUM, BLOOD, LIVER, SPLEEN, KIDNEY, RENAL_PELVIS, BLADDER, BRAIN,
    CORTICAL_BONE, MARROW, BOWEL, CSF, TABLE, TABLE_CORE, GREY_MATTER, WHITE_MATTER, GM_HYPOMETABOLIC,
    DEEP_GREY, SOFT_TISSUE, CEREBELLAR_GREY, CEREBELLAR_WHITE, BRAINSTEM)}
#: Tissues whose values are derived from others (not drawn per tissue), used by the brain phantom only; the
#: per-tissue draws of both phantoms skip them so that the random streams are those of the table without them.
DERIVED_BRAIN_TISSUES: tuple[Tissue, ...] = (CEREBELLAR_GREY, CEREBELLAR_WHITE, BRAINSTEM)
DERIVED_BRAIN_LABELS: frozenset[int] = frozenset(t.label for t in DERIVED_BRAIN_TISSUES)


def drawn_tissues() -> list[Tissue]:
    """The tissues that get one value drawn per subject (every tissue but :data:`DERIVED_BRAIN_TISSUES`)."""
    return [t for t in TISSUES.values() if t.label not in DERIVED_BRAIN_LABELS]


def torso_tissues() -> list[Tissue]:
    """The tissues of the torso phantom's label table (it has no cerebellum or brainstem labels)."""
    return drawn_tissues()

#: FDG-avid lesion uptake (SUVbw, drawn log-uniformly): typical FDG-avid tumours and nodes.
LESION_SUV: tuple[float, float] = (3.0, 15.0)
#: Soft-tissue lesion CT number at 120 kVp (solid tumour / enlarged node on unenhanced CT).
LESION_HU: tuple[float, float] = (30.0, 50.0)
#: Lesion radius range in mm (diameters 8-40 mm); each kind narrows it (:data:`LESION_KINDS`).
LESION_RADIUS_MM: tuple[float, float] = (4.0, 20.0)

# --- lesion classes and kinds -------------------------------------------------------------------------
# Each torso lesion is drawn in two steps: its class from LESION_CLASS_PROBS, then a kind of that class with
# the kind's weight. The class fixes what the two modalities see:
#   ct_visible  FDG-avid and seen on CT: |HU_lesion - HU_host| >= LESION_VISIBLE_MIN_CONTRAST_HU at 120 kVp;
#   ct_occult   FDG-avid, invisible on CT: HU = host HU + U(LESION_OCCULT_HU_OFFSET) (within a few HU);
#   benign      seen on CT, not FDG-avid: SUV from the kind's range, at or below the host / blood pool.
# The class probabilities are an assumption of the phantom (not a prevalence from a study): most lesions of
# a staging PET/CT are seen on both modalities, a minority on PET only (marrow, isodense liver or muscle
# deposits) and incidental benign CT findings are common.
# CT numbers (120 kVp, unenhanced) are typical textbook values: hypodense liver metastases some 30-50 HU below
# the liver; simple cysts 0-15 HU (water); calcified granulomas well above 150 HU (calcium, so they move with
# kVp like bone); lipomas of fat density; sclerotic metastases 500-900 HU and lytic ones of soft-tissue
# density in the marrow. Benign SUVs: cysts and lipomas take up almost no FDG, healed (calcified)
# granulomas little; all at or below the blood pool (1.5-2.0). Radii and weights are assumptions.
LESION_CLASSES: tuple[str, ...] = ("ct_visible", "ct_occult", "benign")
#: Probability of each lesion class (assumption, see above).
LESION_CLASS_PROBS: dict[str, float] = {"ct_visible": 0.6, "ct_occult": 0.2, "benign": 0.2}
#: Minimum |HU_lesion - HU_host| of a ct_visible lesion at 120 kVp (the kinds' ranges guarantee it).
LESION_VISIBLE_MIN_CONTRAST_HU: float = 30.0
#: HU offset of a ct_occult lesion from its host (120 kVp): "isodense" within a few HU.
LESION_OCCULT_HU_OFFSET: tuple[float, float] = (-3.0, 3.0)
#: Maximum |HU_lesion - HU_host| of a ct_occult lesion at 120 kVp.
LESION_OCCULT_MAX_CONTRAST_HU: float = 5.0
#: SUV range of benign (non-avid) lesions, all kinds together.
BENIGN_SUV: tuple[float, float] = (0.2, 1.5)


@dataclass(frozen=True)
class LesionKind:
    """One kind of torso lesion: where it grows, its size, CT number and FDG uptake.

    ``hu`` is an absolute CT number range at 120 kVp; ``hu_offset`` a range relative to the host's CT number
    (one of the two is set). ``suv`` None means FDG-avid (:data:`LESION_SUV`, log-uniform). ``bone``: the CT
    number moves with kVp like bone (calcified or sclerotic). ``enhancement``: portal-venous enhancement at
    120 kVp (HU range), or ``"host"`` to enhance like the host (occult lesions stay isodense). ``interior``:
    only inside the trunk's cavities (mediastinal / abdominal fat, not subcutaneous)."""

    name: str
    lesion_class: str
    hosts: tuple[int, ...]
    weight: float
    radius_mm: tuple[float, float]
    hu: tuple[float, float] | None = None
    hu_offset: tuple[float, float] | None = None
    suv: tuple[float, float] | None = None
    bone: bool = False
    enhancement: tuple[float, float] | str = (0.0, 0.0)
    interior: bool = False


#: Every lesion kind by name (weights are within the class and sum to 1 per class).
LESION_KINDS: dict[str, LesionKind] = {k.name: k for k in (
    # ct_visible (FDG-avid)
    LesionKind("lung_nodule", "ct_visible", (LUNG.label,), 0.25, (4.0, 18.0), hu=LESION_HU,
               enhancement=(10.0, 40.0)),
    LesionKind("node", "ct_visible", (FAT.label,), 0.30, (4.0, 15.0), hu=LESION_HU, enhancement=(10.0, 40.0),
               interior=True),
    LesionKind("liver_hypodense", "ct_visible", (LIVER.label,), 0.25, (4.0, 20.0), hu_offset=(-50.0, -30.0),
               enhancement=(10.0, 30.0)),
    LesionKind("bone_sclerotic", "ct_visible", (MARROW.label,), 0.10, (4.0, 12.0), hu=(500.0, 900.0), bone=True),
    LesionKind("bone_lytic", "ct_visible", (MARROW.label,), 0.10, (4.0, 12.0), hu=LESION_HU,
               enhancement=(10.0, 30.0)),
    # ct_occult (FDG-avid, isodense)
    LesionKind("liver_isodense", "ct_occult", (LIVER.label,), 0.40, (4.0, 20.0), hu_offset=LESION_OCCULT_HU_OFFSET,
               enhancement="host"),
    LesionKind("marrow_occult", "ct_occult", (MARROW.label,), 0.30, (4.0, 12.0),
               hu_offset=LESION_OCCULT_HU_OFFSET, bone=True, enhancement="host"),
    LesionKind("muscle_occult", "ct_occult", (MUSCLE.label,), 0.30, (4.0, 20.0), hu_offset=LESION_OCCULT_HU_OFFSET,
               enhancement="host"),
    # benign (not FDG-avid, CT-visible)
    LesionKind("liver_cyst", "benign", (LIVER.label,), 0.40, (4.0, 15.0), hu=(0.0, 15.0), suv=(0.3, 1.0)),
    LesionKind("lung_granuloma", "benign", (LUNG.label,), 0.30, (3.0, 7.0), hu=(150.0, 400.0), suv=(0.5, 1.5),
               bone=True),
    LesionKind("lipoma", "benign", (MUSCLE.label,), 0.30, (6.0, 20.0), hu=(-120.0, -80.0), suv=(0.2, 0.5)),
)}


def lesion_kinds(lesion_class: str) -> list[LesionKind]:
    """The kinds of one lesion class, in table order."""
    if lesion_class not in LESION_CLASSES:
        raise ValueError(f"unknown lesion class {lesion_class!r}; choose one of {LESION_CLASSES}")
    return [k for k in LESION_KINDS.values() if k.lesion_class == lesion_class]


# --- subject physiology and protocol (torso phantom) ----------------------------------------------------
#: Myocardial FDG uptake in the fasting state: state -> (probability, SUV range). After the usual >= 4-6 h
#: fast the myocardium may still use glucose: its uptake ranges from blood-pool level (suppressed) to far
#: above the liver (avid), cf. the wide myocardial SUVs of Wang et al. (2007) and Ramos et al. (2001) above.
#: The split into three states and their probabilities are an assumption of the phantom.
MYOCARDIUM_STATES: dict[str, tuple[float, tuple[float, float]]] = {
    "suppressed": (0.35, (1.5, 2.5)),
    "partial": (0.35, (2.5, 5.0)),
    "avid": (0.30, (5.0, 12.0)),
}
#: Probability that a torso subject lies with the arms along the trunk rather than raised above the head
#: (arms up is the usual whole-body PET/CT position; arms down is common for head-and-neck studies and for
#: patients who cannot raise them). Assumption of the phantom.
ARMS_SIDES_PROB: float = 0.35
#: Gap between the trunk and an arm lying along it (mm), before fitting the arms into the fields of view.
ARM_GAP_MM: tuple[float, float] = (2.0, 30.0)
#: Probability of a contrast-enhanced (portal-venous) CT when the contrast is "random" (assumption).
CONTRAST_VENOUS_PROB: float = 0.5
#: Portal-venous phase (about 70 s after an intravenous iodine bolus) enhancement at 120 kVp, HU added to
#: the unenhanced CT number, drawn per subject. Typical values: vessels and heart chambers 150-250 HU,
#: liver 100-120, spleen 110-130, kidneys 150-200 in this phase (textbook CT values; the exact ranges are
#: assumptions of the phantom). Tissues not listed do not enhance (fat, lung, bone, bladder and renal pelvis
#: before excretion, CSF, brain behind the blood-brain barrier).
VENOUS_ENHANCEMENT_HU: dict[int, tuple[float, float]] = {
    BLOOD.label: (100.0, 200.0),
    KIDNEY.label: (100.0, 170.0),
    LIVER.label: (40.0, 70.0),
    SPLEEN.label: (50.0, 90.0),
    MYOCARDIUM.label: (30.0, 60.0),
    BOWEL.label: (10.0, 30.0),
    SOFT_TISSUE.label: (10.0, 30.0),
    MUSCLE.label: (5.0, 15.0),
}

#: FDG grey/white matter uptake ratio in the brain phantom.
GM_WM_RATIO: tuple[float, float] = (2.8, 4.0)
#: Fraction of normal grey-matter uptake kept in a hypometabolic region.
HYPOMETABOLISM_FRACTION: tuple[float, float] = (0.5, 0.8)


def expected_suv(tissue: Tissue) -> float:
    """The torso phantom's population mean SUV of ``tissue``: the midpoint of its range (drawn uniformly per
    subject), for the myocardium the mean over :data:`MYOCARDIUM_STATES`. Each subject's SUVs are drawn
    independently of its CT numbers, so no CT -> PET model can know more of a subject's organ SUVmean than
    this (the floor of ``benchmarks/ct2pet_fidelity.py``)."""
    if tissue.label == MYOCARDIUM.label:
        return float(sum(p * (lo + hi) / 2 for p, (lo, hi) in MYOCARDIUM_STATES.values()))
    return float(sum(tissue.suv) / 2)


def label_table() -> list[dict]:
    """The table as plain dicts (for truth.json and the docs)."""
    return [{"label": t.label, "name": t.name, "hu_range_120kvp": list(t.hu), "suv_range": list(t.suv),
             "t1w_range": list(t.t1w), "bone": t.bone} for t in TISSUES.values()]

"""Torso phantom realism: lesion classes (CT-visible, CT-occult, benign), the myocardium's fasting state, arms
along the trunk, and the contrast-enhanced CT whose attenuation map stays that of the unenhanced CT.

Fast: the shape / CT functions on small grids, or the tiny preset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion
from typer.testing import CliRunner

from petsynth.data.geometry import Geometry
from petsynth.phantom import ct as ctmod
from petsynth.phantom import make_torso
from petsynth.phantom import tissues as T
from petsynth.phantom import torso
from petsynth.phantom.anatomy import paint
from petsynth.phantom.pet import area_resample
from petsynth.physics import hu_to_mu

torch.set_num_threads(1)

BODY = (T.FAT.label, T.MUSCLE.label, T.CORTICAL_BONE.label, T.MARROW.label)
ARM_TISSUES = (T.MUSCLE.label, T.CORTICAL_BONE.label, T.MARROW.label)


def subject(seed: int, *, arms: str = "raised", lesion_class: str | None = None, n: int = 0):
    """A torso subject drawn as make_torso draws it, with ``n`` lesions of one class (all classes: None)."""
    rng = np.random.default_rng([seed, 0])
    s = torso.sample_torso_subject(rng, [seed, 0])
    torso.sample_subject_state(s, np.random.default_rng([seed, 0, 1]), arms=arms)
    if n:
        torso.place_lesions(s, rng, n, (330.0, 880.0),
                            class_probs={lesion_class: 1.0} if lesion_class else None)
    return s


def noise_free_ct_around(s, les, kvp=120.0, half=24, pixel=1.5):
    """Labels and noise-free CT (label table + system blur) on a small grid centred on lesion ``les``."""
    c = np.asarray(les["center_mm"])
    zs = c[2] + pixel * np.arange(-3, 4)
    geom = Geometry.axial((2 * half, 2 * half), (pixel, pixel), zs, (c[0], c[1]))
    labels = paint(torso.torso_shapes(s), geom)
    hu120, _, bone_like = torso._lesion_tables(s)
    lut = ctmod.hu_lut(hu120, kvp)
    for lab in bone_like:
        lut[lab] = ctmod.bone_hu_at_kvp(hu120[lab], kvp)
    ct = ctmod.synthesize_ct(labels, geom, lut, 0.0, torch.Generator())
    return geom, labels, ct


# --- lesion classes -------------------------------------------------------------------------------------
def test_lesion_kinds_table_is_consistent():
    assert set(T.LESION_CLASS_PROBS) == set(T.LESION_CLASSES)
    assert sum(T.LESION_CLASS_PROBS.values()) == pytest.approx(1.0)
    for cls in T.LESION_CLASSES:
        kinds = T.lesion_kinds(cls)
        assert kinds and sum(k.weight for k in kinds) == pytest.approx(1.0)
        for k in kinds:
            assert (k.hu is None) != (k.hu_offset is None)
            assert (k.suv is None) == (cls != "benign")  # benign: own SUV range; avid: LESION_SUV
    assert {"lung_nodule", "node", "liver_hypodense", "bone_sclerotic", "bone_lytic"} == {
        k.name for k in T.lesion_kinds("ct_visible")}
    assert T.BENIGN_SUV[1] <= T.BLOOD.suv[0] < T.LESION_SUV[0]


@pytest.mark.parametrize("lesion_class", T.LESION_CLASSES)
def test_lesion_hu_contrast_follows_its_class(lesion_class):
    """Noise-free CT at the lesion centre against the host around it (and the recorded values), at 120 kVp."""
    checked = set()
    for seed in (1, 2, 3):
        s = subject(seed, lesion_class=lesion_class, n=8)
        assert s.lesions
        for les in s.lesions:
            kind = T.LESION_KINDS[les["kind"]]
            assert les["class"] == lesion_class == kind.lesion_class
            assert les["host_label"] in kind.hosts and les["host"] == T.TISSUES[les["host_label"]].name
            contrast = les["hu_120kvp"] - les["host_hu_120kvp"]
            if lesion_class == "ct_visible":
                assert abs(contrast) >= T.LESION_VISIBLE_MIN_CONTRAST_HU
                assert T.LESION_SUV[0] <= les["suv"] <= T.LESION_SUV[1]
            elif lesion_class == "ct_occult":
                assert abs(contrast) <= T.LESION_OCCULT_MAX_CONTRAST_HU
                assert T.LESION_SUV[0] <= les["suv"] <= T.LESION_SUV[1]
            else:
                assert abs(contrast) >= T.LESION_VISIBLE_MIN_CONTRAST_HU
                assert T.BENIGN_SUV[0] <= les["suv"] <= T.BENIGN_SUV[1] < T.LESION_SUV[0]
                assert les["suv"] <= max(T.BLOOD.suv[1], T.TISSUES[les["host_label"]].suv[1])
            # the image: centre voxel against the host's voxels in a shell around the lesion
            geom, labels, ct = noise_free_ct_around(s, les)
            k, j, i = (np.array(labels.shape) - 1) // 2
            if labels[k, j, i] != les["label"]:
                continue  # overpainted by a later lesion
            xs, ys, zs = geom.axes()
            cx, cy, cz = les["center_mm"]
            dist = np.sqrt((xs[None, None, :] - cx) ** 2 + (ys[None, :, None] - cy) ** 2 + (zs[:, None, None] - cz) ** 2)
            r = max(les["radii_mm"])
            shell = (labels == les["host_label"]) & (dist > r + 3) & (dist < r + 12)
            if shell.sum() < 5:
                continue
            lesion_hu, host_hu = float(ct[k, j, i]), float(np.median(ct[shell]))
            if lesion_class == "ct_occult":
                assert abs(lesion_hu - host_hu) <= T.LESION_OCCULT_MAX_CONTRAST_HU, les
            else:
                assert abs(lesion_hu - host_hu) >= T.LESION_VISIBLE_MIN_CONTRAST_HU, les
            checked.add(les["kind"])
    assert len(checked) >= 2, checked  # the image check ran on several kinds


def test_lesion_classes_recorded_in_truth_and_bone_kinds_move_with_kvp():
    s = subject(4, n=40)
    classes = {les["class"] for les in s.lesions}
    assert classes == set(T.LESION_CLASSES)
    assert len({les["kind"] for les in s.lesions}) >= 6
    study = make_torso(2, preset="tiny", flavour="ge", kvp=80, arms="raised")
    les_rows = study.truth["lesions"]
    assert les_rows
    for row in les_rows:
        assert {"class", "kind", "host", "host_label", "hu", "hu_native", "hu_120kvp", "host_hu_120kvp", "host_hu",
                "enhancement_hu", "suv"} <= set(row)
        kind = T.LESION_KINDS[row["kind"]]
        want = ctmod.bone_hu_at_kvp(row["hu_120kvp"], 80) if kind.bone else row["hu_120kvp"]
        assert row["hu"] == pytest.approx(want, abs=0.02)
        assert row["enhancement_hu"] == 0.0
    # a calcified / sclerotic lesion's CT number rises at 80 kVp (like bone): checked on the helper the study uses
    assert ctmod.bone_hu_at_kvp(700.0, 80) > 800.0


# --- myocardium -----------------------------------------------------------------------------------------
def test_myocardium_suv_follows_the_fasting_state():
    counts = dict.fromkeys(T.MYOCARDIUM_STATES, 0)
    for seed in range(300):
        s = torso.TorsoSubject(seed=[seed], height=1, width=1, depth=1, fat_mm=10, weight_kg=70, z_vertex=0, x0=0,
                               y0=0)
        torso.sample_subject_state(s, np.random.default_rng(seed))
        lo, hi = T.MYOCARDIUM_STATES[s.myocardium_state][1]
        assert lo <= s.suv[T.MYOCARDIUM.label] <= hi
        counts[s.myocardium_state] += 1
    for state, (p, _) in T.MYOCARDIUM_STATES.items():
        assert abs(counts[state] / 300 - p) < 0.1, counts
    lo = min(r[0] for _, r in T.MYOCARDIUM_STATES.values())
    hi = max(r[1] for _, r in T.MYOCARDIUM_STATES.values())
    assert T.MYOCARDIUM.suv == (lo, hi)  # the label table documents the overall range
    study = make_torso(6, preset="tiny", arms="raised")
    state = study.truth["subject"]["myocardium_state"]
    row = next(r for r in study.truth["labels"] if r["name"] == "myocardium")
    lo, hi = T.MYOCARDIUM_STATES[state][1]
    assert lo <= row["suv"] <= hi
    truth = study.truth_images["suv_truth"].volume
    inner = binary_erosion(study.truth_images["labels"].volume == T.MYOCARDIUM.label)
    if inner.any():
        assert truth[inner].max() == pytest.approx(row["suv"], rel=1e-4)


# --- arms -----------------------------------------------------------------------------------------------
def lateral_mask(study, labels_name):
    """Voxels lateral to the trunk (beyond its widest half-width in the tiny preset's body range, + 5 mm)."""
    geom = study.truth_images[labels_name].geometry
    xs, _, _ = geom.axes()
    sub = study.truth["subject"]
    half = 166.0 * sub["width_scale"] + 5.0
    lateral = np.abs(xs - sub["midline_xy_mm"][0]) > half
    return np.broadcast_to(lateral[None, None, :], geom.shape)


@pytest.fixture(scope="module")
def arms_pair():
    return (make_torso(8, preset="tiny", flavour="ge", arms="sides"),
            make_torso(8, preset="tiny", flavour="ge", arms="raised"))


def test_arms_along_the_trunk_in_ct_and_pet(arms_pair):
    sides, raised = arms_pair
    assert sides.truth["subject"]["arms"] == "sides" and raised.truth["subject"]["arms"] == "raised"
    for name in ("labels_ct", "labels"):
        lat = lateral_mask(sides, name)
        lab = sides.truth_images[name].volume
        for tissue in ARM_TISSUES:
            assert ((lab == tissue) & lat).sum() > 0, (name, tissue)
        assert not np.isin(raised.truth_images[name].volume[lateral_mask(raised, name)], BODY).any()
    # PET: the arms' tissues take up tracer; the scanner image sees them
    lat = lateral_mask(sides, "labels")
    arm_muscle = (sides.truth_images["labels"].volume == T.MUSCLE.label) & lat
    assert (sides.truth_images["suv_truth"].volume[arm_muscle] > 0).all()
    muscle_suv = next(r["suv"] for r in sides.truth["labels"] if r["name"] == "muscle")
    assert sides.images["PT"].volume[arm_muscle].mean() > 0.4 * muscle_suv
    # inside both fields of view: the CT's outer frame is air, and the PET labels lie in the reconstruction circle
    ct_lab = sides.truth_images["labels_ct"].volume
    frame = np.ones(ct_lab.shape[1:], dtype=bool)
    frame[2:-2, 2:-2] = False
    assert not np.isin(ct_lab[:, frame], BODY).any()
    geom = sides.truth_images["labels"].geometry
    xs, ys, _ = geom.axes()
    cx, cy = geom.center()[:2]
    rad = np.hypot(xs[None, :] - cx, ys[:, None] - cy)
    body = np.isin(sides.truth_images["labels"].volume, BODY).any(axis=0)
    assert rad[body].max() < 0.5 * geom.shape[2] * geom.spacing[2] - 5.0
    assert sides.truth["ct"]["fov_mm"] == pytest.approx(ct_lab.shape[2] * sides.images["CT"].geometry.spacing[2])


def test_fit_arms_keeps_wide_subjects_inside_small_fields_of_view():
    def wide(pet_radius, ct_radius):
        s = subject(9, arms="sides")
        s.width, s.depth, s.fat_mm, s.arm_gap_mm = 1.18, 1.15, 30.0, 30.0
        return s, torso.fit_arms(s, (430.0, 590.0), (0.0, 0.0), pet_radius, (0.0, 10.0), ct_radius)

    # a wide PET field of view, the usual 500 mm CT: the arms keep their size, the CT field of view is extended
    s, ext = wide(350.0, 250.0)
    assert s.arms == "sides" and s.arm_scale == 1.0 and s.arm_gap_mm == 0.0
    assert ext is not None and ext > 500.0 and s.arm_fit["ct_extended_fov_mm"] == ext
    # a narrow PET field of view (tiny preset, 520 mm): gap closed and arms thinned until they fit
    s, ext = wide(260.0, 250.0)
    assert s.arms == "sides" and s.arm_fit["adjusted"] and s.arm_scale < 1.0
    geom = Geometry.axial((140, 140), (5.0, 5.0), s.z(np.linspace(590, 430, 9)), (0.0, 0.0))
    lab = paint(torso.torso_shapes(s), geom)
    xs, ys, _ = geom.axes()
    body = np.isin(lab, BODY)
    rad = np.broadcast_to(np.hypot(xs[None, None, :], ys[None, :, None]), lab.shape)
    assert body.any() and rad[body].max() <= 260.0 - torso.ARM_PET_MARGIN_MM + 5.0
    crad = np.broadcast_to(np.hypot(xs[None, None, :], ys[None, :, None] - 10.0), lab.shape)
    assert crad[body].max() <= (ext / 2 if ext else 250.0) + 5.0
    lateral = np.abs(xs - s.x0) > 166.0 * s.width + 3.0
    assert np.isin(lab[:, :, lateral], (T.CORTICAL_BONE.label,)).any()  # the humerus is still there


# --- contrast-enhanced CT -------------------------------------------------------------------------------
ENHANCED = {T.BLOOD.label: "blood_pool", T.KIDNEY.label: "kidney", T.LIVER.label: "liver", T.SPLEEN.label: "spleen"}


@pytest.fixture(scope="module")
def contrast_pair():
    kw = dict(preset="tiny", flavour="ge", kvp=80, arms="raised")
    return make_torso(12, contrast="venous", **kw), make_torso(12, contrast="none", **kw)


def mu_failures(mu, labels, rows, kvp):
    """Enhanced organs whose mean mu (interior PET voxels) is not that of the unenhanced CT number (0.5 %) or
    reaches the bone-branch value of the enhanced CT number."""
    bad = []
    for lab, name in ENHANCED.items():
        m = binary_erosion(labels == lab)
        if m.sum() < 3:
            continue
        native = float(hu_to_mu(np.array([rows[name]["hu_native"]]), kvp)[0])
        enhanced = float(hu_to_mu(np.array([rows[name]["hu"]]), kvp)[0])
        got = float(mu[m].mean())
        if abs(got - native) > 0.005 * native or got >= enhanced - 0.25 * (enhanced - native):
            bad.append((name, got, native, enhanced))
    return bad


def test_contrast_enhanced_ct_ranges(contrast_pair, tmp_path):
    import pydicom

    from petsynth.phantom import write_study

    venous, plain = contrast_pair
    assert venous.truth["ct"]["contrast"] == "venous" and plain.truth["ct"]["contrast"] == "none"
    assert plain.truth["ct"]["enhancement"] == []
    f = ctmod.iodine_factor(80)
    assert f == pytest.approx((120 / 80) ** ctmod.IODINE_KVP_EXPONENT) and f > 1.4
    applied = {e["label"]: e for e in venous.truth["ct"]["enhancement"]}
    rows = {r["name"]: r for r in venous.truth["labels"]}
    for lab, (lo, hi) in T.VENOUS_ENHANCEMENT_HU.items():
        e = applied[lab]
        assert lo <= e["hu_120kvp"] <= hi and e["hu"] == pytest.approx(e["hu_120kvp"] * f, abs=0.02)
        row = rows[T.TISSUES[lab].name]
        assert row["hu"] == pytest.approx(row["hu_native"] + e["hu"], abs=0.02)
    assert rows["fat"]["enhancement_hu"] == 0 and rows["cortical_bone"]["enhancement_hu"] == 0
    for les in venous.truth["lesions"]:
        if les["kind"] in ("liver_cyst", "lung_granuloma", "lipoma", "bone_sclerotic"):
            assert les["enhancement_hu"] == 0
    # the images: enhanced organs' CT within the documented enhanced range and above the unenhanced CT
    ct_v, ct_n = venous.images["CT"].volume, plain.images["CT"].volume
    labels = venous.truth_images["labels_ct"].volume
    assert np.array_equal(labels, plain.truth_images["labels_ct"].volume)
    sd = venous.truth["ct"]["noise_sd_hu"]
    for lab, name in ENHANCED.items():
        m = binary_erosion(labels == lab)
        if m.sum() < 20:
            continue
        t = T.TISSUES[lab]
        lo_e, hi_e = T.VENOUS_ENHANCEMENT_HU[lab]
        tol = 4 * sd / np.sqrt(m.sum() / 4) + 2
        assert t.hu[0] + lo_e * f - tol <= ct_v[m].mean() <= t.hu[1] + hi_e * f + tol, name
        assert ct_v[m].mean() - ct_n[m].mean() == pytest.approx(rows[name]["enhancement_hu"], abs=tol), name
    fat = binary_erosion(labels == T.FAT.label)
    assert abs(ct_v[fat].mean() - ct_n[fat].mean()) < 1.0  # no enhancement, same noise
    # the DICOM CT says so
    ct_file = next((write_study(venous, tmp_path) / "CT").glob("*.dcm"))
    ds = pydicom.dcmread(ct_file, stop_before_pixels=True)
    assert ds.ContrastBolusRoute == "IV" and "CONTRAST" in ds.ContrastBolusAgent
    assert "contrast" in ds.SeriesDescription.lower()


def test_mu_map_ignores_iodine(contrast_pair):
    venous, plain = contrast_pair
    kvp = venous.truth["ct"]["kvp"]
    mu = venous.truth_images["mu"].volume
    # the same subject without contrast has the same attenuation map
    np.testing.assert_allclose(mu, plain.truth_images["mu"].volume, rtol=1e-5, atol=1e-6)
    labels = venous.truth_images["labels"].volume
    rows = {r["name"]: r for r in venous.truth["labels"]}
    assert mu_failures(mu, labels, rows, kvp) == []
    assert mu[binary_erosion(labels == T.BLOOD.label)].max() < 0.102  # soft tissue, not bone-like
    # ... and the check has teeth: mu converted from the enhanced CT (as a naive scanner would) fails it
    ct_geom, pet_geom = venous.images["CT"].geometry, venous.truth_images["labels"].geometry
    wrong = hu_to_mu(area_resample(venous.images["CT"].volume, ct_geom, pet_geom, fill=-1000.0), kvp)
    failures = mu_failures(np.asarray(wrong), labels, rows, kvp)
    assert {name for name, *_ in failures} >= {"blood_pool"} or {name for name, *_ in failures} >= {"kidney"}


# --- CLI ------------------------------------------------------------------------------------------------
def test_cli_arms_and_contrast(tmp_path):
    from petsynth.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["phantom", str(tmp_path / "a"), "--task", "ct2pet", "--seed", "3", "--preset", "tiny",
                              "--format", "nifti", "--arms", "sides", "--contrast", "venous"])
    assert res.exit_code == 0, res.output
    truth = json.loads((tmp_path / "a" / "ct2pet-s3-0000" / "truth" / "truth.json").read_text())
    assert truth["subject"]["arms"] == "sides" and truth["ct"]["contrast"] == "venous"
    assert truth["subject"]["myocardium_state"] in T.MYOCARDIUM_STATES
    assert runner.invoke(app, ["phantom", str(tmp_path / "b"), "--arms", "up"]).exit_code != 0
    assert runner.invoke(app, ["phantom", str(tmp_path / "b"), "--contrast", "arterial"]).exit_code != 0
    assert runner.invoke(app, ["phantom", str(tmp_path / "b"), "--task", "mr2pet", "--arms", "sides"]).exit_code != 0
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_expected_suv_is_the_mean_of_the_subjects_draws_and_the_ct_does_not_tell_it():
    """The floor of CT -> PET organ fidelity: each subject's organ SUV is drawn independently of its CT number,
    so the population mean (:func:`tissues.expected_suv`) is the best a CT can tell. Closed form (the range's
    midpoint; the myocardium's states 0.35 x 2 + 0.35 x 3.75 + 0.30 x 8.5) against 600 subjects' draws."""
    from petsynth.phantom import tissues as T
    from petsynth.phantom.torso import sample_subject_state, sample_torso_subject

    assert T.expected_suv(T.LIVER) == pytest.approx(2.5)
    assert T.expected_suv(T.MYOCARDIUM) == pytest.approx(0.35 * 2.0 + 0.35 * 3.75 + 0.30 * 8.5)
    subjects = []
    for i in range(600):
        rng = np.random.default_rng([3, i])
        s = sample_torso_subject(rng, [3, i])
        sample_subject_state(s, rng)
        subjects.append(s)
    for tissue in (T.LIVER, T.KIDNEY, T.BLADDER, T.MUSCLE, T.MYOCARDIUM):
        suv = np.array([s.suv[tissue.label] for s in subjects])
        hu = np.array([s.hu[tissue.label] for s in subjects])
        assert suv.mean() == pytest.approx(T.expected_suv(tissue), rel=0.05), tissue.name
        assert abs(np.corrcoef(suv, hu)[0, 1]) < 0.15, tissue.name  # 600 draws: |r| of independent ones < 0.11 (3 sd)

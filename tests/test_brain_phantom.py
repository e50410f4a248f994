"""Brain phantom (mr2pet): field strengths, reference-region labels, hypometabolism patterns and a PET in another
frame of reference, checked against independent truth (the published T1 laws and the signal equation written out
here, pydicom / nibabel readers, scipy rotations), with the tiny preset."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from scipy.ndimage import binary_dilation, binary_erosion
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from petsynth import phantom as ph
from petsynth.data.geometry import resample_affine
from petsynth.phantom import tissues as T

torch.set_num_threads(1)

FIELDS = (1.5, 3.0, 5.0, 7.0)
WM, GM, CSF, HYPO = T.WHITE_MATTER.label, T.GREY_MATTER.label, T.CSF.label, T.GM_HYPOMETABOLIC.label
CBL_GM, CBL_WM, STEM = 23, 24, 25
#: tiny grids, but the whole head axially (the tiny preset's 16 PET slices stop above the cerebellum)
TINY_HEAD = dataclasses.replace(ph.PRESETS["tiny"], name="tiny-head", brain_num_slices=None)


# --- independent physics: Rooney et al. 2007 T1 laws, proton densities, IR signal, ADNI timing ---------------
def t1_rooney(tissue: str, b: float) -> float:
    return {"wm": 0.583 * b ** 0.382, "gm": 0.857 * b ** 0.376, "csf": 4.3}[tissue]


def ir_signal(tissue: str, b: float, tr: float = 2.3, ti: float = 0.9) -> float:
    pd = {"wm": 0.69, "gm": 0.80, "csf": 1.0}[tissue]
    t1 = t1_rooney(tissue, b)
    return pd * abs(1 - 2 * math.exp(-ti / t1) + math.exp(-tr / t1))


def gm_wm(b: float) -> float:
    return ir_signal("gm", b) / ir_signal("wm", b)


def noise_factor(b: float) -> float:
    """sd(B) / sd(3T) relative to white matter: (3/B)^1.65 * S_WM(3) / S_WM(B) (Pohmann et al. 2016)."""
    return (3.0 / b) ** 1.65 * ir_signal("wm", 3.0) / ir_signal("wm", b)


def eroded(mask, n=1):
    return binary_erosion(mask, iterations=n)


# --- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def by_field():
    studies = ph.make_brain_fields(7, 0, FIELDS, preset="tiny")
    return dict(zip(FIELDS, studies))


@pytest.fixture(scope="module")
def plain():
    return ph.make_brain(7, preset="tiny")


#: tiny, but a PET output grid of 2.5 mm (simulated on tiny's 64-voxel grid and resampled): a PET sampled
#: finely for its ~4.5 mm resolution, so that moving it there and back (two linear interpolations) loses
#: little; on tiny's 5 mm voxels the two interpolations alone bring the correlation down to ~0.93.
FINE_PET = dataclasses.replace(ph.PRESETS["tiny"], name="tiny-fine-pet", brain_pet_size=96, brain_pet_pixel_mm=2.5,
                               brain_pet_slice_mm=2.5, brain_num_slices=32)
MOVE = {"rotation_deg": (4.0, -3.0, 6.0), "translation_mm": (8.0, -5.0, 6.0)}


@pytest.fixture(scope="module")
def plain_fine():
    return ph.make_brain(7, preset=FINE_PET)


@pytest.fixture(scope="module")
def displaced():
    return ph.make_brain(7, preset=FINE_PET, pet_displacement=MOVE)


# --- field strengths --------------------------------------------------------------------------------------
def test_t1_and_grey_white_contrast_follow_the_signal_equation(by_field):
    ratios = {}
    s3 = by_field[3.0]
    rows3 = {r["label"]: r for r in s3.truth["labels"]}
    for b, s in by_field.items():
        mr, lab = s.images["MR"].volume, s.truth_images["labels_mr"].volume
        t1 = s.truth["mr"]["t1_ms"]
        assert s.truth["mr"]["field_strength_t"] == b
        assert t1["white_matter"] == pytest.approx(1000 * t1_rooney("wm", b), rel=1e-4)
        assert t1["grey_matter"] == pytest.approx(1000 * t1_rooney("gm", b), rel=1e-4)
        assert t1["csf"] == pytest.approx(4300.0)
        assert t1["white_matter"] < t1["deep_grey_matter"] < t1["grey_matter"]
        # label table: GM relative to WM = its drawn 3 T value x the signal-equation change; fat as drawn
        rows = {r["label"]: r for r in s.truth["labels"]}
        want = rows3[GM]["t1w_relative"] * gm_wm(b) / gm_wm(3.0)
        assert rows[GM]["t1w_relative"] == pytest.approx(want, abs=2e-4)
        assert rows[T.FAT.label]["t1w_relative"] == rows3[T.FAT.label]["t1w_relative"]
        # the image: mean GM / mean WM over interior voxels (noise averages out)
        ratios[b] = mr[lab == GM].mean() / mr[eroded(lab == WM)].mean()
    for b in FIELDS:
        predicted = ratios[3.0] * gm_wm(b) / gm_wm(3.0)
        assert ratios[b] == pytest.approx(predicted, rel=0.04), (b, ratios)
    # with the fixed 3 T protocol, grey/white contrast falls as B0 rises
    assert all(ratios[a] > ratios[b] for a, b in zip(FIELDS, FIELDS[1:]))
    assert gm_wm(1.5) > gm_wm(3.0) > gm_wm(7.0)


def test_noise_falls_and_bias_grows_with_field(by_field):
    sd3 = by_field[3.0].truth["mr"]["rician_noise_sd_fraction_of_wm"]
    bias3 = by_field[3.0].truth["mr"]["bias_field_amplitude"]
    spread = {}
    for b, s in by_field.items():
        mr, lab = s.images["MR"].volume, s.truth_images["labels_mr"].volume
        rec = s.truth["mr"]
        assert rec["rician_noise_sd_fraction_of_wm"] == pytest.approx(sd3 * noise_factor(b), rel=1e-6)
        assert rec["bias_field_amplitude"] == pytest.approx(bias3 * b / 3.0, rel=1e-9)
        assert rec["rician_noise_sd_fraction_of_wm_3t"] == sd3 and rec["bias_field_amplitude_3t"] == bias3
        # measured: air well outside the head holds pure Rician (Rayleigh) noise, E[x^2] = 2 sd^2;
        # white matter is the stored 800
        air = ~binary_dilation(lab > 0, iterations=3)
        assert air.sum() > 5000
        sd = math.sqrt(float(np.mean(mr[air].astype(np.float64) ** 2)) / 2.0) / ph.brain.MR_WHITE_MATTER_SIGNAL
        assert sd == pytest.approx(sd3 * noise_factor(b), rel=0.02), b
        # bias: the spread of white-matter means over the 8 octants of the head (noise averages out)
        wm = eroded(lab == WM)
        zz, yy, xx = np.nonzero(wm)
        cz, cy, cx = np.median(zz), np.median(yy), np.median(xx)
        means = []
        for oz in (zz < cz, zz >= cz):
            for oy in (yy < cy, yy >= cy):
                for ox in (xx < cx, xx >= cx):
                    sel = oz & oy & ox
                    means.append(mr[zz[sel], yy[sel], xx[sel]].mean())
        spread[b] = float(np.std(np.log(means)))
    assert all(spread[a] < spread[b] for a, b in zip(FIELDS, FIELDS[1:])), spread
    assert spread[7.0] / spread[3.0] == pytest.approx(7.0 / 3.0, rel=0.25)
    assert noise_factor(7.0) < 1.0 < noise_factor(1.5)


def test_pet_and_truth_identical_across_fields_and_3t_is_make_brain(by_field, plain):
    ref = by_field[3.0]
    for b, s in by_field.items():
        assert s.study_id == f"mr2pet-s7-0000-{b:g}T" and s.truth["patient_id"] == "mr2pet-s7-0000"
        assert np.array_equal(s.images["PT"].volume, ref.images["PT"].volume)
        assert set(s.truth_images) == set(ref.truth_images)
        for name, img in s.truth_images.items():
            assert np.array_equal(img.volume, ref.truth_images[name].volume), name
        assert s.truth["hypometabolism"] == ref.truth["hypometabolism"]
        assert s.truth["acquisition"] == ref.truth["acquisition"]
        if b != 3.0:
            assert not np.array_equal(s.images["MR"].volume, ref.images["MR"].volume)
    # the 3 T study of the set is a plain make_brain, bit for bit
    for name in ("MR", "PT"):
        assert np.array_equal(plain.images[name].volume, ref.images[name].volume)
        assert plain.images[name].geometry == ref.images[name].geometry
    for name, img in plain.truth_images.items():
        assert np.array_equal(img.volume, ref.truth_images[name].volume)
    strip = lambda t: {k: v for k, v in t.items() if k != "study_id"}  # noqa: E731
    assert json.dumps(strip(plain.truth), sort_keys=True) == json.dumps(strip(ref.truth), sort_keys=True)
    assert plain.study_id == "mr2pet-s7-0000"
    with pytest.raises(ValueError):
        ph.make_brain(7, preset="tiny", field_tesla=12.0)
    with pytest.raises(ValueError):
        ph.make_brain_fields(7, 0, (3.0, 3.0), preset="tiny")


# --- reference-region labels -----------------------------------------------------------------------------
def test_cerebellum_and_brainstem_labels():
    s = ph.make_brain(7, preset=TINY_HEAD, hypometabolism=False)
    lab_mr = s.truth_images["labels_mr"].volume
    lab = s.truth_images["labels"].volume
    for label in (CBL_GM, CBL_WM, STEM):
        assert (lab_mr == label).sum() > 20 and (lab == label).any(), label
    rows = {r["label"]: r for r in s.truth["labels"]}
    assert rows[CBL_GM]["name"] == "cerebellar_grey_matter" and rows[STEM]["name"] == "brainstem"
    assert 0.75 <= rows[CBL_GM]["suv"] / rows[GM]["suv"] <= 0.9
    assert rows[CBL_WM]["suv"] == rows[WM]["suv"]
    assert 1.0 <= rows[STEM]["suv"] / rows[WM]["suv"] <= 1.3
    assert rows[CBL_GM]["t1w_relative"] == rows[GM]["t1w_relative"]
    assert rows[STEM]["hu_120kvp"] == rows[WM]["hu_120kvp"]
    # where they are: the cerebellum posterior and inferior to the cerebrum, the brainstem on the midline
    geom = s.truth_images["labels_mr"].geometry
    c = np.array(s.truth["subject"]["brain_center_mm"])

    def centroid(mask):
        k, j, i = np.nonzero(mask)
        return geom.index_to_world(np.stack([i, j, k], axis=1)).mean(axis=0)

    cbl = centroid(np.isin(lab_mr, (CBL_GM, CBL_WM)))
    assert cbl[1] > c[1] + 20 and cbl[2] < c[2] - 30
    assert abs(centroid(lab_mr == STEM)[0] - c[0]) < 5
    # the PET: cerebellar grey below cortical grey (suv_truth and the image)
    truth = s.truth_images["suv_truth"].volume
    assert truth[lab == CBL_GM].mean() < truth[lab == GM].mean()
    pet = s.images["PT"].volume
    assert pet[lab == CBL_GM].mean() < pet[lab == GM].mean()
    # the torso phantom knows nothing of them
    torso = ph.make_torso(3, preset="tiny")
    assert not np.isin(torso.truth_images["labels_ct"].volume, (CBL_GM, CBL_WM, STEM)).any()
    assert not {CBL_GM, CBL_WM, STEM} & {r["label"] for r in torso.truth["labels"]}


# --- hypometabolism patterns -----------------------------------------------------------------------------
def test_patterns_record_regions_and_lower_pet():
    studies = {p: ph.make_brain(7, preset="tiny", pattern=p) for p in ("hc", "ad", "temporal", "occipital")}
    hc = studies["hc"]
    assert hc.truth["hypometabolism"] == [] and hc.truth["diagnosis"] == "healthy control"
    assert not (hc.truth_images["labels_mr"].volume == HYPO).any()
    geom = hc.truth_images["labels_mr"].geometry
    center = np.array(hc.truth["subject"]["brain_center_mm"])
    base = hc.truth_images["labels_mr"].volume
    for name, s in studies.items():
        lab = s.truth_images["labels_mr"].volume
        # same subject whatever the pattern: only grey matter turns hypometabolic
        assert np.array_equal(np.where(lab == HYPO, GM, lab), base)
        if name == "hc":
            continue
        regions = s.truth["hypometabolism"]
        if name == "ad":
            assert s.truth["diagnosis"] == "AD-like"
            got = {(r["lobe"], r["hemisphere"]) for r in regions}
            assert {("temporal", "left"), ("temporal", "right"), ("parietal", "left"), ("parietal", "right")} <= got
        else:
            assert s.truth["diagnosis"] == f"focal {name}"
            assert [r["lobe"] for r in regions] == [name] and regions[0]["hemisphere"] in ("left", "right")
        k, j, i = np.nonzero(lab == HYPO)
        pts = geom.index_to_world(np.stack([i, j, k], axis=1))
        inside = np.zeros(len(pts), bool)
        for r in regions:
            assert set(r) >= {"lobe", "hemisphere", "center_mm", "radius_mm", "fraction_of_normal", "label"}
            assert r["label"] == HYPO and 0.5 <= r["fraction_of_normal"] <= 0.8
            d = np.linalg.norm(pts - np.array(r["center_mm"]), axis=1)
            near = d <= r["radius_mm"] + 3.5
            if r["lobe"] in ("temporal", "parietal", "frontal", "occipital"):
                assert near.sum() > 3, r  # every lobe region holds hypometabolic grey matter
                # LPS: +x is the patient's left
                assert (np.array(r["center_mm"])[0] > center[0]) == (r["hemisphere"] == "left")
            inside |= near
        assert inside.all()  # and nothing outside the recorded spheres
        # PET: lower in the region than the healthy control of the same subject, by about the fraction
        mask_pet = s.truth_images["labels"].volume == HYPO
        assert mask_pet.sum() > 3
        frac = regions[0]["fraction_of_normal"]
        truth_s, truth_hc = s.truth_images["suv_truth"].volume, hc.truth_images["suv_truth"].volume
        t_ratio = truth_s[mask_pet].mean() / truth_hc[mask_pet].mean()
        p_ratio = s.images["PT"].volume[mask_pet].mean() / hc.images["PT"].volume[mask_pet].mean()
        assert frac - 0.05 < t_ratio < 1.0 - 0.1 * (1 - frac)
        assert p_ratio < 0.95 and p_ratio > frac - 0.15
    with pytest.raises(ValueError):
        ph.make_brain(7, preset="tiny", pattern="cerebellar")


# --- PET in another frame of reference -------------------------------------------------------------------
def _brain_correlation(a, b, mask):
    x, y = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum()))


def test_displaced_pet_matrix_maps_mr_frame_to_pet_frame(displaced, plain_fine):
    plain = plain_fine
    pf = displaced.truth["pet_frame"]
    assert displaced.truth["truth_frame"] == "mr"
    m = np.array(pf["matrix"])
    # independent construction: extrinsic x-y-z rotation (x first) about the centre, then the shift
    r = Rotation.from_euler("xyz", pf["rotation_deg"], degrees=True).as_matrix()
    c, t = np.array(pf["center_mm"]), np.array(pf["translation_mm"])
    np.testing.assert_allclose(m[:3, :3], r, atol=1e-8)
    np.testing.assert_allclose(m[:3, 3], c + t - r @ c, atol=1e-6)
    np.testing.assert_allclose(c, displaced.truth["subject"]["brain_center_mm"], atol=6e-3)  # recorded to 0.01 mm
    # only the PET moved: MR and truth volumes as in the undisplaced study
    assert np.array_equal(displaced.images["MR"].volume, plain.images["MR"].volume)
    for name, img in plain.truth_images.items():
        assert np.array_equal(displaced.truth_images[name].volume, img.volume), name
    geom = plain.images["PT"].geometry
    assert displaced.images["PT"].geometry == geom
    # resample the displaced PET back through the matrix: value at MR-frame point p is PET_displaced(M p)
    moved = displaced.images["PT"].volume
    back = resample_affine(moved, np.linalg.inv(m) @ geom.affine, geom, mode="bilinear")
    valid = resample_affine(resample_affine(np.ones(geom.shape, np.float32), m @ geom.affine, geom),
                            np.linalg.inv(m) @ geom.affine, geom) > 0.999
    labels = plain.truth_images["labels"].volume
    brain = np.isin(labels, (GM, WM, HYPO, T.DEEP_GREY.label, CBL_GM, CBL_WM, STEM)) & valid
    assert brain.sum() > 500
    ref = plain.images["PT"].volume
    assert _brain_correlation(back, ref, brain) > 0.98
    assert _brain_correlation(moved, ref, brain) < 0.9  # it really moved
    # the wrong direction does not undo it
    wrong = resample_affine(moved, m @ geom.affine, geom, mode="bilinear")
    assert _brain_correlation(wrong, ref, brain) < _brain_correlation(back, ref, brain) - 0.05


def test_random_displacement_limits():
    s = ph.make_brain(7, index=2, preset="tiny", pet_displacement="random")
    pf = s.truth["pet_frame"]
    m = np.array(pf["matrix"])
    angle = np.degrees(Rotation.from_matrix(m[:3, :3]).magnitude())
    assert 0 < angle <= 10.0 + 1e-6 and all(abs(a) <= 10 for a in pf["rotation_deg"])
    assert 0 < np.linalg.norm(pf["translation_mm"]) <= 20.0
    assert 1 <= s.truth["pet_visit_days_after_mr"] <= 60
    again = ph.make_brain(7, index=2, preset="tiny", pet_displacement="random")
    assert again.truth["pet_frame"] == pf and np.array_equal(again.images["PT"].volume, s.images["PT"].volume)


def _series(folder):
    dss = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    vol = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss])
    return dss, vol


def test_displaced_pet_is_a_separate_dicom_study(displaced, tmp_path):
    folder = ph.write_study(displaced, tmp_path, fmt="dicom")
    mr, _ = _series(folder / "MR")
    pt, vol = _series(folder / "PT")
    assert len({d.StudyInstanceUID for d in mr}) == 1 and len({d.StudyInstanceUID for d in pt}) == 1
    assert mr[0].StudyInstanceUID != pt[0].StudyInstanceUID
    assert mr[0].FrameOfReferenceUID != pt[0].FrameOfReferenceUID
    assert mr[0].PatientID == pt[0].PatientID == "mr2pet-s7-0000"
    days = displaced.truth["pet_visit_days_after_mr"]
    assert 1 <= days <= 60
    d_mr = dt.datetime.strptime(mr[0].StudyDate, "%Y%m%d")
    d_pt = dt.datetime.strptime(pt[0].StudyDate, "%Y%m%d")
    assert (d_pt - d_mr).days == days
    series_gap = dt.datetime.strptime(pt[0].SeriesDate, "%Y%m%d") - dt.datetime.strptime(mr[0].SeriesDate, "%Y%m%d")
    assert series_gap.days == days
    # SUV by hand from the PET's own (later) header returns the displaced PET
    rp = pt[0].RadiopharmaceuticalInformationSequence[0]
    inj = dt.datetime.strptime(rp.RadiopharmaceuticalStartDateTime[:14], "%Y%m%d%H%M%S")
    assert inj.date() == d_pt.date()
    t = pt[0].SeriesTime
    series = dt.datetime.strptime(pt[0].SeriesDate + t[:6], "%Y%m%d%H%M%S")
    decay = 2.0 ** (-(series - inj).total_seconds() / float(rp.RadionuclideHalfLife))
    suv = vol * float(pt[0].PatientWeight) * 1000.0 / (float(rp.RadionuclideTotalDose) * decay)
    pet = displaced.images["PT"].volume
    np.testing.assert_allclose(suv, pet, atol=float(pet.max()) / 20000 + 1e-6, rtol=2e-3)
    info = json.loads((folder / "truth" / "truth.json").read_text())
    assert info["pet_frame"]["matrix"] == displaced.truth["pet_frame"]["matrix"]
    assert info["dicom"]["pet_study_instance_uid"] == pt[0].StudyInstanceUID
    # NIfTI: just the moved PET
    nf = ph.write_study(displaced, tmp_path / "n", fmt="nifti")
    vol_n = np.asarray(nib.load(str(nf / "pet.nii.gz")).dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(vol_n, pet)


# --- writing and the command line ------------------------------------------------------------------------
def test_write_studies_per_field(tmp_path):
    paths = ph.write_studies(tmp_path, task="mr2pet", studies=1, seed=7, fmt="dicom", preset="tiny",
                             fields=(1.5, 7))
    assert [p.name for p in paths] == ["mr2pet-s7-0000-1.5T", "mr2pet-s7-0000-7T"]
    heads = {}
    for p, b in zip(paths, (1.5, 7.0)):
        assert {q.name for q in p.iterdir()} >= {"MR", "PT", "truth"}
        info = json.loads((p / "truth" / "truth.json").read_text())
        assert info["mr"]["field_strength_t"] == b and info["patient_id"] == "mr2pet-s7-0000"
        mr = pydicom.dcmread(next((p / "MR").glob("*.dcm")))
        pt = pydicom.dcmread(next((p / "PT").glob("*.dcm")))
        assert float(mr.MagneticFieldStrength) == b
        assert float(mr.ImagingFrequency) == pytest.approx(42.577 * b, rel=1e-6)
        assert float(mr.RepetitionTime) == 2300 and float(mr.InversionTime) == 900
        assert mr.StudyInstanceUID == pt.StudyInstanceUID and mr.PatientID == pt.PatientID == "mr2pet-s7-0000"
        heads[b] = mr
    assert heads[1.5].StudyInstanceUID != heads[7.0].StudyInstanceUID
    _, pet_a = _series(paths[0] / "PT")
    _, pet_b = _series(paths[1] / "PT")
    np.testing.assert_array_equal(pet_a, pet_b)
    index = json.loads((tmp_path / "phantoms.json").read_text())
    assert [s["study_id"] for s in index["studies"]] == [p.name for p in paths]
    # the default: one study per subject, under its usual name, 3 T in the header
    (plain,) = ph.write_studies(tmp_path / "d", task="mr2pet", studies=1, seed=7, fmt="dicom", preset="tiny")
    assert plain.name == "mr2pet-s7-0000"
    assert float(pydicom.dcmread(next((plain / "MR").glob("*.dcm"))).MagneticFieldStrength) == 3.0
    for bad in (dict(task="ct2pet", fields=(1.5, 3)), dict(task="mr2pet", fields=(3, 12)),
                dict(task="mr2pet", fields=(0.2,)), dict(task="ct2pet", pattern="ad"),
                dict(task="lpet2spet", pet_displacement="random")):
        with pytest.raises(ValueError):
            ph.write_studies(tmp_path / "bad", studies=1, seed=7, preset="tiny", **bad)
    assert not (tmp_path / "bad").exists()


def test_cli_phantom_brain_options(tmp_path):
    from petsynth.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["phantom", str(tmp_path), "--task", "mr2pet", "--seed", "3", "--preset", "tiny",
                              "--format", "nifti", "--field", "1.5,7", "--pattern", "ad", "--displace-pet"])
    assert res.exit_code == 0, res.output
    for b in ("1.5T", "7T"):
        info = json.loads((tmp_path / f"mr2pet-s3-0000-{b}" / "truth" / "truth.json").read_text())
        assert info["diagnosis"] == "AD-like" and info["pet_frame"] is not None
        assert info["mr"]["field_strength_t"] == float(b[:-1])
    assert runner.invoke(app, ["phantom", str(tmp_path / "x"), "--task", "mr2pet", "--field", "3,20"]).exit_code != 0
    assert runner.invoke(app, ["phantom", str(tmp_path / "x"), "--task", "mr2pet", "--pattern", "x"]).exit_code != 0
    assert runner.invoke(app, ["phantom", str(tmp_path / "x"), "--field", "1.5,3"]).exit_code == 1  # ct2pet
    help_text = runner.invoke(app, ["phantom", "--help"]).output
    assert "--field" in help_text and "tesla" in help_text and "--displace-pet" in help_text

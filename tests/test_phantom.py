"""Digital phantoms: checked against independent truth, with the tiny preset.

SUV is computed here by hand from the DICOM header (the formula of docs/formulas.md), never with petsynth's readers.
"""

from __future__ import annotations

import datetime as dt
import json
import math

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from scipy.ndimage import binary_erosion
from typer.testing import CliRunner

from petsynth import phantom as ph
from petsynth.phantom import ct as ctmod
from petsynth.phantom import tissues as T
from petsynth.physics import hu_to_mu

torch.set_num_threads(1)

LIVER, MUSCLE, FAT, LUNG = T.LIVER.label, T.MUSCLE.label, T.FAT.label, T.LUNG.label


# --- independent readers (pydicom / nibabel only) -------------------------------------------------------
def read_series(folder):
    """Datasets of a series sorted along the slice normal, and the physical volume (slope/intercept applied)."""
    dss = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    assert dss, f"no DICOM in {folder}"
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda d: float(np.dot(normal, [float(v) for v in d.ImagePositionPatient])))
    vol = np.stack([d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)
                    for d in dss])
    return dss, vol


def _dicom_dt(date: str, time: str) -> dt.datetime:
    hh, mm, ss = int(time[:2]), int(time[2:4]), float(time[4:] or 0)
    return dt.datetime.strptime(date, "%Y%m%d") + dt.timedelta(hours=hh, minutes=mm, seconds=ss)


def suv_by_hand(dss, vol):
    """docs/formulas.md: SUV = value * weight[kg] * 1000 / (dose * 2^(-dt / half-life)), dt from injection to the
    series time (or the earliest acquisition time when that is earlier)."""
    d0 = dss[0]
    assert d0.Units == "BQML" and d0.DecayCorrection == "START"
    rp = d0.RadiopharmaceuticalInformationSequence[0]
    inj = dt.datetime.strptime(rp.RadiopharmaceuticalStartDateTime[:14], "%Y%m%d%H%M%S")
    series = _dicom_dt(d0.SeriesDate, d0.SeriesTime)
    earliest = min(_dicom_dt(d.AcquisitionDate, d.AcquisitionTime) for d in dss)
    scan = series if series <= earliest else earliest
    decay = 2.0 ** (-(scan - inj).total_seconds() / float(rp.RadionuclideHalfLife))
    return vol * float(d0.PatientWeight) * 1000.0 / (float(rp.RadionuclideTotalDose) * decay)


def read_nifti_lps(path):
    """(volume (nz, ny, nx), voxel->LPS affine) from a NIfTI file, converting by hand."""
    img = nib.load(str(path))
    vol = np.asarray(img.dataobj).transpose(2, 1, 0)
    return vol, np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine


def dicom_affine(dss):
    """Voxel (i, j, k) -> LPS affine of a sorted single-frame series."""
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    dy, dx = (float(v) for v in dss[0].PixelSpacing)
    p0 = np.array([float(v) for v in dss[0].ImagePositionPatient])
    p1 = np.array([float(v) for v in dss[-1].ImagePositionPatient])
    a = np.eye(4)
    a[:3, 0] = iop[:3] * dx
    a[:3, 1] = iop[3:] * dy
    a[:3, 2] = (p1 - p0) / max(len(dss) - 1, 1)
    a[:3, 3] = p0
    return a


def centroid_world(mask, affine):
    k, j, i = np.nonzero(mask)
    return (affine @ np.stack([i.mean(), j.mean(), k.mean(), 1.0]))[:3]


def eroded(mask, n=1):
    return binary_erosion(mask, iterations=n)


# --- fixtures -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct2pet_dicom(tmp_path_factory):
    out = tmp_path_factory.mktemp("ct2pet")
    folders = {}
    for i, flavour in enumerate(("ge", "siemens", "philips")):
        study = ph.make_study("ct2pet", 7, i, preset="tiny", flavour=flavour)
        folders[flavour] = ph.write_study(study, out, fmt="dicom")
    return folders


@pytest.fixture(scope="module")
def lpet_nifti(tmp_path_factory):
    out = tmp_path_factory.mktemp("lpet")
    return ph.write_studies(out, task="lpet2spet", studies=1, seed=11, fmt="nifti", preset="tiny",
                            dose_fractions=[0.25, 0.05])[0]


@pytest.fixture(scope="module")
def brain_study():
    return ph.make_brain(5, preset="tiny", hypometabolism=True)


# --- PET/CT DICOM ---------------------------------------------------------------------------------------
def test_every_series_reads_back_with_consistent_headers(ct2pet_dicom):
    for flavour, folder in ct2pet_dicom.items():
        truth = json.loads((folder / "truth" / "truth.json").read_text())
        ct, _ = read_series(folder / "CT")
        pt, _ = read_series(folder / "PT")
        assert {d.Modality for d in ct} == {"CT"} and {d.Modality for d in pt} == {"PT"}
        assert {d.SOPClassUID for d in ct} == {pydicom.uid.CTImageStorage}
        assert {d.SOPClassUID for d in pt} == {pydicom.uid.PositronEmissionTomographyImageStorage}
        assert {d.StudyInstanceUID for d in ct + pt} == {ct[0].StudyInstanceUID}
        assert {d.FrameOfReferenceUID for d in ct + pt} == {ct[0].FrameOfReferenceUID}
        assert ct[0].SeriesInstanceUID != pt[0].SeriesInstanceUID
        assert len({d.SOPInstanceUID for d in ct + pt}) == len(ct) + len(pt)
        assert 80 <= float(ct[0].KVP) <= 140 and float(ct[0].KVP) == truth["ct"]["kvp"]
        assert {float(d.RescaleIntercept) for d in ct} == {-1024.0} and {float(d.RescaleSlope) for d in ct} == {1.0}
        assert ct[0].pixel_array.dtype == np.int16
        assert str(ct[0].PatientName).startswith("PHANTOM^") and ct[0].PatientName == pt[0].PatientName
        assert ct[0].Manufacturer == ph.FLAVOURS[flavour].manufacturer
        # PET: BQML, per-slice slopes, intercept 0, corrections, radiopharmaceutical
        assert {float(d.RescaleIntercept) for d in pt} == {0.0}
        assert len({d.RescaleSlope for d in pt}) > 1
        assert {"ATTN", "DECY"} <= set(pt[0].CorrectedImage)
        rp = pt[0].RadiopharmaceuticalInformationSequence[0]
        assert rp.RadionuclideCodeSequence[0].CodeValue == "C-111A1"
        assert float(rp.RadionuclideTotalDose) > 1e7 and float(rp.RadionuclideHalfLife) == pytest.approx(6588, abs=3)
        uptake = (_dicom_dt(pt[0].SeriesDate, pt[0].SeriesTime)
                  - dt.datetime.strptime(rp.RadiopharmaceuticalStartDateTime[:14], "%Y%m%d%H%M%S"))
        assert 50 * 60 <= uptake.total_seconds() <= 75 * 60
        assert float(pt[0].PatientWeight) == pytest.approx(truth["acquisition"]["weight_kg"])
        # slice positions: regular along the normal, matching SliceThickness for the PET
        for series in (ct, pt):
            z = np.array([float(d.ImagePositionPatient[2]) for d in series])
            steps = np.diff(z)
            assert np.allclose(steps, steps[0], atol=1e-3) and steps[0] > 0
            assert float(series[0].SliceThickness) == pytest.approx(steps[0], abs=1e-3)
            assert len({tuple(d.ImageOrientationPatient) for d in series}) == 1
        # CT covers the PET axially
        assert z.min() >= float(ct[0].ImagePositionPatient[2]) - 1e-3


def test_vendor_variety_in_grids_and_file_order(ct2pet_dicom):
    sizes = {f: pydicom.dcmread(next((d / "PT").glob("*.dcm"))).Rows for f, d in ct2pet_dicom.items()}
    assert len(set(sizes.values())) == 3
    not_in_order = 0
    for folder in ct2pet_dicom.values():
        names = sorted((folder / "PT").glob("*.dcm"))
        z = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in names]
        if z != sorted(z):
            not_in_order += 1
    assert not_in_order >= 2  # uid / shuffled names, or reversed order


def test_pet_suv_from_header_matches_truth(ct2pet_dicom):
    for folder in ct2pet_dicom.values():
        dss, vol = read_series(folder / "PT")
        suv = suv_by_hand(dss, vol)
        labels, lab_aff = read_nifti_lps(folder / "truth" / "labels.nii.gz")
        truth, _ = read_nifti_lps(folder / "truth" / "suv_truth_blurred.nii.gz")
        np.testing.assert_allclose(lab_aff, dicom_affine(dss), atol=1e-3)  # truth on the PET grid
        assert labels.shape == suv.shape
        liver = eroded(labels == LIVER)
        assert liver.sum() > 30
        assert suv[liver].mean() == pytest.approx(truth[liver].mean(), rel=0.04)
        body = eroded(labels == MUSCLE)
        assert suv[body].mean() == pytest.approx(truth[body].mean(), rel=0.08)
        # the noise is real: a uniform organ is not flat
        assert suv[liver].std() / suv[liver].mean() > 0.03


def test_ct_hu_matches_label_table(ct2pet_dicom):
    for folder in ct2pet_dicom.values():
        info = json.loads((folder / "truth" / "truth.json").read_text())
        table = {row["label"]: row for row in info["labels"]}
        dss, hu = read_series(folder / "CT")
        labels, aff = read_nifti_lps(folder / "truth" / "labels_ct.nii.gz")
        np.testing.assert_allclose(aff, dicom_affine(dss), atol=1e-3)
        sd = info["ct"]["noise_sd_hu"]
        for lab in (LIVER, MUSCLE, FAT):
            m = eroded(labels == lab, 2)
            if m.sum() < 50:
                continue
            assert abs(hu[m].mean() - table[lab]["hu"]) < 3 + 3 * sd / math.sqrt(m.sum() / 10)
            assert 0.5 * sd < hu[m].std() < 2.0 * sd + 10
        lung = eroded(labels == LUNG, 2)
        assert -950 < np.median(hu[lung]) < -750


def test_nifti_and_dicom_agree_and_overlay(tmp_path):
    study = ph.make_study("ct2pet", 7, 1, preset="tiny", flavour="siemens")
    d_folder = ph.write_study(study, tmp_path / "d", fmt="dicom")
    n_folder = ph.write_study(study, tmp_path / "n", fmt="nifti")
    dss, vol = read_series(d_folder / "PT")
    suv_dicom = suv_by_hand(dss, vol)
    pet, pet_aff = read_nifti_lps(n_folder / "pet.nii.gz")
    ct, ct_aff = read_nifti_lps(n_folder / "ct.nii.gz")
    assert pet.dtype == np.float32 and ct.dtype == np.float32
    np.testing.assert_allclose(pet_aff, dicom_affine(dss), atol=1e-3)
    np.testing.assert_allclose(suv_dicom, pet, atol=float(pet.max()) / 30000 + 1e-6, rtol=1e-4)
    ct_dss, ct_vol = read_series(d_folder / "CT")
    np.testing.assert_allclose(ct_aff, dicom_affine(ct_dss), atol=1e-3)
    np.testing.assert_allclose(ct_vol, np.rint(ct), atol=0.51)
    # the same organ lands on the same world point in the CT and the PET
    lab_pet, aff_pet = read_nifti_lps(n_folder / "truth" / "labels.nii.gz")
    lab_ct, aff_ct = read_nifti_lps(n_folder / "truth" / "labels_ct.nii.gz")
    for lab in (LIVER, T.MYOCARDIUM.label):
        a = centroid_world(lab_pet == lab, aff_pet)
        b = centroid_world(lab_ct == lab, aff_ct)
        assert np.linalg.norm(a - b) < 6.0, (lab, a, b)
    # and the liver is bright in the PET and liver-dense in the CT at that point
    ijk = np.linalg.inv(ct_aff) @ np.append(centroid_world(lab_pet == LIVER, aff_pet), 1)
    assert 20 < ct[int(round(ijk[2])), int(round(ijk[1])), int(round(ijk[0]))] < 120


# --- low dose ---------------------------------------------------------------------------------------------
def test_low_dose_noise_grows_as_dose_falls(lpet_nifti):
    labels, _ = read_nifti_lps(lpet_nifti / "truth" / "labels.nii.gz")
    liver = eroded(labels == LIVER)
    stds, means = {}, {}
    for name, f in (("pet.nii.gz", 1.0), ("pet_low_0.25.nii.gz", 0.25), ("pet_low_0.05.nii.gz", 0.05)):
        v, _ = read_nifti_lps(lpet_nifti / name)
        stds[f], means[f] = v[liver].std(), v[liver].mean()
    assert stds[1.0] < stds[0.25] < stds[0.05]
    assert stds[0.05] > 1.5 * stds[1.0]
    for f in (0.25, 0.05):
        assert means[f] == pytest.approx(means[1.0], rel=0.15)
    info = json.loads((lpet_nifti / "truth" / "truth.json").read_text())
    assert info["pet"]["dose_fractions"] == [1.0, 0.25, 0.05]


# --- brain ------------------------------------------------------------------------------------------------
def test_brain_pet_grey_over_white_and_t1_contrast(brain_study, tmp_path):
    s = brain_study
    pet = s.images["PT"].volume
    labels = s.truth_images["labels"].volume
    gm = labels == T.GREY_MATTER.label
    wm = eroded(labels == T.WHITE_MATTER.label)
    assert pet[gm].mean() > 1.2 * pet[wm].mean()
    mr = s.images["MR"].volume
    lab_mr = s.truth_images["labels_mr"].volume
    wm_mr, gm_mr, csf_mr = (mr[lab_mr == t.label].mean() for t in (T.WHITE_MATTER, T.GREY_MATTER, T.CSF))
    assert wm_mr > gm_mr > csf_mr
    hypo = s.truth["hypometabolism"]
    assert len(hypo) == 1 and 0.5 <= hypo[0]["fraction_of_normal"] <= 0.8
    assert s.truth["diagnosis"] == f"focal {hypo[0]['lobe']}"
    truth = s.truth_images["suv_truth"].volume
    h = labels == T.GM_HYPOMETABOLIC.label
    assert h.any() and truth[h].mean() < truth[gm].mean()
    # DICOM: MR and PT of one PET/MR study share study and frame of reference
    folder = ph.write_study(s, tmp_path, fmt="dicom")
    mr_dss, mr_vol = read_series(folder / "MR")
    pt_dss, pt_vol = read_series(folder / "PT")
    assert mr_dss[0].SOPClassUID == pydicom.uid.MRImageStorage and mr_dss[0].Modality == "MR"
    assert mr_dss[0].FrameOfReferenceUID == pt_dss[0].FrameOfReferenceUID
    assert mr_dss[0].StudyInstanceUID == pt_dss[0].StudyInstanceUID
    np.testing.assert_allclose(mr_vol, np.rint(mr), atol=0.51)
    suv = suv_by_hand(pt_dss, pt_vol)
    np.testing.assert_allclose(suv, pet, atol=float(pet.max()) / 30000 + 1e-6, rtol=1e-4)


# --- determinism, physics closure, writing ------------------------------------------------------------
def test_same_seed_identical_different_seed_different(tmp_path):
    a = ph.make_torso(3, preset="tiny")
    b = ph.make_torso(3, preset="tiny")
    c = ph.make_torso(4, preset="tiny")
    for name in ("CT", "PT"):
        assert np.array_equal(a.images[name].volume, b.images[name].volume)
    for name in ("labels", "suv_truth", "labels_ct"):
        assert np.array_equal(a.truth_images[name].volume, b.truth_images[name].volume)
    assert a.truth == b.truth
    assert not np.array_equal(a.truth_images["labels"].volume, c.truth_images["labels"].volume) or \
        a.truth["subject"] != c.truth["subject"]
    assert a.truth["acquisition"] != c.truth["acquisition"]
    pa = ph.write_study(a, tmp_path / "a")
    pb = ph.write_study(b, tmp_path / "b")
    fa = sorted((pa / "PT").glob("*.dcm"))
    fb = sorted((pb / "PT").glob("*.dcm"))
    assert [f.name for f in fa] == [f.name for f in fb]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))
    assert (pa / "truth" / "truth.json").read_bytes() == (pb / "truth" / "truth.json").read_bytes()


def test_bone_hu_moves_with_kvp_but_keeps_mu():
    mus = [float(hu_to_mu(np.array([ctmod.bone_hu_at_kvp(1000.0, k)]), k)[0]) for k in ctmod.KVP_CHOICES]
    np.testing.assert_allclose(mus, mus[0], rtol=1e-5)
    assert ctmod.bone_hu_at_kvp(1000.0, 80) > 1000.0 > ctmod.bone_hu_at_kvp(1000.0, 140)
    sds = [ctmod.noise_sd_at_kvp(15.0, k) for k in ctmod.KVP_CHOICES]
    assert all(x > y for x, y in zip(sds, sds[1:]))


def test_label_table_ranges_are_published_ranges():
    rows = {t.name: t for t in T.TISSUES.values()}
    assert 2.0 <= rows["liver"].suv[0] and rows["liver"].suv[1] <= 3.0
    assert rows["blood_pool"].suv == (1.5, 2.0)
    # myocardium: the overall range of the fasting states (suppressed at blood-pool level to avid, T.MYOCARDIUM_STATES)
    assert rows["bladder"].suv[1] >= 20 and rows["myocardium"].suv == (1.5, 12.0)
    assert -130 <= rows["fat"].hu[0] and rows["fat"].hu[1] <= -70
    assert rows["lung"].hu[0] < -800


def test_atomic_write_leaves_no_partial_study(tmp_path, monkeypatch):
    from petsynth.phantom import writer

    study = ph.make_torso(2, preset="tiny")
    calls = {"n": 0}
    real = writer.write_series

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "write_series", flaky)
    with pytest.raises(OSError):
        ph.write_study(study, tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(writer, "write_series", real)
    path = ph.write_study(study, tmp_path)
    with pytest.raises(FileExistsError):
        ph.write_study(study, tmp_path)
    assert ph.write_study(study, tmp_path, overwrite=True) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_cli_phantom(tmp_path):
    from petsynth.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["phantom", str(tmp_path), "--task", "lpet2spet", "--studies", "1", "--seed", "2",
                              "--preset", "tiny", "--format", "nifti", "--dose-fractions", "1/10"])
    assert res.exit_code == 0, res.output
    study = tmp_path / "lpet2spet-s2-0000"
    assert (study / "pet_low_0.1.nii.gz").exists() and (study / "ct.nii.gz").exists()
    index = json.loads((tmp_path / "phantoms.json").read_text())
    assert [s["study_id"] for s in index["studies"]] == ["lpet2spet-s2-0000"]
    assert runner.invoke(app, ["phantom", str(tmp_path), "--task", "pet2ct"]).exit_code != 0
    assert runner.invoke(app, ["phantom", str(tmp_path), "--format", "png"]).exit_code != 0
    assert runner.invoke(app, ["phantom", str(tmp_path), "--task", "lpet2spet", "--dose-fractions", "3"]).exit_code != 0
    res = runner.invoke(app, ["phantom", str(tmp_path), "--task", "lpet2spet", "--seed", "2", "--preset", "tiny",
                              "--format", "nifti"])
    assert res.exit_code == 1  # exists, no --overwrite

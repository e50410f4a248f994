"""`prepare --task mr2pet` on brain studies as users have them: a PET from another visit and frame of reference
(registered), MR and PET in different DICOM studies (paired by patient and date), planes, brain masks, bad
inputs that fail one subject and keep the others; `evaluate` per plane with the brain measures."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pydicom
import pytest
import torch
from scipy import ndimage

from petsynth.data.brain import BrainOptions
from petsynth.data.prepare import prepare_dataset
from petsynth.data.store import open_dataset
from petsynth.evaluate import evaluate
from petsynth.inference import PredictOptions
from petsynth.methods import build_method
from petsynth.metrics.brain import brain_measures
from petsynth.phantom.writer import write_studies
from petsynth.train.checkpoint import ModelCard, save_checkpoint

KEY = b"k" * 32
SEED = 11
MOVE = {"rotation_deg": (4.0, -3.0, 6.0), "translation_mm": (12.0, -8.0, 10.0)}
PARENCHYMA = (18, 19, 20, 21, 23, 24, 25)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """One subject written twice (PET aligned, PET displaced into another study and frame), plus a PET-only
    study of another subject."""
    root = tmp_path_factory.mktemp("brain")
    aligned = write_studies(root / "aligned", "mr2pet", studies=1, seed=SEED, preset="small")[0]
    moved = write_studies(root / "moved", "mr2pet", studies=1, seed=SEED, preset="small", pet_displacement=MOVE)[0]
    lonely = write_studies(root / "lonely", "mr2pet", studies=1, seed=SEED + 1, preset="tiny")[0]
    shutil.rmtree(lonely / "MR")  # a PET whose patient has no MR anywhere
    return {"aligned": aligned, "moved": moved, "lonely": lonely, "root": root}


def _prepare(inputs, out, **options):
    opts = BrainOptions(**options)
    return prepare_dataset(inputs, out, "mr2pet", size=64, key=KEY, split=(1, 0, 0), brain=opts)


@pytest.fixture(scope="module")
def prepared(raw):
    reports = {name: _prepare([raw[name]], raw["root"] / f"ds-{name}") for name in ("aligned", "moved")}
    return reports, {name: open_dataset(raw["root"] / f"ds-{name}") for name in reports}


def _ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_displaced_pet_is_registered_back(raw, prepared):
    """The displaced PET lies in another study and frame of reference: prepare pairs it with the MR of the same
    patient by date, registers it, and the pair equals the one prepared from the aligned PET."""
    reports, ds = prepared
    (moved,) = reports["moved"].results
    assert moved.status == "ok", moved.reason
    truth = json.loads((raw["moved"] / "truth" / "truth.json").read_text())
    days = truth["pet_visit_days_after_mr"]
    meta = ds["moved"].study_meta(ds["moved"].studies[0])
    assert meta["pairing"] == f"MR from another study of the same patient, {days:g} days apart"
    found = np.array(moved.registration["transform"]["matrix"])
    true = np.array(truth["pet_frame"]["matrix"])
    corners = np.array([[x, y, z] for x in (-60, 60) for y in (-70, 70) for z in (-40, 60)], float)
    corners += np.array(truth["subject"]["brain_center_mm"])
    moved_pts = lambda m: corners @ m[:3, :3].T + m[:3, 3]  # noqa: E731
    assert np.abs(moved_pts(found) - moved_pts(true)).max() < 2.0  # mm, at 2 mm MR voxels
    a, b = ds["aligned"], ds["moved"]
    assert len(a) == len(b)
    ta = np.stack([a[i]["target"] for i in range(len(a))])
    tb = np.stack([b[i]["target"] for i in range(len(b))])
    assert _ncc(ta, tb) > 0.98
    (aligned,) = reports["aligned"].results
    assert aligned.registration is None  # same frame of reference: the headers are trusted


def test_pairs_lie_on_the_mr_cube_in_three_planes(raw, tmp_path):
    _prepare([raw["aligned"]], tmp_path / "ds", planes=("axial", "coronal", "sagittal"),
             slice_ranges={"coronal": (20, 40)})
    ds = open_dataset(tmp_path / "ds")
    items = [ds[i] for i in range(len(ds))]
    by_plane = {p: {it["index"]: it for it in items if it["plane"] == p} for p in ("axial", "coronal", "sagittal")}
    assert sorted(by_plane["coronal"]) == list(range(20, 41))
    assert all(it["spacing_mm"] == [220 / 64, 220 / 64] for it in items)
    # the planes cut one cube: row r of axial slice k is row (63 - k) of coronal slice r
    k = sorted(by_plane["axial"])[len(by_plane["axial"]) // 2]
    for r in range(20, 41):
        np.testing.assert_array_equal(by_plane["axial"][k]["source"][r], by_plane["coronal"][r]["source"][63 - k])
    # z_mm steps by the cube's spacing along each plane's normal
    z = [by_plane["coronal"][j]["z_mm"] for j in range(20, 41)]
    np.testing.assert_allclose(np.diff(z), 220 / 64, rtol=1e-5)
    # the stored brain mask against the phantom's brain (parenchyma and the CSF it encloses)
    mask = np.stack([it["mask"] for it in by_plane["axial"].values()]).astype(bool)
    labels = np.stack([it["labels"] for it in by_plane["axial"].values()])
    brain = ndimage.binary_fill_holes(np.isin(labels, PARENCHYMA))
    dice = 2 * (mask & brain).sum() / (mask.sum() + brain.sum())
    assert dice > 0.85
    # MR and PET are 0 outside the mask
    src = np.stack([it["source"] for it in by_plane["axial"].values()])
    assert np.all(src[~mask] == 0) and src[mask].mean() > 100


def test_bad_subjects_fail_with_their_reason_and_the_others_are_kept(raw, tmp_path):
    # a PET with no MR of its patient; a PET of another visit that cannot be registered (blank); the good subject
    blank = write_studies(tmp_path / "blank", "mr2pet", studies=1, seed=SEED + 2, preset="tiny",
                          pet_displacement=MOVE)[0]
    for f in (blank / "PT").iterdir():
        ds = pydicom.dcmread(f)
        ds.PixelData = np.zeros_like(ds.pixel_array).tobytes()
        ds.save_as(f)
    report = _prepare([raw["aligned"], raw["lonely"], blank], tmp_path / "ds")
    status = sorted((r.status, r.reason.split(":")[0]) for r in report.results)
    assert [s for s, _ in status].count("ok") == 1
    reasons = " | ".join(r.reason for r in report.failed)
    assert "no MR series of this patient" in reasons
    assert "registration of the PET to the MR failed" in reasons
    assert len(report.failed) == 2
    # too long between the visits: refused, with the gap
    report = _prepare([raw["moved"]], tmp_path / "ds-gap", max_gap_days=0)
    assert report.failed and "within 0 days" in report.failed[0].reason


def test_register_none_refuses_another_frame(raw, tmp_path):
    report = _prepare([raw["moved"]], tmp_path / "ds", register="none")
    assert report.failed and "--register rigid" in report.failed[0].reason


def test_global_normalisation_divides_by_the_brain_mean(raw, prepared, tmp_path):
    _prepare([raw["aligned"]], tmp_path / "ds", pet_normalise="global")
    ds, suv = open_dataset(tmp_path / "ds"), prepared[1]["aligned"]
    meta = ds.study_meta(ds.studies[0])
    assert meta["units"] == "SUVR" and meta["pet_normalisation"]["method"] == "global"
    level = meta["pet_normalisation"]["divided_by"]
    ratio = np.stack([ds[i]["target"] for i in range(len(ds))]) * level
    np.testing.assert_allclose(ratio, np.stack([suv[i]["target"] for i in range(len(suv))]), rtol=1e-4, atol=1e-4)


def test_evaluate_reports_per_plane_and_brain_measures(raw, tmp_path):
    _prepare([raw["aligned"]], tmp_path / "ds", planes=("axial", "sagittal"))
    torch.manual_seed(0)
    method = build_method("unet", {"unet": {"features": [4, 8, 16, 32, 64, 4]}}, task="mr2pet")
    card = ModelCard(method="unet", task="mr2pet", config=method.config.to_dict(), step=1,
                     intensity={k: t.to_dict() for k, t in method.intensity_transforms().items()})
    model = save_checkpoint(tmp_path / "run" / "model", card, {"model": method.state_dict()})
    report = evaluate([model], tmp_path / "ds", tmp_path / "eval", split="all", options=PredictOptions(batch_size=8))
    rows = list(csv.DictReader(open(report.files["metrics"])))
    planes = {r["plane"] for r in rows if r["plane"]}
    assert planes == {"axial", "sagittal"}
    table = (tmp_path / "eval" / "table.md").read_text()
    assert "## Axial slices" in table and "## Sagittal slices" in table and "Brain regions" in table
    # the brain measures, recomputed here from the model's predictions and the stored labels
    ds = open_dataset(tmp_path / "ds")
    from petsynth.inference import load_model, predict_dataset

    preds = [p.numpy().astype(np.float64) for _, pred in
             predict_dataset(load_model(model, task="mr2pet"), ds, options=PredictOptions(batch_size=8))
             for p in pred[:, 0]]
    table_rows = json.loads(json.dumps(ds.label_table(ds.studies[0])))
    names = {r["label"]: r["name"] for r in table_rows}
    sums = {}
    for i in range(len(ds)):
        it = ds[i]
        if it["plane"] != "sagittal":
            continue
        for label, name in names.items():
            m = it["labels"] == label
            if m.any():
                s = sums.setdefault(name, [0, 0.0, 0.0])
                s[0] += m.sum()
                s[1] += preds[i][m].sum()
                s[2] += it["target"][m].astype(np.float64).sum()
    pred_means = {k: v[1] / v[0] for k, v in sums.items()}
    ref_means = {k: v[2] / v[0] for k, v in sums.items()}
    expected = brain_measures(pred_means, ref_means, "cerebellum")
    brain = list(csv.DictReader(open(tmp_path / "eval" / "brain.csv")))
    got = {r["measure"]: float(r["value"]) for r in brain
           if r["plane"] == "sagittal" and r["reference"] == "real" and r["study"] != "overall"}
    for key in ("suvr_grey_bias", "grey_bias", "white_bias", "gm_wm_ratio_ref"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6)


def test_the_mr_nearest_in_time_is_taken(raw, tmp_path):
    """A second MR study of the same patient, 2 days before the PET: the nearer of the two MR visits is paired."""
    folder = tmp_path / "visits"
    shutil.copytree(raw["moved"], folder / "a")
    truth = json.loads((raw["moved"] / "truth" / "truth.json").read_text())
    pet_date = pydicom.dcmread(next((folder / "a" / "PT").iterdir())).StudyDate
    import datetime as dt

    decoy = (dt.datetime.strptime(pet_date, "%Y%m%d") - dt.timedelta(days=2)).strftime("%Y%m%d")
    (folder / "b").mkdir()
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for f in (folder / "a" / "MR").iterdir():
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = decoy
        ds.save_as(folder / "b" / f.name)
    report = _prepare([folder], tmp_path / "ds")
    ok = [r for r in report.results if r.status == "ok"]
    assert len(ok) == 1, report.results
    meta = open_dataset(tmp_path / "ds").study_meta(ok[0].study)
    gap = min(truth["pet_visit_days_after_mr"], 2)
    assert meta["pairing"] == f"MR from another study of the same patient, {gap:g} days apart"


def test_bids_layout_gives_the_same_pairs_as_suv_nifti(raw, tmp_path):
    """A BIDS subject (T1w + PET in Bq/mL with its sidecar) prepares to the same SUV pairs as the plain NIfTI
    layout of the same images in SUV."""
    from petsynth.io.nifti import read_nifti, write_nifti

    plain = write_studies(tmp_path / "plain", "mr2pet", studies=1, seed=SEED + 3, preset="tiny", fmt="nifti")[0]
    ses = tmp_path / "bids" / "sub-01" / "ses-01"
    (ses / "anat").mkdir(parents=True)
    (ses / "pet").mkdir()
    shutil.copy(plain / "mr.nii.gz", ses / "anat" / "sub-01_ses-01_T1w.nii.gz")
    suv, affine = read_nifti(plain / "pet.nii.gz")
    weight_kg, dose_mbq = 70.0, 185.0
    write_nifti(ses / "pet" / "sub-01_ses-01_pet.nii.gz", suv * dose_mbq * 1e6 / (weight_kg * 1000), affine)
    (ses / "pet" / "sub-01_ses-01_pet.json").write_text(json.dumps({
        "Units": "Bq/mL", "InjectedRadioactivity": dose_mbq, "InjectedRadioactivityUnits": "MBq",
        "BodyWeight": weight_kg}))
    # the headers trusted (the two are the same images): the comparison is of the units, not of two registrations
    _prepare([plain], tmp_path / "ds-plain", register="none")
    report = _prepare([tmp_path / "bids"], tmp_path / "ds-bids", register="none")
    assert [r.status for r in report.results] == ["ok"], report.results
    a, b = open_dataset(tmp_path / "ds-plain"), open_dataset(tmp_path / "ds-bids")
    assert b.study_meta(b.studies[0])["units"] == "SUV"
    ta = np.stack([a[i]["target"] for i in range(len(a))])
    tb = np.stack([b[i]["target"] for i in range(len(b))])
    np.testing.assert_allclose(tb, ta, rtol=1e-3, atol=1e-3)

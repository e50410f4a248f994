"""The embedded default runs end to end on the tiny phantom with the bundled model (one sampling step to stay
fast) and reports what it measured, checked here against an independent recomputation from its own files."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from petsynth.cli import app
from petsynth.data.geometry import Geometry, resample
from petsynth.demo import run_demo
from petsynth.io.nifti import read_nifti


def test_demo_translates_the_phantom_and_scores_it_against_the_truth(tmp_path):
    report = run_demo(tmp_path / "demo", preset="tiny", steps=1)
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert saved["metrics"] == report.metrics and saved["scanner_pet_metrics"] == report.reference
    assert report.metrics["sampling_steps"] == 1 and 80 <= report.metrics["kvp"] <= 140

    # recompute the synthetic PET's MAE against the truth from the written files, with numpy only
    synthetic, synthetic_affine = read_nifti(report.files["synthetic_nifti"])
    study = report.files["phantom_nifti"]
    pet, pet_affine = read_nifti(study / "pet.nii.gz")
    truth, truth_affine = read_nifti(study / "truth" / "suv_truth_blurred.nii.gz")
    assert np.allclose(truth_affine, pet_affine)
    on_pet = resample(synthetic, Geometry.from_affine(synthetic.shape, synthetic_affine),
                      Geometry.from_affine(pet.shape, pet_affine), fill=0.0)
    body = truth.reshape(truth.shape[0], -1).max(axis=1) > 0.1
    mae = np.abs(on_pet - truth)[body].reshape(body.sum(), -1).mean(axis=1).mean()
    assert np.isclose(report.metrics["mae_suv"], mae, rtol=2e-3)
    # the model does something: closer to the truth than an empty image, and the output is non-negative SUV
    assert mae < np.abs(truth)[body].mean() and synthetic.min() >= 0
    assert 0.3 < report.metrics["ssim"] <= 1 and 0.5 < report.reference["ssim"] <= 1

    # the attenuation map: air maps to 1, water-like tissue (mu about 0.096/cm) to about exp(-0.096) = 0.908
    mu_map = nib.load(report.files["attenuation_map"]).get_fdata()
    assert mu_map.max() <= 1.0 + 1e-6 and mu_map.min() > 0.8
    assert np.isclose(np.median(mu_map[mu_map < 0.95]), np.exp(-0.096), atol=0.01)
    with Image.open(report.files["panel"]) as png:
        assert png.size[0] > 800 and png.size[0] / png.size[1] < 2.5  # a readable grid, not a 6:1 strip
    for name in ("mip", "fused"):
        with Image.open(report.files[name]) as png:
            assert min(png.size) > 200 and np.asarray(png.convert("L")).std() > 5  # drawn, not blank
    assert "not for diagnosis" in report.files["report"].read_text()

    # the organ table, recomputed with numpy from the written truth: SUVmean per organ, SUVmax per lesion
    truth_record = json.loads((study / "truth" / "truth.json").read_text())
    labels, _ = read_nifti(study / "truth" / "labels.nii.gz")
    organs = {o["region"]: o for o in saved["organs"]}
    liver = next(r["label"] for r in truth_record["labels"] if r["name"] == "liver")
    assert organs["liver"]["truth"] == pytest.approx(truth[labels == liver].mean(), rel=1e-5)
    assert organs["liver"]["scanner"] == pytest.approx(pet[labels == liver].mean(), rel=1e-5)
    for n, lesion in enumerate(truth_record["lesions"]):
        inside = labels == lesion["label"]
        assert (f"lesion_{n}" in organs) == bool(inside.any())  # a lesion the PET grid does not hold has no row
        if inside.any():
            row = organs[f"lesion_{n}"]
            assert row["statistic"] == "SUVmax" and row["truth"] == pytest.approx(truth[inside].max())
            assert row["class"] == lesion.get("class", "unclassified")  # from truth.json, "unclassified" when old
    assert len(list(report.files["synthetic_dicom"].glob("*.dcm"))) == synthetic.shape[0]
    assert any(report.files["phantom_dicom"].rglob("*.dcm"))


def test_demo_command_exit_code(tmp_path):
    import os

    before = os.umask(0o022)
    try:
        result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--preset", "tiny", "--steps", "1"])
    finally:
        os.umask(before)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "metrics.json").stat().st_mode & 0o777 == 0o644  # the umask, not 0600
    assert "ssim" in result.output and "phantoms only" in result.output
    saved = json.loads((tmp_path / "d" / "metrics.json").read_text())
    liver = next(o for o in saved["organs"] if o["region"] == "liver")
    text = " ".join(result.output.split())
    assert "Organs: SUVmean against the phantom's noise-free truth" in text and "scanner" in text
    assert f"liver {liver['truth']:.2f} {liver['synthetic']:.2f}" in text  # the printed organ table
    lesion = next((o for o in saved["organs"] if o["kind"] == "lesion"), None)
    if lesion is not None:
        assert "Lesions: SUVmax" in text and f"{lesion['region']} {lesion['class']} {lesion['truth']:.2f}" in text
    assert "…" not in result.output.split("Organs:")[1]  # the organ tables fit 80 columns

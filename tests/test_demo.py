"""The embedded default runs end to end on the tiny phantom and reports what it measured."""

import json

import nibabel as nib
import numpy as np
from PIL import Image
from typer.testing import CliRunner

from petsynth.cli import app
from petsynth.demo import run_demo


def test_demo_writes_study_attenuation_map_metrics_and_panel(tmp_path):
    report = run_demo(tmp_path / "demo", preset="tiny")
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert saved["metrics"] == report.metrics
    m = report.metrics
    assert 0.5 < m["ssim"] <= 1.0 and 0.0 < m["mae_suv"] < 1.0 and m["psnr_db"] > 15
    assert 80 <= m["kvp"] <= 140
    mu_map = nib.load(report.files["attenuation_map"]).get_fdata()
    # air maps to 1; water-like tissue (mu about 0.096/cm) to about exp(-0.096) = 0.908
    assert mu_map.max() <= 1.0 + 1e-6 and mu_map.min() > 0.8
    assert np.isclose(np.median(mu_map[mu_map < 0.95]), np.exp(-0.096), atol=0.01)
    with Image.open(report.files["panel"]) as png:
        assert png.size[0] > 800
    assert any(report.files["dicom"].rglob("*.dcm")) and any(report.files["nifti"].rglob("*.nii.gz"))


def test_demo_command_exit_code(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--preset", "tiny"])
    assert result.exit_code == 0, result.output
    assert "ssim" in result.output

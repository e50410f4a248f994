"""Brain PET/MR preparation pieces (petsynth.data.brain, BIDS layouts, petsynth.metrics.brain) against
independent truth: world coordinates of plane slices, the SUV formula of a BIDS sidecar, the brain measures'
definitions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from petsynth.data.brain import (BrainOptions, brain_cube, mask_center_mm, parse_planes, parse_slice_ranges,
                                 plane_positions_mm, plane_stack)
from petsynth.data.geometry import Geometry
from petsynth.data.nifti_layouts import bids_suv_factor, find_nifti_studies
from petsynth.io.nifti import write_nifti
from petsynth.metrics.brain import brain_measures


def test_parse_planes_and_ranges():
    assert parse_planes("Axial, sagittal") == ("axial", "sagittal")
    assert parse_slice_ranges("axial=30:60,coronal=40:70") == {"axial": (30, 60), "coronal": (40, 70)}
    for bad in ("oblique", ""):
        with pytest.raises(ValueError, match="plane"):
            parse_planes(bad)
    for bad in ("axial=60:30", "axial=a:b", "transverse=1:2"):
        with pytest.raises(ValueError, match="slice range"):
            parse_slice_ranges(bad)
    with pytest.raises(ValueError, match="register"):
        BrainOptions(register="affine")


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_plane_slices_lie_where_their_positions_say(plane):
    """A marker voxel at a known LPS point appears in the slice whose z_mm is that point's coordinate along the
    plane's normal, at the row/column a viewer expects (superior up in coronal/sagittal, patient's right on the
    left in axial/coronal, anterior on the left in sagittal)."""
    cube = brain_cube((10.0, -20.0, 30.0), 16, 64.0)  # 4 mm voxels
    vol = np.zeros(cube.shape, np.float32)
    point = np.array([10.0 + 4 * 3, -20.0 - 4 * 2, 30.0 + 4 * 5])  # left, anterior, superior of the centre
    i, j, k = np.rint(cube.world_to_index(point[None])[0]).astype(int)
    vol[k, j, i] = 1.0
    stack = plane_stack(vol, plane)
    z = plane_positions_mm(cube, plane)
    n, r, c = np.argwhere(stack == 1.0)[0]
    normal = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    assert z[n] == pytest.approx(point[normal], abs=cube.spacing[0] / 2 + 1e-6)
    centre = (16 - 1) / 2
    if plane == "axial":      # rows anterior -> posterior: the anterior marker is above the centre row
        assert r < centre and c > centre  # patient's left on the right
    elif plane == "coronal":  # rows superior -> inferior
        assert r < centre and c > centre
    else:                     # sagittal: columns anterior -> posterior
        assert r < centre and c < centre


def test_mask_center_is_the_bounding_box_centre():
    g = Geometry(shape=(10, 20, 30), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    mask = np.zeros(g.shape, bool)
    mask[2:5, 4:9, 10:21] = True  # z 4..8, y 4..8, x 10..20
    assert mask_center_mm(mask, g) == pytest.approx([15.0, 6.0, 6.0])


def _bids_pet(tmp_path, sidecar: dict | None):
    sub = tmp_path / "bids" / "sub-01" / "ses-01"
    (sub / "anat").mkdir(parents=True)
    (sub / "pet").mkdir()
    aff = np.diag([-2.0, -2.0, 2.0, 1.0])
    write_nifti(sub / "anat" / "sub-01_ses-01_T1w.nii.gz", np.ones((4, 4, 4), np.float32), aff)
    pet = sub / "pet" / "sub-01_ses-01_pet.nii.gz"
    write_nifti(pet, np.full((4, 4, 4), 5000.0, np.float32), aff)
    if sidecar is not None:
        (sub / "pet" / "sub-01_ses-01_pet.json").write_text(json.dumps(sidecar))
    return pet


def test_bids_sidecar_gives_suv_by_the_formula(tmp_path):
    """SUV = C [Bq/ml] * weight [g] / (injected activity [Bq] decayed to the decay-correction time)."""
    side = {"Units": "Bq/mL", "InjectedRadioactivity": 200.0, "InjectedRadioactivityUnits": "MBq",
            "BodyWeight": 70.0, "InjectionStart": 0, "ImageDecayCorrectionTime": 3600.0}
    pet = _bids_pet(tmp_path, side)
    factor, note = bids_suv_factor(pet)
    expected = 70.0 * 1000 / (200e6 * 2 ** (-3600 / 6586.2))
    assert factor == pytest.approx(expected, rel=1e-9)
    assert "decayed" in note
    studies = find_nifti_studies([tmp_path / "bids"])
    assert len(studies) == 1 and studies[0].layout == "bids" and studies[0].pet_is_suv
    assert studies[0].sources["MR"].name == "sub-01_ses-01_T1w.nii.gz"


def test_bids_without_dose_is_not_suv(tmp_path):
    pet = _bids_pet(tmp_path, {"Units": "Bq/mL"})
    factor, note = bids_suv_factor(pet)
    assert factor is None and "InjectedRadioactivity" in note
    assert not find_nifti_studies([tmp_path / "bids"])[0].pet_is_suv


def test_brain_measures_follow_their_definitions():
    ref = {"grey_matter": 8.0, "white_matter": 2.5, "grey_matter_hypometabolic": 5.6,
           "cerebellar_grey_matter": 6.4, "brainstem": 3.0}
    pred = {"grey_matter": 7.2, "white_matter": 2.75, "grey_matter_hypometabolic": 6.48,
            "cerebellar_grey_matter": 6.4, "brainstem": 3.3}
    m = brain_measures(pred, ref, "cerebellum")
    assert m["suvr_grey_ref"] == pytest.approx(8.0 / 6.4)
    assert m["suvr_grey_bias"] == pytest.approx((7.2 / 6.4) / (8.0 / 6.4) - 1)
    assert m["grey_bias"] == pytest.approx(-0.1)
    assert m["white_bias"] == pytest.approx(0.1)
    assert m["gm_wm_ratio_ref"] == pytest.approx(3.2)
    assert m["hypo_contrast_ref"] == pytest.approx(0.3)
    assert m["hypo_contrast_pred"] == pytest.approx(0.1)
    assert m["hypo_recovery"] == pytest.approx(1 / 3)
    pons = brain_measures(pred, ref, "pons")
    assert pons["suvr_grey_pred"] == pytest.approx(7.2 / 3.3)
    assert math.isnan(brain_measures({"grey_matter": 1.0}, {"grey_matter": 1.0})["hypo_recovery"])
    with pytest.raises(ValueError, match="reference region"):
        brain_measures(pred, ref, "thalamus")

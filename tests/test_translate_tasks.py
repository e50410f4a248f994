"""`petsynth translate` for every task: a `unet` trained two steps on a tiny mr2pet and a tiny lpet2spet phantom
dataset translates an MR (DICOM study, NIfTI) and a low-dose PET with its CT (DICOM study, NIfTI + --ct) onto
the source's own slices (checked against the simulated geometry, not the reader's), into the source's study
and frame; a model of another task, or an input of another modality, is refused before anything is written."""

import json
import shutil

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from petsynth.cli import app
from petsynth.data.geometry import Geometry
from petsynth.data.prepare import prepare_dataset
from petsynth.inference import load_model
from petsynth.io.nifti import read_nifti
from petsynth.methods.base import build_method
from petsynth.phantom import make_study, write_study
from petsynth.train.trainer import RunConfig, train
from petsynth.translation import InputImage, TranslateError, WrongTaskError, image_on_grid, translate
from conftest import tiny_train_config

TINY_UNET = {"unet": {"features": [4, 8, 16, 32, 64, 4]}}
LOW = "PT_low_0.1"  # the phantom's low-dose series (dose fraction 0.1): 12 s frames against the PET's 120 s


def _task_setup(task, root):
    """One phantom study of ``task`` as DICOM and NIfTI, and a unet trained 2 steps on it (size 32)."""
    study = make_study(task, 3, 0, preset="tiny", dose_fractions=[0.1])
    dicom_dir = write_study(study, root / "dicom", fmt="dicom")
    nifti_dir = write_study(study, root / "nifti", fmt="nifti")
    prepare_dataset([dicom_dir], root / "ds", task, size=32, key=b"k", split=(1.0, 0.0, 0.0))
    model = train(RunConfig(method="unet", task=task, data=str(root / "ds"), method_config=TINY_UNET,
                            train=tiny_train_config(steps=2)), root / "run")
    return study, dicom_dir, nifti_dir, model


@pytest.fixture(scope="module")
def mr(tmp_path_factory):
    return _task_setup("mr2pet", tmp_path_factory.mktemp("mr2pet"))


@pytest.fixture(scope="module")
def lpet(tmp_path_factory):
    return _task_setup("lpet2spet", tmp_path_factory.mktemp("lpet2spet"))


def _header(folder):
    return pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)


def _check_geometry(result, truth: Geometry, model):
    """The output NIfTI and DICOM series lie on the source's slices (``truth``: the simulated geometry), with its
    orientation and centre and the model's training pixel spacing; finite SUV >= 0. Returns the DICOM files."""
    suv, affine = read_nifti(result.files["nifti"])
    grid = Geometry.from_affine(suv.shape, affine)
    spacing = load_model(model).card.data["spacing_mm"]
    assert suv.shape[0] == truth.shape[0] and suv.shape[1] == suv.shape[2] and suv.shape[1] % 32 == 0
    assert np.allclose(grid.spacing, (truth.spacing[0], *spacing), atol=1e-4)
    assert np.allclose(grid.direction, truth.direction, atol=1e-6)
    assert np.allclose(grid.z_positions(), truth.z_positions(), atol=1e-3)
    assert np.allclose(grid.center(), truth.center(), atol=1e-3)
    assert np.isfinite(suv).all() and suv.min() >= 0 and suv.max() > 0
    assert suv[:, 0, 0].max() == 0  # the grid's corner is air: masked
    datasets = sorted((pydicom.dcmread(f) for f in result.files["dicom"].glob("*.dcm")),
                      key=lambda d: float(d.ImagePositionPatient[2]))
    assert [float(d.ImagePositionPatient[2]) for d in datasets] == pytest.approx(truth.z_positions(), abs=1e-3)
    assert all(d.Modality == "PT" and d.Units == "GML" for d in datasets)
    return datasets


def test_mr2pet_translates_an_mr_study_and_an_mr_nifti_on_the_mr_slices(mr, tmp_path):
    study, dicom_dir, nifti_dir, model = mr
    truth = study.images["MR"].geometry
    result = translate(model, dicom_dir, tmp_path / "d", png=True)
    datasets = _check_geometry(result, truth, model)
    mr_header = _header(dicom_dir / "MR")
    assert {d.StudyInstanceUID for d in datasets} == {mr_header.StudyInstanceUID}
    assert {d.FrameOfReferenceUID for d in datasets} == {mr_header.FrameOfReferenceUID}
    assert "Synthesized from MR" in datasets[0].DerivationDescription
    mr_vol, mr_affine = read_nifti(result.files["mr_nifti"])  # the input MR, as read, on its own grid
    assert np.allclose(mr_affine, truth.affine, atol=1e-4)
    assert np.allclose(mr_vol, study.images["MR"].volume, atol=0.5)
    assert (result.files["panels"] / "slices.png").is_file() and "ct_nifti" not in result.files
    info = json.loads(result.files["summary"].read_text())
    assert info["task"] == "mr2pet" and info["inputs"] == {"source": {"modality": "MR", "label": "MR",
                                                                      "kind": "dicom"}}
    assert info["kvp"] is None  # no CT

    nifti = translate(model, nifti_dir / "mr.nii.gz", tmp_path / "n")
    datasets = _check_geometry(nifti, truth, model)
    assert datasets[0].StudyInstanceUID != mr_header.StudyInstanceUID  # NIfTI: a new study
    # same grid, same MR: same output, but for the brain mask's edge (the DICOM MR holds the values rounded to
    # integers, and the mask's thresholds can fall either side of them)
    differ = ~np.isclose(nifti.suv, result.suv, atol=1e-4)
    assert differ.mean() < 0.01
    unmasked = translate(model, nifti_dir / "mr.nii.gz", tmp_path / "u", mask_body=False, write_dicom=False)
    assert (unmasked.suv > 0).sum() > (nifti.suv > 0).sum()  # the MR head mask removed the rim


def test_lpet2spet_translates_a_study_and_a_low_dose_nifti_with_its_ct_in_the_pet_frame(lpet, tmp_path):
    study, dicom_dir, nifti_dir, model = lpet
    truth = study.images[LOW].geometry
    assert study.images["CT"].geometry.shape[0] != truth.shape[0]  # the CT has other slices
    result = translate(model, dicom_dir, tmp_path / "d")
    datasets = _check_geometry(result, truth, model)
    low, ct = _header(dicom_dir / LOW), _header(dicom_dir / "CT")
    assert {d.StudyInstanceUID for d in datasets} == {low.StudyInstanceUID}
    assert {d.FrameOfReferenceUID for d in datasets} == {low.FrameOfReferenceUID} == {ct.FrameOfReferenceUID}
    assert {d.SeriesNumber for d in datasets} == {int(low.SeriesNumber) + 1000}  # the low-dose PET's header
    assert "Synthesized from low-dose PET with CT guidance" in datasets[0].DerivationDescription
    # the source is the low-dose series (shortest frames), in SUV; the CT is written beside it, in HU
    source, _ = read_nifti(result.files["low_dose_pet_nifti"])
    assert np.allclose(source, study.images[LOW].volume, rtol=1e-3, atol=1e-3)
    ct_vol, ct_affine = read_nifti(result.files["ct_nifti"])
    assert np.allclose(ct_affine, study.images["CT"].geometry.affine, atol=1e-4)
    info = json.loads(result.files["summary"].read_text())
    assert info["inputs"]["source"]["label"] == "low-dose PET" and info["inputs"]["guidance"]["modality"] == "CT"
    assert info["kvp"] == pytest.approx(float(study.acquisition.kvp)) and info["kvp_source"] == "header"

    nifti = translate(model, nifti_dir / "pet_low_0.1.nii.gz", tmp_path / "n", ct=nifti_dir / "ct.nii.gz",
                      kvp=float(study.acquisition.kvp))
    _check_geometry(nifti, truth, model)
    assert np.allclose(nifti.suv, result.suv, atol=1e-3)
    assert json.loads(nifti.files["summary"].read_text())["inputs"]["guidance"]["kind"] == "nifti"


def test_the_guidance_ct_is_resampled_onto_the_source_slices_in_world_coordinates():
    # a CT whose value is its z (mm), on 5 mm slices; a grid of 3 slices 7 mm apart, another pixel size
    z0, nz = -40.0, 20
    ramp = (z0 + 5.0 * np.arange(nz, dtype=np.float32))[:, None, None] * np.ones((1, 64, 64), np.float32)
    ct = InputImage(ramp, Geometry(shape=(nz, 64, 64), spacing=(5.0, 4.0, 4.0), origin=(-126.0, -126.0, z0)))
    grid = Geometry(shape=(3, 32, 32), spacing=(7.0, 6.0, 6.0), origin=(-93.0, -93.0, -20.0))
    values = image_on_grid(ct, grid)
    assert np.allclose(values[:, 16, 16], [-20.0, -13.0, -6.0], atol=1e-3)
    outside = Geometry(shape=(1, 32, 32), spacing=(7.0, 6.0, 6.0), origin=(-93.0, -93.0, 500.0))
    assert np.all(image_on_grid(ct, outside) == -1000.0)  # air outside the CT


def test_a_model_of_another_task_is_refused_before_anything_is_written(mr, lpet, tmp_path):
    _, mr_dicom, mr_nifti, mr_model = mr
    _, pet_dicom, pet_nifti, pet_model = lpet
    ct2pet = build_method("unet", TINY_UNET, task="ct2pet").eval()
    out = tmp_path / "out"
    with pytest.raises(WrongTaskError, match=r"for ct2pet \(it reads a CT.*\); .* holds MR, PT series, no CT"):
        translate(ct2pet, mr_dicom, out)
    with pytest.raises(WrongTaskError, match=r"for mr2pet \(it reads an MR.*holds CT, PT series, no MR series"):
        translate(mr_model, pet_dicom, out)
    with pytest.raises(WrongTaskError, match=r"ct.nii.gz does not look like an MR image: .*CT in HU.*mr2pet"):
        translate(mr_model, pet_nifti / "ct.nii.gz", out)
    with pytest.raises(WrongTaskError, match=r"does not look like a PET in SUV: .*CT in HU.*lpet2spet"):
        translate(pet_model, pet_nifti / "ct.nii.gz", out, ct=pet_nifti / "ct.nii.gz")
    with pytest.raises(WrongTaskError, match=r"does not look like a CT in HU"):
        translate(pet_model, pet_nifti / "pet_low_0.1.nii.gz", out, ct=pet_nifti / "pet.nii.gz")
    with pytest.raises(TranslateError, match=r"lpet2spet .*: pass the CT as --ct"):
        translate(pet_model, pet_nifti / "pet_low_0.1.nii.gz", out)
    with pytest.raises(TranslateError, match=r"--ct gives a guidance CT, but the model is for mr2pet"):
        translate(mr_model, mr_nifti / "mr.nii.gz", out, ct=pet_nifti / "ct.nii.gz")
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_a_study_folder_must_hold_one_study_with_registered_series(lpet, mr, tmp_path):
    _, pet_dicom, _, pet_model = lpet
    both = tmp_path / "both"
    shutil.copytree(pet_dicom, both / "a")
    shutil.copytree(mr[1], both / "b")
    with pytest.raises(TranslateError, match="holds 2 studies"):
        translate(pet_model, both, tmp_path / "o")
    moved = tmp_path / "moved"
    shutil.copytree(pet_dicom, moved, ignore=shutil.ignore_patterns("truth"))
    for f in (moved / "CT").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
        ds.save_as(f)
    with pytest.raises(TranslateError, match="different FrameOfReferenceUIDs"):
        translate(pet_model, moved, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_cli_takes_the_ct_of_a_nifti_low_dose_pet(lpet, tmp_path):
    _, _, nifti_dir, model = lpet
    args = ["translate", str(model), str(nifti_dir / "pet_low_0.1.nii.gz"), "--out", str(tmp_path / "c")]
    ok = CliRunner().invoke(app, [*args, "--ct", str(nifti_dir / "ct.nii.gz"), "--no-dicom"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "c" / "synthetic_pet.nii.gz").is_file()
    missing = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "d")])
    assert missing.exit_code == 1 and "--ct" in missing.output and not (tmp_path / "d").exists()

"""`petsynth translate`: a phantom DICOM study, a NIfTI CT and a dataset split -> synthetic PET whose geometry
matches the input (affine, positions, spacing, slice count) in a plausible SUV range; bad inputs fail cleanly
and leave nothing behind."""

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

import petsynth
from petsynth.cli import app
from petsynth.data.geometry import Geometry, resample
from petsynth.inference import DEMO_MODEL, bundled_models, load_model, resolve_model
from petsynth.io.nifti import lps_to_ras_affine, read_nifti
from petsynth.methods.base import MethodError, build_method
from petsynth.phantom import make_torso, write_study
from petsynth.train.checkpoint import CheckpointError, ModelCard, save_checkpoint
from petsynth.translation import (
    TranslateError,
    body_mask,
    image_on_grid,
    output_geometry,
    read_input,
    translate,
)

STEPS = 2  # few sampling steps keep the tests fast; the geometry does not depend on them


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom")
    study = make_torso(3, preset="tiny")
    dicom_dir = write_study(study, root / "dicom", fmt="dicom")
    nifti_dir = write_study(study, root / "nifti", fmt="nifti")
    return study, dicom_dir, nifti_dir


@pytest.fixture(scope="module")
def translated(phantom, tmp_path_factory):
    _, dicom_dir, _ = phantom
    out = tmp_path_factory.mktemp("out") / "t"
    return translate(DEMO_MODEL, dicom_dir / "CT", out, steps=STEPS, png=True)


def test_bundled_model_is_found_by_name_and_knows_its_training_scale():
    assert DEMO_MODEL in bundled_models()
    method = load_model(DEMO_MODEL)
    assert method.name == "cpdm" and method.task == "ct2pet"
    assert method.card.data["spacing_mm"][0] > 1 and "phantom" in method.card.notes
    size = sum(f.stat().st_size for f in resolve_model(DEMO_MODEL).iterdir())
    assert size < 40e6  # "a few tens of MB at most"


def test_output_grid_keeps_the_ct_slices_and_centre_at_the_model_spacing():
    ct = Geometry(shape=(5, 100, 80), spacing=(2.5, 0.8, 0.9), origin=(-30.0, -50.0, 100.0))
    grid = output_geometry(ct, 4.0)
    assert grid.shape[0] == 5 and grid.shape[1] == grid.shape[2] and grid.shape[1] % 32 == 0
    assert grid.shape[1] * 4.0 >= 100 * 0.8  # covers the CT's field of view
    assert np.allclose(grid.center(), ct.center(), atol=1e-6)
    assert np.allclose(grid.z_positions(), ct.z_positions())
    assert grid.spacing == (2.5, 4.0, 4.0)
    assert output_geometry(ct, 4.0, min_size=100).shape[1:] == (128, 128)  # at least the training size


def test_body_mask_fills_enclosed_air_and_grows_by_the_margin():
    yy, xx = np.mgrid[:64, :64]
    hu = np.full((1, 64, 64), -1000.0)
    hu[0][((yy - 32) / 20) ** 2 + ((xx - 32) / 25) ** 2 <= 1] = 40.0          # body
    hu[0][((yy - 32) / 8) ** 2 + ((xx - 22) / 6) ** 2 <= 1] = -850.0          # a lung inside it
    mask = body_mask(hu, spacing_mm=2.0, margin_mm=6.0)[0]
    assert mask[32, 22] and mask[32, 32]                                       # the lung is inside
    assert mask[32, 32 + 25 + 3] and not mask[32, 32 + 25 + 4]                 # grown by 6 mm = 3 pixels
    assert not mask[0, 0] and body_mask(hu, 2.0, margin_mm=0.0)[0].sum() < mask.sum()


def test_dicom_study_translation_overlays_the_ct(phantom, translated):
    study, _, _ = phantom
    ct = study.images["CT"].geometry
    img = nib.load(translated.files["nifti"])
    suv = np.asarray(img.dataobj).transpose(2, 1, 0)
    assert suv.shape == translated.suv.shape and suv.shape[0] == ct.shape[0]
    # same world: the NIfTI affine is the output grid's, whose slices are the CT's and centre the CT's
    assert np.allclose(img.affine, lps_to_ras_affine(translated.geometry.affine), atol=1e-4)
    assert np.allclose(translated.geometry.center(), ct.center(), atol=1e-3)
    assert np.allclose(translated.geometry.z_positions(), ct.z_positions(), atol=1e-3)
    spacing = load_model(DEMO_MODEL).card.data["spacing_mm"][0]
    assert np.allclose(img.header.get_zooms(), (spacing, spacing, ct.spacing[0]), atol=1e-4)
    # the CT written beside it is the input CT on its own grid
    ct_vol, ct_affine = read_nifti(translated.files["ct_nifti"])
    assert np.allclose(ct_affine, ct.affine, atol=1e-4) and np.allclose(ct_vol, study.images["CT"].volume, atol=0.5)
    # SUV: non-negative, body above air, below the model's window
    # SUV: non-negative, below the model's window, activity in the body, none in the air around it
    ct_grid = image_on_grid(read_input(phantom[1] / "CT", "ct2pet").source, translated.geometry)
    inside = body_mask(ct_grid, translated.geometry.spacing[1])
    assert translated.suv.min() >= 0 and translated.suv.max() <= 20.0 + 1e-3
    assert np.all(translated.suv[~inside] == 0)
    pet = study.images["PT"]
    real = resample(pet.volume.astype(np.float32), pet.geometry, translated.geometry, fill=0.0)
    assert 0.5 < translated.suv[inside].mean() / real[inside].mean() < 2.0
    info = json.loads(translated.files["summary"].read_text())
    assert info["kvp"] == pytest.approx(float(study.acquisition.kvp)) and info["kvp_source"] == "header"
    assert info["options"]["steps_used"] == STEPS
    assert (translated.files["panels"] / "slices.png").is_file()


def test_dicom_series_is_in_the_ct_study_and_matches_the_nifti(phantom, translated):
    study, dicom_dir, _ = phantom
    ct_header = pydicom.dcmread(next((dicom_dir / "CT").iterdir()), stop_before_pixels=True)
    files = sorted(translated.files["dicom"].glob("*.dcm"))
    assert len(files) == translated.suv.shape[0]
    datasets = [pydicom.dcmread(f) for f in files]
    normal = np.array([0.0, 0.0, 1.0])
    datasets.sort(key=lambda d: float(np.dot([float(v) for v in d.ImagePositionPatient], normal)))
    assert {d.StudyInstanceUID for d in datasets} == {ct_header.StudyInstanceUID}
    assert {d.FrameOfReferenceUID for d in datasets} == {ct_header.FrameOfReferenceUID}
    assert ct_header.SeriesInstanceUID not in {d.SeriesInstanceUID for d in datasets}
    assert all(d.Modality == "PT" and d.Units == "GML" and d.ImageType[0] == "DERIVED" for d in datasets)
    assert "NOT FOR DIAGNOSIS" in datasets[0].SeriesDescription.upper()
    geometry = translated.geometry
    for k, d in enumerate(datasets):
        position = geometry.index_to_world(np.array([0.0, 0.0, k]))
        assert np.allclose([float(v) for v in d.ImagePositionPatient], position, atol=1e-3)
        assert np.allclose([float(v) for v in d.PixelSpacing], geometry.spacing[1:], atol=1e-4)
        values = d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
        assert np.allclose(values, translated.suv[k], atol=float(d.RescaleSlope) / 2 + 1e-6)


def test_nifti_ct_translation_uses_the_kvp_option_or_warns(phantom, tmp_path):
    study, _, nifti_dir = phantom
    out = tmp_path / "n"
    result = translate(DEMO_MODEL, nifti_dir / "ct.nii.gz", out, steps=STEPS, kvp=100.0)
    ct = study.images["CT"].geometry
    assert result.suv.shape[0] == ct.shape[0]
    assert np.allclose(result.geometry.z_positions(), ct.z_positions(), atol=1e-3)
    assert json.loads((out / "translate.json").read_text())["kvp_source"] == "option"
    assert not (out / "ct.nii.gz").exists()
    dicom = [pydicom.dcmread(f) for f in sorted((out / "dicom").glob("*.dcm"))]
    assert len(dicom) == ct.shape[0] and not str(dicom[0].get("PatientName", ""))
    with pytest.warns(UserWarning, match="kVp"):
        translate(DEMO_MODEL, nifti_dir / "ct.nii.gz", tmp_path / "w", steps=1, write_dicom=False)
    assert json.loads((tmp_path / "w" / "translate.json").read_text())["kvp"] == 120.0


def test_dataset_split_translation_writes_one_volume_per_study(tiny_dataset, tmp_path):
    from petsynth.data import open_dataset

    method = build_method("unet", {"unet": {"features": [4, 8, 16, 32, 64, 4]}}).eval()
    out = tmp_path / "ds"
    result = translate(method, tiny_dataset, out, split="train")
    train = open_dataset(tiny_dataset, "train")
    for study in train.studies:
        vol, affine = read_nifti(out / study / "synthetic_pet.nii.gz")
        n = len(train.study_slices(study))
        assert vol.shape == (n, 32, 32) and vol.min() >= 0
        first, last = train[train.study_slices(study)[0]], train[train.study_slices(study)[-1]]
        assert np.isclose(affine[2, 3], first["z_mm"], atol=1e-4)
        assert np.isclose(affine[2, 3] + (n - 1) * affine[2, 2], last["z_mm"], atol=1e-3)
        assert np.allclose(np.abs(np.diag(affine)[:2]), first["spacing_mm"][::-1], atol=1e-5)
    assert result.slices == len(train)


def _mr_model(path):
    method = build_method("unet", {"unet": {"features": [4, 8, 16, 32, 64, 4]}}, task="mr2pet")
    card = ModelCard(method="unet", task="mr2pet", config=method.config.to_dict())
    return save_checkpoint(path, card, {"model": method.state_dict()})


def test_bad_inputs_fail_with_a_clear_error_and_write_nothing(phantom, tmp_path):
    study, dicom_dir, nifti_dir = phantom
    out = tmp_path / "out"
    with pytest.raises(TranslateError, match="no CT series"):
        translate(DEMO_MODEL, dicom_dir / "PT", out)
    with pytest.raises(TranslateError, match="does not look like a CT"):
        translate(DEMO_MODEL, nifti_dir / "pet.nii.gz", out)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_bytes(b"\x80\x04not a model")
    with pytest.raises(CheckpointError, match="not a petsynth model"):
        translate(tmp_path / "junk", dicom_dir / "CT", out)
    with pytest.raises(MethodError, match="mr2pet"):
        translate(_mr_model(tmp_path / "mr"), dicom_dir / "CT", out)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    out.mkdir()
    with pytest.raises(TranslateError, match="exists"):
        translate(DEMO_MODEL, dicom_dir / "CT", out)


def test_python_api_and_cli(phantom, tmp_path):
    _, _, nifti_dir = phantom
    assert petsynth.translate is translate
    result = CliRunner().invoke(app, ["translate", DEMO_MODEL, str(nifti_dir / "ct.nii.gz"), "--out",
                                      str(tmp_path / "c"), "--steps", "1", "--no-dicom"])
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "kVp" in result.output and "phantoms only" in result.output
    assert (tmp_path / "c" / "synthetic_pet.nii.gz").is_file() and not (tmp_path / "c" / "dicom").exists()
    bad = CliRunner().invoke(app, ["translate", "no-such-model", str(nifti_dir / "ct.nii.gz"), "--out",
                                   str(tmp_path / "d")])
    assert bad.exit_code == 1 and "no such model" in bad.output
    bad = CliRunner().invoke(app, ["translate", DEMO_MODEL, str(nifti_dir / "ct.nii.gz"), "--out",
                                   str(tmp_path / "e"), "--sampler-option", "snr=0.16"])
    assert bad.exit_code == 1 and "cpdm has no sampler option 'snr'" in " ".join(bad.output.split())
    assert not (tmp_path / "e").exists()


def test_an_archive_translates_each_study_into_its_pseudonym_and_a_broken_one_fails_alone(tmp_path):
    import shutil

    archive = tmp_path / "Doe_Jane-archive"
    write_study(make_torso(12, preset="tiny"), archive / "a", fmt="dicom")
    write_study(make_torso(13, preset="tiny"), archive / "b", fmt="dicom")
    broken = write_study(make_torso(14, preset="tiny"), archive / "Doe_Jane-broken", fmt="dicom")
    for f in sorted((broken / "CT").glob("*.dcm"))[1:]:
        f.unlink()  # a CT of one slice: translate needs a volume
    shutil.rmtree(broken / "PT")
    key = tmp_path / "key"
    args = ["translate", DEMO_MODEL, str(archive), "--out", str(tmp_path / "out"), "--steps", "1", "--threads", "1",
            "--key-file", str(key), "--no-dicom"]
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "3 studies found: 2 translated" in text and "1 failed" in text
    report = json.loads((tmp_path / "out" / "batch_report.json").read_text())
    statuses = sorted(s["status"] for s in report["studies"])
    assert statuses == ["failed", "ok", "ok"] and all(s["study"].startswith("s") for s in report["studies"])
    failed = next(s for s in report["studies"] if s["status"] == "failed")
    assert "single slice" in failed["reason"] and "Doe_Jane" not in json.dumps(report)
    for s in report["studies"]:
        assert (tmp_path / "out" / s["study"] / "synthetic_pet.nii.gz").is_file() == (s["status"] == "ok")
    again = CliRunner().invoke(app, args + ["--resume"])
    assert again.exit_code == 1 and "2 already in" in " ".join(again.output.split())
    refused = CliRunner().invoke(app, args)  # OUT exists: neither --resume nor --overwrite
    assert refused.exit_code == 1 and "--resume" in " ".join(refused.output.split())

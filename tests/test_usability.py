"""What a newcomer meets in the first hour: warnings that name the tag and the series, folders that are not
ours left alone, files that follow the umask, threads that adapt to a busy machine, honest help texts, and a
word about pairs whose source covers little of the PET slice. Each test fails on the behaviour it replaced."""

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom import config as pydicom_config
from typer.testing import CliRunner

from petsynth import inference
from petsynth.cli import app
from petsynth.data.prepare import prepare_dataset
from petsynth.data.store import DatasetError, open_dataset
from petsynth.phantom import make_torso, write_study, write_studies
from petsynth.translation import TranslateError, translate
from petsynth.utils.files import atomic_directory, atomic_write_text

KEY = b"usability"
REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tcia-sts" / "STS_003" / "cropped" / "CT" / "image"
#: PS3.5 table 6.2-1: a Short String (SH) holds at most 16 characters.
SH_MAX = 16


def _flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


@pytest.fixture(scope="module")
def tiny_ct(tmp_path_factory):
    """A tiny phantom DICOM study whose CT carries a 17-character StudyID (VR SH allows 16)."""
    root = tmp_path_factory.mktemp("long-id")
    study = write_study(make_torso(4, preset="tiny"), root / "study", fmt="dicom")
    with pydicom_config.disable_value_validation():
        for f in (study / "CT").glob("*.dcm"):
            ds = pydicom.dcmread(f)
            ds.StudyID = "LONG-STUDY-ID-017"
            ds.save_as(f)
    return study


def test_a_value_too_long_for_its_vr_is_cut_with_one_warning_naming_tag_and_series(tiny_ct, tmp_path):
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, ["translate", "phantom-cpdm", str(tiny_ct / "CT"), "--out",
                                          str(tmp_path / "t"), "--steps", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    text = _flat(result.output)
    assert text.count("StudyID (0020,0010)") == 1 and f"{tiny_ct / 'CT'}: the CT series" in text
    assert "value length" not in text and not [w for w in escaped if "value length" in str(w.message)]
    assert "LONG-STUDY-ID-017" not in text  # the warning names the attribute, never its value
    ids = {pydicom.dcmread(f, stop_before_pixels=True).StudyID for f in (tmp_path / "t" / "dicom").glob("*.dcm")}
    assert ids == {"LONG-STUDY-ID-017"[:SH_MAX]}


@pytest.mark.skipif(not REAL_CT.is_dir(), reason=f"the shared TCIA data is not at {REAL_CT}")
def test_the_real_tcia_ct_translates_with_one_warning_instead_of_one_per_file(tmp_path):
    with pydicom_config.disable_value_validation():
        source_id = str(pydicom.dcmread(next(REAL_CT.glob("*.dcm")), stop_before_pixels=True).StudyID)
    assert len(source_id) > SH_MAX  # the data's own non-conformance, which the issue reported
    result = CliRunner().invoke(app, ["translate", "phantom-cpdm", str(REAL_CT), "--out", str(tmp_path / "t"),
                                      "--steps", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    text = _flat(result.output)
    assert text.count("warning:") == 1 and "StudyID (0020,0010)" in text and "value length" not in text
    written = pydicom.dcmread(next((tmp_path / "t" / "dicom").glob("*.dcm")), stop_before_pixels=True)
    assert written.StudyID == source_id[:SH_MAX]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    write_studies(root, task="ct2pet", studies=2, seed=11, fmt="dicom", preset="tiny")
    return root


def test_prepare_leaves_a_folder_with_the_users_files_alone(phantoms, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    result = CliRunner().invoke(app, ["prepare", str(phantoms), "--out", str(out), "--size", "32",
                                      "--key-file", str(tmp_path / "key")])
    assert result.exit_code == 1 and "notes.txt" in _flat(result.output) and "not empty" in _flat(result.output)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is a fine place for a dataset
    assert prepare_dataset([phantoms], empty, "ct2pet", size=32, key=KEY).results
    with pytest.raises(DatasetError, match="is a file"):
        prepare_dataset([phantoms], out / "notes.txt", "ct2pet", size=32, key=KEY)


@pytest.fixture
def umask():
    def set_mask(mask):
        os.umask(mask)
    before = os.umask(0o022)
    yield set_mask
    os.umask(before)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_written_files_and_folders_follow_the_umask(phantoms, tmp_path, umask):
    umask(0o022)
    ds = tmp_path / "ds"
    prepare_dataset([phantoms], ds, "ct2pet", size=32, key=KEY)
    for name in ("dataset.yaml", "splits.json", "prepare_report.json"):
        assert _mode(ds / name) == 0o644, name
    assert _mode(ds / "studies") == 0o755 and all(_mode(s) == 0o755 for s in (ds / "studies").iterdir())
    out = translate("phantom-cpdm", next(phantoms.glob("*/CT")), tmp_path / "t", steps=1).out_dir
    assert _mode(out) == 0o755 and _mode(out / "translate.json") == 0o644 and _mode(out / "dicom") == 0o755
    umask(0o027)  # a stricter mask is honoured too (not a fixed 0644)
    atomic_write_text(tmp_path / "a.json", "{}")
    with atomic_directory(tmp_path / "folder") as tmp:
        (tmp / "inner.txt").write_text("x")
    assert _mode(tmp_path / "a.json") == 0o640 and _mode(tmp_path / "folder") == 0o750


def test_threads_follow_the_cores_other_processes_leave_free(monkeypatch):
    monkeypatch.setattr(inference, "TORCH_DEFAULT_THREADS", 2)
    monkeypatch.setattr(inference, "_AUTO_CHOICE", [])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(inference, "busy_cores", lambda sample_s=0.1: (1.1, 2))
        chosen, note = inference.choose_threads()
        assert chosen == 1 and "--threads" in note and "1.1 of 2 cores" in note
        with pytest.warns(UserWarning, match="--threads"):
            assert inference.set_threads(None) == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(inference, "busy_cores", lambda sample_s=0.1: (0.1, 2))
        assert inference.set_threads(None) == 2  # the machine is idle again: petsynth's own choice is redone
        assert inference.choose_threads(3) == (3, None)
        torch.set_num_threads(1)  # a caller's own choice is kept, without measuring, call after call
        monkeypatch.setattr(inference, "busy_cores", lambda sample_s=0.1: pytest.fail("measured"))
        assert inference.set_threads(None) == 1 and inference.set_threads(None) == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="busy cores are read from Linux's /proc/stat")
def test_busy_cores_sees_another_process_burning_a_core():
    idle = inference.busy_cores(0.5)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = inference.busy_cores(0.5)
    finally:
        burner.kill()
    assert idle is not None and busy is not None and busy[1] == idle[1]
    assert busy[0] - idle[0] > 0.5  # about one more core busy


def test_kvp_help_and_errors_say_the_range_the_tables_cover(tmp_path):
    help_text = _flat(CliRunner().invoke(app, ["translate", "--help"], env={"COLUMNS": "200"}).output)
    assert "80..140" in help_text and "20..200" not in help_text and "200.0" not in help_text
    study = write_study(make_torso(2, preset="tiny"), tmp_path / "nifti", fmt="nifti")
    result = CliRunner().invoke(app, ["translate", "phantom-cpdm", str(study / "ct.nii.gz"), "--out",
                                      str(tmp_path / "o"), "--kvp", "30"])
    assert result.exit_code == 2 and "--kvp" in _flat(result.output) and "0018,0060" not in result.output
    with pytest.raises(TranslateError, match=r"80\.\.140") as err:
        translate("phantom-cpdm", study / "ct.nii.gz", tmp_path / "o", kvp=30, steps=1)
    assert "(0018,0060)" not in str(err.value) and not (tmp_path / "o").exists()


def test_prepare_counts_every_study_it_found(phantoms, tmp_path):
    extra = tmp_path / "pet-only"
    study = write_study(make_torso(9, preset="tiny"), extra / "s", fmt="dicom")
    for f in (study / "CT").glob("*.dcm"):
        f.unlink()  # a study with a PET and no CT: it fails while planning
    calls = []
    report = prepare_dataset([phantoms, extra], tmp_path / "ds", "ct2pet", size=32, key=KEY,
                             progress=lambda *a: calls.append(a))
    studies = [c for c in calls if c[2] != "scanning"]
    assert len(report.results) == 3 and len(report.failed) == 1
    assert studies[0] == (1, 3, "starting") and studies[-1][:2] == (3, 3)
    result = CliRunner().invoke(app, ["prepare", str(next(phantoms.iterdir())), "--out", str(tmp_path / "one"),
                                      "--size", "32", "--key-file", str(tmp_path / "key")])
    text = _flat(result.output)
    assert result.exit_code == 0 and "1 study found: 1 prepared" in text and "1 studies" not in text


def _crop_ct(study: Path, keep: float) -> float:
    """Crop the study's CT NIfTI in-plane to its centred ``keep`` fraction per side; returns the fraction of
    the PET slice's area the (cropped) CT covers, from the two affines (the independent truth)."""
    ct = nib.load(study / "ct.nii.gz")
    nx, ny = ct.shape[:2]
    cx, cy = int(nx * keep), int(ny * keep)
    x0, y0 = (nx - cx) // 2, (ny - cy) // 2
    cropped = ct.slicer[x0:x0 + cx, y0:y0 + cy, :]
    if keep < 1:
        nib.save(nib.Nifti1Image(np.asarray(cropped.dataobj), cropped.affine), study / "ct.nii.gz")
    pet = nib.load(study / "pet.nii.gz")
    n = 400  # points across the PET slice, counted inside the crop's rectangle in world coordinates
    u = (np.arange(n) + 0.5) / n
    i, j = np.meshgrid(u * pet.shape[0] - 0.5, u * pet.shape[1] - 0.5, indexing="ij")
    world = pet.affine[:2, :2] @ np.stack([i.ravel(), j.ravel()]) + pet.affine[:2, 3:4]
    ij = np.linalg.solve(cropped.affine[:2, :2], world - cropped.affine[:2, 3:4])
    inside = (ij[0] > -0.5) & (ij[0] < cx - 0.5) & (ij[1] > -0.5) & (ij[1] < cy - 0.5)
    return float(inside.mean())


def test_pairs_whose_source_covers_little_of_the_pet_slice_are_named_and_can_be_dropped(tmp_path):
    raw = tmp_path / "raw"
    whole = write_study(make_torso(5, preset="tiny"), raw / "whole", fmt="nifti")
    part = write_study(make_torso(6, preset="tiny"), raw / "part", fmt="nifti")
    expected, expected_whole = _crop_ct(part, 0.35), _crop_ct(whole, 1.0)
    assert 0.05 < expected < 0.4 and expected_whole > 0.5
    report = prepare_dataset([raw], tmp_path / "ds", "ct2pet", size=32, key=KEY)
    results = sorted(report.results, key=lambda r: r.least_coverage)
    low, full = results
    assert low.low_coverage == low.slices > 0 and abs(low.least_coverage - expected) < 0.03
    assert full.low_coverage == 0 and abs(full.least_coverage - expected_whole) < 0.03
    result = CliRunner().invoke(app, ["prepare", str(raw), "--out", str(tmp_path / "ds2"), "--size", "32",
                                      "--key-file", str(tmp_path / "key"), "--min-coverage", "0.5"])
    text = _flat(result.output)
    assert result.exit_code == 1 and "covering at least 50%" in text  # the cropped study has no pair left
    kept = open_dataset(tmp_path / "ds2")
    assert len(kept.studies) == 1 and len(kept) == full.slices
    plain = CliRunner().invoke(app, ["prepare", str(raw), "--out", str(tmp_path / "ds3"), "--size", "32",
                                     "--key-file", str(tmp_path / "key")])
    assert plain.exit_code == 0 and "--min-coverage" in _flat(plain.output)


COMMANDS = ("phantom", "prepare", "train", "evaluate", "methods", "translate", "bench", "demo")


def test_help_reads_like_a_command_line_tool():
    for command in COMMANDS:
        text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "160"}).output
        usage = next(line for line in text.splitlines() if "Usage:" in line)
        last = usage.split()[-1]
        assert "{" not in usage and (last == "[OPTIONS]" or last.rstrip(".").isupper()), usage
        for typer_label in ("<bool>", "<list[", "<path>", "<int", "<float", "<str>"):
            assert typer_label not in text, (command, typer_label)
    usage = lambda c: next(li for li in CliRunner().invoke(app, [c, "--help"]).output.splitlines() if "Usage:" in li)
    assert usage("prepare").split("Usage:")[1].split() == ["petsynth", "prepare", "[OPTIONS]", "INPUTS..."]
    assert usage("phantom").split("Usage:")[1].split() == ["petsynth", "phantom", "[OPTIONS]", "OUT"]
    for command in ("train", "evaluate", "translate", "bench"):
        text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "160"}).output
        assert "--device" in text and "-b" in text.replace("--batch-size", ""), command
    bad = CliRunner().invoke(app, ["evaluate", "m", "--data", ".", "--out", "x", "--device", "gpu"])
    assert bad.exit_code != 0 and "cuda:N" in _flat(bad.output)

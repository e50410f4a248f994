"""prepare: phantom DICOM studies -> dataset with HU/SUV pairs, truth, splits, no PHI, resume, failures."""

import json
import shutil

import numpy as np
import pydicom
import pytest

from petsynth.data import open_dataset
from petsynth.data.prepare import assign_splits, prepare_dataset
from petsynth.phantom import write_studies

KEY = b"test-key"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    write_studies(root, task="ct2pet", studies=3, seed=11, fmt="dicom", preset="tiny")
    (root / "junk.txt").write_text("not dicom")
    return root


def test_prepare_phantom_studies(phantoms, tmp_path):
    calls = []
    report = prepare_dataset([phantoms], tmp_path / "ds", "ct2pet", size=64, key=KEY,
                             progress=lambda *args: calls.append(args))
    assert [r.status for r in report.results] == ["ok"] * 3 and not report.failed
    files = sum(1 for f in phantoms.rglob("*") if f.is_file())
    scans = [c for c in calls if c[2] == "scanning"]
    assert scans and scans[-1][:2] == (files, files)  # the scan reports its progress, ending at every file
    assert calls[len(scans):] == [(0, 3, "starting"), (1, 3, "ok"), (2, 3, "ok"), (3, 3, "ok")]
    ds = open_dataset(tmp_path / "ds")
    assert len(ds) == sum(r.slices for r in report.results) and len(ds.studies) == 3
    assert {ds.splits[s] for s in ds.studies} <= {"train", "val", "test"} and len(set(ds.splits.values())) == 3
    item = ds[len(ds) // 2]
    assert item["source"].shape == (64, 64) and item["target"].shape == (64, 64)
    assert item["source"].min() >= -1100 and item["source"].max() > 200  # CT in HU (air, bone)
    assert 80 <= item["kvp"] <= 140 and item["units"] == "BQML" and item["vendor"]
    # PET in SUV: over the body it matches the phantom's noise-free truth on the same grid
    body = item["labels"] > 0
    assert body.sum() > 100
    assert item["target"][body].mean() == pytest.approx(item["truth"][body].mean(), rel=0.1)
    zs = [ds[i]["z_mm"] for i in range(len(ds)) if ds[i]["study"] == item["study"]]
    assert zs == sorted(zs)  # slices of a study in order


def test_no_identifiers_written(phantoms, tmp_path):
    report = prepare_dataset([phantoms], tmp_path / "ds", "ct2pet", size=32, key=KEY, workers=2)
    assert [r.status for r in report.results] == ["ok"] * 3  # through the process pool
    first = pydicom.dcmread(next(phantoms.rglob("PT/*.dcm")))
    secrets = [str(first.PatientName), str(first.PatientID), str(first.StudyInstanceUID)]
    for f in (tmp_path / "ds").rglob("*"):
        if f.is_file():
            blob = f.read_bytes()
            for s in secrets:
                assert s.encode() not in blob, f"{s} found in {f}"


def test_failed_study_is_reported_others_kept_and_resume_skips(phantoms, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(phantoms, raw)
    broken = sorted(p for p in raw.iterdir() if p.is_dir())[0]
    for f in (broken / "PT").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        del ds.PatientWeight
        ds.save_as(f)
    report = prepare_dataset([raw], tmp_path / "ds", "ct2pet", size=32, key=KEY)
    assert sorted(r.status for r in report.results) == ["failed", "ok", "ok"]
    assert "PatientWeight (0010,1030)" in report.failed[0].reason
    saved = json.loads((tmp_path / "ds" / "prepare_report.json").read_text())
    assert ("junk.txt", "not a DICOM file") in report.skipped_files
    assert saved["skipped_files_by_reason"]["not a DICOM file"] >= 1 and "junk.txt" not in json.dumps(saved)
    assert str(broken) not in report.failed[0].reason
    again = prepare_dataset([raw], tmp_path / "ds", "ct2pet", size=32, key=KEY, resume=True)
    assert sorted(r.status for r in again.results) == ["failed", "skipped", "skipped"]
    assert len(open_dataset(tmp_path / "ds").studies) == 2


def test_splits_by_patient():
    patients = {f"s{i}": f"p{i // 2}" for i in range(20)}  # two studies per patient
    splits = assign_splits(patients, (0.8, 0.1, 0.1), KEY, seed=0)
    for i in range(0, 20, 2):
        assert splits[f"s{i}"] == splits[f"s{i + 1}"]
    counts = {s: list(splits.values()).count(s) for s in ("train", "val", "test")}
    assert counts == {"train": 16, "val": 2, "test": 2}
    assert assign_splits(patients, (0.8, 0.1, 0.1), KEY, seed=1) != splits
    with pytest.raises(ValueError):
        assign_splits(patients, (0.5, 0.1, 0.1), KEY, seed=0)


def test_cli_prepare_exit_codes(phantoms, tmp_path):
    from typer.testing import CliRunner

    from petsynth.cli import app

    key = tmp_path / "key"
    args = ["prepare", str(phantoms), "--out", str(tmp_path / "ds"), "--size", "32", "--key-file", str(key)]
    def run(*extra):
        result = CliRunner().invoke(app, args + list(extra))
        result.text = " ".join(result.output.split())  # rich wraps lines
        return result

    result = run()
    assert result.exit_code == 0, result.output
    assert "3 studies found: 3 prepared" in result.text and key.exists() and (key.stat().st_mode & 0o777) == 0o600
    result = run()  # exists, no --resume
    assert result.exit_code == 1 and "already holds a dataset" in result.text and "--resume" in result.text
    assert "resume=True" not in result.text  # the command line's words, not the Python API's
    result = run("--resume")
    assert result.exit_code == 0 and "3 already present" in result.text
    result = run("--resume", "--split", "0.5,0.1")
    assert result.exit_code == 1 and "summing to 1" in result.text
    assert run("--task", "xx").exit_code == 2


@pytest.mark.parametrize("task", ["mr2pet", "lpet2spet"])
def test_other_tasks_on_phantoms(task, tmp_path):
    write_studies(tmp_path / "raw", task=task, studies=1, seed=2, fmt="dicom", preset="tiny",
                  dose_fractions=[0.1, 0.25])
    report = prepare_dataset([tmp_path / "raw"], tmp_path / "ds", task, size=32, key=KEY,
                             slices_per_study=(4, 6))
    assert [r.status for r in report.results] == ["ok"], report.results
    ds = open_dataset(tmp_path / "ds")
    assert 4 <= len(ds) <= 6
    indices = [ds[i]["index"] for i in range(len(ds))]
    assert indices == list(range(indices[0], indices[0] + len(ds)))  # one contiguous run, in order
    item = ds[0]
    if task == "lpet2spet":
        assert item["dose_fraction"] == pytest.approx(0.1)  # the lowest-count series is the source
        assert item["guidance"].min() < -900  # CT in HU as guidance
        body = item["labels"] > 0
        assert item["source"][body].mean() == pytest.approx(item["target"][body].mean(), rel=0.2)
    else:
        assert "guidance" not in item and item["source"].max() > 0


def test_nifti_layouts_give_the_same_pairs_as_dicom(tmp_path):
    from petsynth.data.nifti_layouts import find_nifti_studies

    write_studies(tmp_path / "dcm", task="ct2pet", studies=1, seed=4, fmt="dicom", preset="tiny")
    (plain,) = write_studies(tmp_path / "plain", task="ct2pet", studies=1, seed=4, fmt="nifti", preset="tiny")
    auto = tmp_path / "autopet" / "patient_a"
    shutil.copytree(plain, auto)
    (auto / "ct.nii.gz").rename(auto / "CTres.nii.gz")
    (auto / "pet.nii.gz").rename(auto / "SUV.nii.gz")
    heck = tmp_path / "hecktor"
    heck.mkdir()
    shutil.copy(plain / "ct.nii.gz", heck / "CHUP-001__CT.nii.gz")
    shutil.copy(plain / "pet.nii.gz", heck / "CHUP-001__PT.nii.gz")
    assert [s.layout for s in find_nifti_studies([tmp_path / "autopet", heck, tmp_path / "plain"])] == \
        ["autopet", "hecktor", "plain"]
    items = {}
    for name in ("dcm", "plain", "autopet", "hecktor"):
        report = prepare_dataset([tmp_path / name], tmp_path / f"ds_{name}", "ct2pet", size=32, key=KEY)
        assert [r.status for r in report.results] == ["ok"], (name, report.results)
        ds = open_dataset(tmp_path / f"ds_{name}")
        items[name] = [ds[i] for i in range(len(ds))]
    reference = items["dcm"]
    for name in ("plain", "autopet", "hecktor"):
        assert len(items[name]) == len(reference)
        for a, b in zip(items[name], reference):
            assert a["z_mm"] == pytest.approx(b["z_mm"], abs=1e-3)
            # DICOM stores CT as int16 and PET with one int16 slope per slice
            assert abs(a["source"] - b["source"]).max() <= 1.0
            assert abs(a["target"] - b["target"]).max() <= 1e-3 * max(1.0, abs(b["target"]).max())
    assert "truth" in items["plain"][0] and "truth" not in items["hecktor"][0]


def test_pseudonym_mapping_only_on_request_and_outside_the_dataset(phantoms, tmp_path):
    import csv

    mapping = tmp_path / "private" / "mapping.csv"
    mapping.parent.mkdir()
    with pytest.raises(ValueError, match="outside the dataset"):
        prepare_dataset([phantoms], tmp_path / "ds0", "ct2pet", size=32, key=KEY, mapping_file=tmp_path / "ds0" / "m.csv")
    report = prepare_dataset([phantoms], tmp_path / "ds", "ct2pet", size=32, key=KEY, mapping_file=mapping)
    rows = list(csv.DictReader(mapping.open()))
    uids = {str(pydicom.dcmread(next(d.rglob("PT/*.dcm"))).StudyInstanceUID): d for d in phantoms.iterdir() if d.is_dir()}
    assert {r["study_identifier"] for r in rows} == set(uids)
    assert {r["study_pseudonym"] for r in rows} == {r.study for r in report.results}
    for r in rows:
        assert r["patient_id"] == str(pydicom.dcmread(next(uids[r["study_identifier"]].rglob("CT/*.dcm"))).PatientID)
    assert not any("mapping" in f.name for f in (tmp_path / "ds").rglob("*"))


def test_a_run_killed_with_sigkill_resumes_to_the_same_dataset(phantoms, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import numpy as np

    code = ("import sys; from petsynth.data.prepare import prepare_dataset; "
            f"prepare_dataset([sys.argv[1]], sys.argv[2], 'ct2pet', size=32, key={KEY!r})")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", code, str(phantoms), str(killed)])
    try:
        while not ((killed / "studies").exists() and any((killed / "studies").iterdir())):
            assert proc.poll() is None, "preparation ended before it could be killed"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)  # while the first study is being written
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(open_dataset_studies := [p.name for p in (killed / "studies").iterdir()
                                        if not p.name.startswith(".")]) < 3, open_dataset_studies
    prepare_dataset([phantoms], killed, "ct2pet", size=32, key=KEY, resume=True)
    whole = prepare_dataset([phantoms], tmp_path / "whole", "ct2pet", size=32, key=KEY)
    a, b = open_dataset(killed), open_dataset(tmp_path / "whole")
    assert a.studies == b.studies and a.splits == b.splits and len(a) == len(b) == sum(r.slices for r in whole.results)
    for i in range(len(a)):
        for k in ("source", "target", "truth", "labels"):
            np.testing.assert_array_equal(a[i][k], b[i][k])
    assert not [p for p in (killed / "studies").iterdir() if p.name.startswith(".")]  # temp folders cleaned


def test_compressed_studies_give_the_same_dataset(phantoms, tmp_path):
    """Archives often hold compressed DICOM: RLE and JPEG 2000 lossless (decoded by pydicom's plugins, the
    pixel offset shortcut cannot apply) must give the dataset the uncompressed files give."""
    import numpy as np
    from pydicom.uid import JPEG2000Lossless, RLELossless

    study = sorted(p for p in phantoms.iterdir() if p.is_dir())[0]
    shutil.copytree(study, tmp_path / "compressed" / study.name)
    for n, path in enumerate(sorted((tmp_path / "compressed").rglob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless if n % 2 else JPEG2000Lossless)
        ds.save_as(path)
    plain = prepare_dataset([study], tmp_path / "plain", "ct2pet", size=64, key=KEY)
    packed = prepare_dataset([tmp_path / "compressed"], tmp_path / "packed", "ct2pet", size=64, key=KEY)
    assert [r.status for r in packed.results] == ["ok"]
    a, b = open_dataset(tmp_path / "plain"), open_dataset(tmp_path / "packed")
    assert len(a) == len(b) == sum(r.slices for r in plain.results)
    for i in range(len(a)):
        for key in ("source", "target", "truth", "labels"):
            np.testing.assert_array_equal(a[i][key], b[i][key])
        assert a[i]["z_mm"] == b[i]["z_mm"] and a[i]["study"] == b[i]["study"]


def test_undecodable_pixel_data_fails_its_study_only_and_names_the_file(phantoms, tmp_path):
    from pydicom.uid import JPEG2000Lossless

    first, second = sorted(p for p in phantoms.iterdir() if p.is_dir())[:2]
    for study in (first, second):
        shutil.copytree(study, tmp_path / "raw" / study.name)
    slices = sorted((tmp_path / "raw" / first.name / "CT").glob("*.dcm"),
                    key=lambda f: pydicom.dcmread(f).ImagePositionPatient[2])
    damaged = slices[len(slices) // 2 - 1:len(slices) // 2 + 2]  # three in the middle: the pairing needs some
    for path in damaged:
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless)
        ds.PixelData = ds.PixelData[:40] + b"\xff" * (len(ds.PixelData) - 40)  # a broken codestream
        ds.save_as(path)
    report = prepare_dataset([tmp_path / "raw"], tmp_path / "ds", "ct2pet", size=64, key=KEY)
    assert sorted(r.status for r in report.results) == ["failed", "ok"]
    (failed,) = report.failed
    assert any(f.name in failed.reason for f in damaged) and "pixel data cannot be decoded" in failed.reason
    assert str(tmp_path) not in failed.reason  # the folder is scrubbed (it may carry a patient's name)


def test_truth_stays_on_its_pet_slice_when_the_ct_covers_fewer_slices(phantoms, tmp_path):
    """Pairs start where the CT starts; the truth and labels must follow the PET slice of each pair."""
    import numpy as np

    from petsynth.io.nifti import read_nifti

    study = sorted(p for p in phantoms.iterdir() if p.is_dir())[0]
    shutil.copytree(study, tmp_path / "raw" / study.name)
    cts = sorted((tmp_path / "raw" / study.name / "CT").glob("*.dcm"),
                 key=lambda f: pydicom.dcmread(f).ImagePositionPatient[2])
    for f in cts[:8] + cts[-5:]:  # the CT now misses the first and last PET slices
        f.unlink()
    size = pydicom.dcmread(next((tmp_path / "raw" / study.name / "PT").glob("*.dcm"))).Rows  # no resize
    report = prepare_dataset([tmp_path / "raw"], tmp_path / "ds", "ct2pet", size=size, key=KEY)
    (result,) = report.results
    assert result.status == "ok"
    truth, _ = read_nifti(study / "truth" / "suv_truth_blurred.nii.gz")
    labels, _ = read_nifti(study / "truth" / "labels.nii.gz")
    ds = open_dataset(tmp_path / "ds")
    assert 0 < len(ds) < len(truth) and ds[0]["index"] > 0  # the first PET slices were dropped
    for i in range(len(ds)):
        item = ds[i]
        np.testing.assert_allclose(item["truth"], truth[item["index"]], atol=1e-4)  # NIfTI affine rounding
        np.testing.assert_array_equal(item["labels"], labels[item["index"]])


def test_phantom_label_table_is_stored_with_each_study(phantoms, tmp_path):
    """truth.json's tissues (air left out) and lesions ("lesion_n", label 100 + n) become the study's table."""
    prepare_dataset([phantoms], tmp_path / "ds", "ct2pet", size=32, key=KEY)
    ds = open_dataset(tmp_path / "ds")
    truths = [json.loads(p.read_text()) for p in sorted(phantoms.glob("*/truth/truth.json"))]
    tables = sorted((ds.label_table(s) for s in ds.studies), key=json.dumps)
    assert tables == sorted(
        ([{"label": r["label"], "name": r["name"], "kind": "organ"} for r in t["labels"] if r["label"] != 0]
         + [{"label": 100 + n, "name": f"lesion_{n}", "kind": "lesion",
             **({"class": les["class"], "lesion_kind": les["kind"]} if "class" in les else {})}
            for n, les in enumerate(t["lesions"])]
         for t in truths), key=json.dumps)
    assert {"label": 6, "name": "liver", "kind": "organ"} in tables[0]
    assert any(row["kind"] == "lesion" for table in tables for row in table)
    for study in ds.studies:
        named = {row["label"] for row in ds.label_table(study)}
        seen = {int(v) for i in ds.study_slices(study) for v in np.unique(ds[i]["labels"])}
        assert seen - {0} <= named  # every stored label has a name


def test_autopet_seg_is_stored_as_lesion_labels(tmp_path):
    """A tiny autoPET study: SEG.nii.gz is resampled (nearest) onto the pairs like phantom labels, named "lesion"."""
    from petsynth.io.nifti import write_nifti

    study = tmp_path / "autopet" / "p1"
    study.mkdir(parents=True)
    affine = np.diag([4.0, 4.0, 3.0, 1.0])  # (x, y, z) mm per voxel; arrays are (z, y, x)
    suv = np.ones((5, 16, 16), np.float32)
    seg = np.zeros((5, 16, 16), np.uint8)
    seg[1:4, 4:8, 6:12] = 1
    suv[seg == 1] = 7.0
    write_nifti(study / "CTres.nii.gz", np.full((5, 16, 16), 40.0), affine)
    write_nifti(study / "SUV.nii.gz", suv, affine)
    write_nifti(study / "SEG.nii.gz", seg, affine, dtype=np.uint8)
    report = prepare_dataset([tmp_path / "autopet"], tmp_path / "ds", "ct2pet", size=16, key=KEY)
    assert [r.status for r in report.results] == ["ok"] and report.skipped_files == []
    ds = open_dataset(tmp_path / "ds")
    (name,) = ds.studies
    assert ds.label_table(name) == [{"label": 1, "name": "lesion", "kind": "lesion"}]
    labels = np.stack([ds[i]["labels"] for i in range(len(ds))])
    np.testing.assert_array_equal(labels, seg)
    assert labels.dtype == np.uint8
    np.testing.assert_allclose(np.stack([ds[i]["target"] for i in range(len(ds))])[labels == 1], 7.0)
    # without SEG: no labels and an empty table
    (study / "SEG.nii.gz").unlink()
    prepare_dataset([tmp_path / "autopet"], tmp_path / "ds2", "ct2pet", size=16, key=KEY)
    ds2 = open_dataset(tmp_path / "ds2")
    assert "labels" not in ds2[0] and ds2.label_table(ds2.studies[0]) == []

"""Past one machine: prepare, translate and evaluate on a real Dask cluster (a scheduler and two worker
processes on 127.0.0.1, started here with the distributed package's own classes) give what one process gives,
even when a worker is killed in the middle of the run."""

import filecmp
import os
import shutil
import signal

import numpy as np
import pytest
from typer.testing import CliRunner

from petsynth.archive import translate_archive
from petsynth.cli import app
from petsynth.data.prepare import prepare_dataset
from petsynth.evaluate import evaluate
from petsynth.inference import PredictOptions
from petsynth.io.nifti import read_nifti
from petsynth.parallel import run_each
from petsynth.phantom import write_studies
from petsynth.translation import StudyOptions, translate

distributed = pytest.importorskip("distributed", reason="pip install 'petsynth[dask]' (a test extra)")

KEY = b"cluster"


@pytest.fixture(scope="module")
def cluster():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    yield cluster, client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    write_studies(root, task="ct2pet", studies=6, seed=21, fmt="dicom", preset="tiny")
    return root


@pytest.fixture(scope="module")
def reference(phantoms, tmp_path_factory):
    """The dataset one process prepares (the independent truth of the cluster's)."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    prepare_dataset([phantoms], out, "ct2pet", size=32, key=KEY)
    return out


def _same_tree(a, b) -> list[str]:
    """The paths that differ between two folders, byte for byte, recursively ([] when identical)."""
    cmp = filecmp.dircmp(a, b)
    diff = [*cmp.left_only, *cmp.right_only, *cmp.funny_files]
    diff += [f for f in cmp.common_files if not filecmp.cmp(a / f, b / f, shallow=False)]
    for sub in cmp.common_dirs:
        diff += [f"{sub}/{d}" for d in _same_tree(a / sub, b / sub)]
    return diff


def test_prepare_on_the_cluster_writes_the_same_dataset(cluster, phantoms, reference, tmp_path):
    address = cluster[0].scheduler_address
    result = CliRunner().invoke(app, ["prepare", str(phantoms), "--out", str(tmp_path / "ds"), "--size", "32",
                                      "--dask", address, "--key-file", str(tmp_path / "key")])
    assert result.exit_code == 0, result.output
    # the same key makes the same pseudonyms: prepare again with the reference's key for a byte comparison
    prepare_dataset([phantoms], tmp_path / "same", "ct2pet", size=32, key=KEY, dask=address)
    assert _same_tree(reference, tmp_path / "same") == []


def test_a_worker_killed_mid_run_loses_and_duplicates_no_study(cluster, phantoms, reference, tmp_path):
    cluster_, client = cluster
    killed = []

    def kill_a_busy_worker(done, total, status):
        if status in ("scanning", "starting") or killed:
            return
        busy = [w for w, keys in client.processing().items() if keys] or list(client.scheduler_info()["workers"])
        pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    report = prepare_dataset([phantoms], tmp_path / "ds", "ct2pet", size=32, key=KEY,
                             dask=cluster_.scheduler_address, progress=kill_a_busy_worker)
    assert killed, "no worker was killed"
    names = [r.study for r in report.results]
    assert len(names) == 6 and len(set(names)) == 6 and all(r.status == "ok" for r in report.results)
    assert _same_tree(reference, tmp_path / "ds") == []


def test_an_archive_on_the_cluster_equals_one_translate_per_study(cluster, phantoms, tmp_path):
    studies = sorted(p for p in phantoms.iterdir() if p.is_dir())[:2]
    archive = tmp_path / "archive"
    archive.mkdir()
    for study in studies:
        shutil.copytree(study, archive / study.name)
    mapping = tmp_path / "map.csv"
    result = translate_archive("phantom-cpdm", archive, tmp_path / "out", StudyOptions(steps=1), key=KEY,
                               dask=cluster[0].scheduler_address, mapping_file=mapping)
    assert [s.status for s in result.studies] == ["ok"] * 2
    rows = mapping.read_text().splitlines()[1:]
    for row in rows:  # each output folder is the study's pseudonym; the map says which study it is
        name, uid = row.split(",")[:2]
        single = translate("phantom-cpdm", next(s for s in studies if uid in _uids(s)) / "CT", tmp_path / name,
                           steps=1)
        batch, batch_affine = read_nifti(tmp_path / "out" / name / "synthetic_pet.nii.gz")
        alone, affine = read_nifti(single.files["nifti"])
        assert np.allclose(batch_affine, affine) and np.allclose(batch, alone, atol=1e-5)
    report = (tmp_path / "out" / "batch_report.json").read_text()
    assert str(tmp_path) not in report and all(study.name not in report for study in studies)  # pseudonyms only


def _uids(study_folder):
    import pydicom

    return {str(pydicom.dcmread(next((study_folder / "CT").glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)}


def test_evaluate_on_the_cluster_scores_as_one_process(cluster, reference, tmp_path):
    options = PredictOptions(steps=1, batch_size=5)
    here = evaluate(["phantom-cpdm"], reference, tmp_path / "here", split="all", options=options, max_slices=12)
    there = evaluate(["phantom-cpdm"], reference, tmp_path / "there", split="all", options=options, max_slices=12,
                     dask=cluster[0].scheduler_address)
    for ref in here.references:
        for key, value in here.overall["phantom-cpdm"][ref].items():
            assert there.overall["phantom-cpdm"][ref][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def _square(x, fail_on=None):
    if x == fail_on:
        raise ValueError(f"job {x} fails")
    return x * x


def test_run_each_keeps_order_when_asked_and_turns_failures_into_results():
    jobs = [3, 1, 2]
    assert list(run_each(_square, jobs, ordered=True)) == [(0, 9), (1, 1), (2, 4)]
    pooled = dict(run_each(_square, jobs, workers=2))
    assert pooled == {0: 9, 1: 1, 2: 4}
    results = dict(run_each(_square, jobs, (1,), failed=lambda job, err: f"failed {job}: {err}"))
    assert results == {0: 9, 1: "failed 1: job 1 fails", 2: 4}
    with pytest.raises(ValueError, match="job 1 fails"):
        list(run_each(_square, jobs, (1,)))

"""A full disk or a refused permission during any write (issue 17): the command fails with one line naming the
path that failed and the problem, leaves no half-written file and no temporary file behind, and a file that
was there before stays as it was.

The failures are injected where every writer's bytes go: the file objects of
:func:`petsynth.utils.files.atomic_file` (a writer that bypassed it would not fail, and its test would), as a
disk fills (ENOSPC on a write, after part of the file went out; the kernel names no file) or refuses
(EACCES on opening, naming the temporary file). One test lets the kernel itself refuse the writes
(RLIMIT_FSIZE: EFBIG) of a real ``petsynth translate`` process."""

import errno
import fnmatch
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from petsynth.cli import app
from petsynth.io.nifti import read_nifti, write_nifti
from petsynth.methods.base import build_method
from petsynth.phantom import make_torso, write_studies, write_study
from petsynth.train.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from petsynth.utils import files

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="finds open files' names in /proc")

ENOSPC = "No space left on device"
EACCES = "Permission denied"


class _FailingFile:
    """A file object whose writes fail with ENOSPC once ``budget`` bytes (or characters) went out: the first
    part is really written, as when a disk fills up."""

    def __init__(self, fh, budget: int):
        self._fh, self._budget = fh, budget

    def write(self, data):
        if len(data) <= self._budget:
            self._budget -= len(data)
            return self._fh.write(data)
        self._fh.write(data[:self._budget])
        self._fh.flush()
        self._budget = 0
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def _final_name(fd: int) -> str:
    """The name of the file an atomic_file temporary (``.NAME.XXXXXXXX.tmp``) or an appended file will have."""
    name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
    return name[1:].rsplit(".", 2)[0] if name.startswith(".") and name.endswith(".tmp") else name


@pytest.fixture
def fail_writing(monkeypatch):
    """``fail_writing(pattern, "ENOSPC" | "EACCES", budget=500)``: writing a file whose final name matches
    ``pattern`` fails: ENOSPC after ``budget`` bytes, or EACCES when the file is opened (naming the file
    opened, as the kernel does). Returns a list that collects the failing files' names."""
    failed: list[str] = []
    real_fdopen, real_open = os.fdopen, open

    def start(pattern: str, kind: str, budget: int = 500):
        def wrap(fh):
            name = _final_name(fh.fileno())
            if not fnmatch.fnmatch(name, pattern):
                return fh
            failed.append(name)
            if kind == "EACCES":
                opened = os.readlink(f"/proc/self/fd/{fh.fileno()}")
                fh.close()
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), opened)
            return _FailingFile(fh, budget)

        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **kw: wrap(real_fdopen(fd, *a, **kw)))
        monkeypatch.setattr(files, "open", lambda *a, **kw: wrap(real_open(*a, **kw)), raising=False)
        return failed

    return start


def _leftovers(folder: Path) -> list[str]:
    """Temporary files and folders of the atomic helpers anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old")))


@pytest.mark.parametrize("kind, problem", [("ENOSPC", ENOSPC), ("EACCES", EACCES)])
def test_a_failed_write_leaves_the_file_as_it_was_and_names_it(fail_writing, tmp_path, kind, problem):
    old = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    nifti = write_nifti(tmp_path / "v.nii.gz", old, np.eye(4))
    log = tmp_path / "log.csv"
    log.write_text("step,loss\n1,0.5\n")
    fail_writing("v.nii.gz", kind, budget=100)
    with pytest.raises(OSError, match=problem) as err:
        write_nifti(nifti, np.zeros((40, 30, 20), np.float32), np.eye(4))
    assert err.value.filename == str(nifti)
    assert np.array_equal(read_nifti(nifti)[0], old)  # the complete old file, not a half-written new one
    fail_writing("new.txt", kind, budget=3)
    with pytest.raises(OSError, match=problem) as err:
        files.atomic_write_text(tmp_path / "new.txt", "0123456789")
    assert err.value.filename == str(tmp_path / "new.txt") and not (tmp_path / "new.txt").exists()
    fail_writing("log.csv", kind, budget=3)  # appending: cut back to what was there
    with pytest.raises(OSError, match=problem) as err:
        with files.atomic_file(log, "a") as fh:
            fh.write("2,0.25\n")
    assert err.value.filename == str(log) and log.read_text() == "step,loss\n1,0.5\n"
    assert _leftovers(tmp_path) == []


def _error_line(output: str) -> str:
    """The last line a command printed (its error), checking there is no traceback."""
    assert "Traceback" not in output
    return [line for line in output.splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def ct_study(tmp_path_factory):
    return write_study(make_torso(3, preset="tiny"), tmp_path_factory.mktemp("study") / "s", fmt="dicom")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small untrained ct2pet U-Net on a grid of 8 mm pixels (translate's outputs are written all the same)."""
    method = build_method("unet", {"unet": {"features": [4, 8, 16, 32, 64, 4]}}, task="ct2pet")
    card = ModelCard(method="unet", task="ct2pet", config=method.config.to_dict(),
                     data={"spacing_mm": [8.0, 8.0], "size": 32})
    return str(save_checkpoint(tmp_path_factory.mktemp("model") / "unet", card, {"model": method.state_dict()}))


@pytest.mark.parametrize("file, kind, problem", [
    ("synthetic_pet.nii.gz", "ENOSPC", ENOSPC),
    ("dicom/0002.dcm", "EACCES", EACCES),
    ("panels/mip.png", "ENOSPC", ENOSPC),
    ("translate.json", "EACCES", EACCES),
])
def test_translate_that_cannot_write_fails_in_one_line_and_leaves_nothing(fail_writing, ct_study, model, tmp_path,
                                                                          file, kind, problem):
    out = tmp_path / "out"
    failed = fail_writing(Path(file).name, kind)
    result = CliRunner().invoke(app, ["translate", model, str(ct_study / "CT"), "--out", str(out), "--png"])
    assert failed, f"no writer opened {file} through atomic_file"
    assert result.exit_code == 1
    assert _error_line(result.output) == f"error: [Errno {getattr(errno, kind)}] {problem}: '{out / file}'"
    assert not out.exists() and _leftovers(tmp_path) == []


def test_prepare_that_cannot_write_a_study_reports_its_path_and_resumes(fail_writing, tmp_path):
    write_studies(tmp_path / "raw", task="ct2pet", studies=2, seed=5, fmt="dicom", preset="tiny")
    ds = tmp_path / "ds"
    args = ["prepare", str(tmp_path / "raw"), "--out", str(ds), "--size", "32", "--key-file", str(tmp_path / "key")]
    fail_writing("dataset.yaml", "EACCES")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert _error_line(result.output) == f"error: [Errno {errno.EACCES}] {EACCES}: '{ds / 'dataset.yaml'}'"
    assert not (ds / "dataset.yaml").exists()

    failed = fail_writing("0", "ENOSPC")  # the first shard of an array: c/0/0/0
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and failed
    lines = [line for line in result.output.splitlines() if line.startswith("failed")]
    assert len(lines) == 2  # both studies: each failed at its first shard
    for line in lines:
        study = line.split()[1].rstrip(":")
        assert line.endswith(f"OSError: [Errno {errno.ENOSPC}] {ENOSPC}: "
                             f"'{ds / 'studies' / study / 'source' / 'c' / '0' / '0' / '0'}'")
    assert not [p for p in (ds / "studies").iterdir()] and _leftovers(ds) == []

    fail_writing("no such file", "ENOSPC")  # space again: the same command with --resume completes the dataset
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert len(list((ds / "studies").iterdir())) == 2 and _leftovers(ds) == []


def test_a_checkpoint_that_cannot_be_written_leaves_the_old_one(fail_writing, tmp_path):
    card = ModelCard(method="unet", task="ct2pet", config={})
    old = {"model": {"w": torch.arange(6.0)}}
    path = save_checkpoint(tmp_path / "ckpt", card, old)
    new = {"model": {"w": torch.zeros(3000)}}
    for pattern, kind, problem in (("weights.safetensors", "ENOSPC", ENOSPC), ("card.yaml", "EACCES", EACCES)):
        fail_writing(pattern, kind)
        with pytest.raises(OSError, match=problem) as err:
            save_checkpoint(path, card, new, overwrite=True)
        assert err.value.filename == str(path / pattern)
        assert torch.equal(load_checkpoint(path).weights["model"]["w"], old["model"]["w"])
        with pytest.raises(OSError, match=problem):
            save_checkpoint(tmp_path / "fresh", card, new)
        assert not (tmp_path / "fresh").exists() and _leftovers(tmp_path) == []


def test_translate_refused_by_the_kernel_names_the_file(ct_study, model, tmp_path):
    """A real write error (the file size limit: EFBIG from the kernel, through gzip, pydicom, json) in a real
    ``petsynth translate`` process."""
    out = tmp_path / "out"
    limit = 4096  # bytes: the first file written, the synthetic PET's NIfTI, is larger

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    run = subprocess.run([sys.executable, "-m", "petsynth.cli", "translate", model, str(ct_study / "CT"),
                          "--out", str(out), "--threads", "1"],
                         capture_output=True, text=True, preexec_fn=limited, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert run.returncode == 1, run.stderr
    assert _error_line(run.stderr) == f"error: [Errno {errno.EFBIG}] File too large: '{out / 'synthetic_pet.nii.gz'}'"
    assert not out.exists() and _leftovers(tmp_path) == []

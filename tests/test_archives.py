"""Archives as hospitals hand them over: a study with a half-written copy of a file, a second copy, the same
image re-sent under another instance UID, a text file and a scout prepares exactly like the clean study."""

import shutil

import pydicom
import pytest
from pydicom.uid import generate_uid

from petsynth.data.dicom_index import scan_dicom
from petsynth.data.prepare import prepare_dataset
from petsynth.phantom import make_torso, write_study

KEY = b"archives"


def _tree_bytes(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def studies(tmp_path):
    clean = tmp_path / "clean"
    study = write_study(make_torso(31, preset="tiny"), clean, fmt="dicom").relative_to(clean)
    messy = tmp_path / "messy"
    shutil.copytree(clean, messy)
    folder = messy / study
    ct = sorted((folder / "CT").glob("*.dcm"))
    data = ct[0].read_bytes()
    (folder / "CT" / "zz_truncated.dcm").write_bytes(data[: len(data) - 3000])  # an interrupted copy
    shutil.copy(ct[1], folder / "CT" / "zz_copy.dcm")  # the same instance twice
    resent = pydicom.dcmread(ct[2])
    resent.SOPInstanceUID = generate_uid()  # the same image sent again under a new instance UID
    resent.save_as(folder / "CT" / "zz_resent.dcm")
    (folder / "CT" / "transfer.log").write_text("copied 31 of 32 files")
    scout = pydicom.dcmread(ct[3])
    scout.ImageType, scout.SeriesInstanceUID, scout.SOPInstanceUID = ["ORIGINAL", "PRIMARY", "LOCALIZER"], \
        generate_uid(), generate_uid()
    scout.save_as(folder / "scout.dcm")
    return clean, messy, ct, folder


def test_a_messy_study_prepares_exactly_like_the_clean_one(studies, tmp_path):
    clean, messy, ct, folder = studies
    _, skipped = scan_dicom([messy])
    reasons = {s.path.name: s.reason for s in skipped}
    assert reasons["zz_truncated.dcm"].startswith("truncated: its pixel data ends 3000 bytes short")
    assert reasons["zz_copy.dcm"] == f"duplicate of {ct[1].name} (the same SOPInstanceUID)"
    assert reasons["transfer.log"] == "not a DICOM file" and reasons["scout.dcm"] == "localizer/scout image"

    prepare_dataset([clean], tmp_path / "ref", "ct2pet", size=32, key=KEY)
    with pytest.warns(UserWarning, match=f"zz_resent.dcm is a copy of {ct[2].name}"):
        report = prepare_dataset([messy], tmp_path / "ds", "ct2pet", size=32, key=KEY)
    assert [r.status for r in report.results] == ["ok"]
    assert _tree_bytes(tmp_path / "ref" / "studies") == _tree_bytes(tmp_path / "ds" / "studies")


def test_two_different_images_at_one_position_fail_the_study_naming_both_files(studies, tmp_path):
    _, messy, ct, folder = studies
    other = pydicom.dcmread(folder / "CT" / "zz_resent.dcm")
    pixels = other.pixel_array.copy()
    pixels[10, 10] += 100
    other.PixelData = pixels.tobytes()
    other.save_as(folder / "CT" / "zz_resent.dcm")
    report = prepare_dataset([messy], tmp_path / "ds", "ct2pet", size=32, key=KEY)
    (result,) = report.results
    assert result.status == "failed" and "different pixels" in result.reason
    assert ct[2].name in result.reason and "zz_resent.dcm" in result.reason


def test_pipes_links_odd_names_and_folders_named_like_files_are_ignored_with_reasons(studies, tmp_path):
    """A named pipe (whose read would block forever), a broken link, a loop of links, a link to a parent folder,
    a folder named ``*.dcm`` and a copy under a name that is not UTF-8: prepare (in a subprocess, so that a
    hang fails the test instead of stopping the suite) ends at once with the clean study's dataset."""
    import os
    import subprocess
    import sys

    clean, messy, _, folder = studies
    odd = folder / "CT"
    os.mkfifo(odd / "pipe.dcm")
    (odd / "dangling.dcm").symlink_to(odd / "nowhere.dcm")
    (odd / "loop_a.dcm").symlink_to(odd / "loop_b.dcm")
    (odd / "loop_b.dcm").symlink_to(odd / "loop_a.dcm")
    (odd / "up").symlink_to(folder, target_is_directory=True)
    (odd / "folder.dcm").mkdir()
    shutil.copy(odd / "zz_copy.dcm", os.fsencode(odd) + b"/\xff\xfe latin-1 \xe9.dcm")
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)
    run = subprocess.run([sys.executable, "-m", "petsynth.cli", "prepare", str(messy), "--out", str(tmp_path / "ds"),
                          "--size", "32", "--key-file", str(key_file)], capture_output=True, text=True, timeout=300,
                         errors="replace")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stdout + run.stderr
    _, skipped = scan_dicom([messy])
    reasons = {os.fsencode(s.path.name): s.reason for s in skipped}
    assert reasons[b"pipe.dcm"] == "not a regular file: named pipe"
    assert reasons[b"dangling.dcm"] == "broken symbolic link"
    assert reasons[b"loop_a.dcm"] == reasons[b"loop_b.dcm"] == "symbolic link loop"
    assert reasons[b"\xff\xfe latin-1 \xe9.dcm"].startswith("duplicate of")
    prepare_dataset([clean], tmp_path / "ref", "ct2pet", size=32, key=KEY)
    assert _tree_bytes(tmp_path / "ref" / "studies") == _tree_bytes(tmp_path / "ds" / "studies")


def test_an_unreadable_file_is_ignored_with_the_reason(studies, monkeypatch):
    """Permission denied on one file (simulated: this suite may run as root, which chmod cannot stop)."""
    import builtins

    _, messy, ct, folder = studies
    denied = folder / "CT" / ct[5].name
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if str(file) == str(denied):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    _, skipped = scan_dicom([messy])
    reasons = {s.path.name: s.reason for s in skipped}
    assert "PermissionError" in reasons[ct[5].name] and "Permission denied" in reasons[ct[5].name]

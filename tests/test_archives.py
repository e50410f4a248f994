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

"""Finding series among mixed, oddly named DICOM and junk files."""

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from petsynth.data.dicom_index import scan_dicom

DATA = Path(__file__).parent / "data" / "tcia-sts-001"


def _embedded(name: str) -> Path:
    return Path(get_testdata_file(name, download=False))


def test_scan_groups_real_series_and_names_every_ignored_file(tmp_path):
    mixed = tmp_path / "archive" / "deep" / "er"
    mixed.mkdir(parents=True)
    for i, f in enumerate(sorted((DATA / "raw_pet").glob("*.dcm"))):
        shutil.copy(f, mixed / f"zz_{9 - i}")  # names without extension, reverse order
    for f in sorted((DATA / "cropped_pet").glob("*.dcm")):
        shutil.copy(f, tmp_path / "archive" / f"crop_{f.name}")
    shutil.copy(_embedded("CT_small.dcm"), tmp_path / "ct.dcm")
    shutil.copy(_embedded("rtstruct.dcm"), tmp_path / "rt.dcm")
    shutil.copy(_embedded("SC_rgb_rle.dcm"), tmp_path / "sc.dcm")
    shutil.copy(_embedded("reportsi.dcm"), tmp_path / "sr.dcm")
    (tmp_path / "notes.txt").write_text("not dicom")
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    scout = pydicom.dcmread(_embedded("CT_small.dcm"))
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.SeriesInstanceUID = "1.2.3.4"
    scout.save_as(tmp_path / "scout.dcm")

    studies, skipped = scan_dicom([tmp_path])
    reasons = {p.name: r for p, r in ((s.path, s.reason) for s in skipped)}
    assert reasons["notes.txt"] == "not a DICOM file"
    assert reasons["rt.dcm"].startswith("RT object")
    assert reasons["sc.dcm"] == "secondary capture"
    assert reasons["sr.dcm"].startswith("structured report")
    assert reasons["scout.dcm"] == "localizer/scout image"
    assert "broken.dcm" in reasons
    sts = [s for s in studies if any(x.modality == "PT" for x in s.series)]
    assert len(sts) == 1
    pets = sts[0].of_modality("PT")
    assert sorted(s.num_files for s in pets) == [3, 3]
    raw = next(s for s in pets if s.units == "BQML")
    assert raw.attenuation_corrected and raw.manufacturer.startswith("GE")
    assert {p.parent for p in raw.files} == {mixed}
    assert len({s.frame_of_reference_uid for s in pets}) == 1
    ct = [s for s in studies if s.of_modality("CT")]
    assert len(ct) == 1 and ct[0].of_modality("CT")[0].num_files == 1


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_dicom([tmp_path / "nowhere"])

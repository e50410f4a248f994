"""The fast header reader gives what pydicom gives, or hands the file back to pydicom."""

import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from petsynth import phantom as ph
from petsynth.data.dicom_header import read_header_fields, wanted_tags
from petsynth.data.dicom_index import _HEADER_TAGS, _native_pixels, scan_dicom

WANTED = wanted_tags(_HEADER_TAGS)
PYDICOM_FILES = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"  # shipped inside pydicom
TCIA = Path(__file__).parent / "data" / "tcia-sts-001"


def _plain(v):
    """pydicom's value in the reader's terms: numbers as float, text as str, lists for several values."""
    if v is None or v == "":
        return None
    if isinstance(v, (list, pydicom.multival.MultiValue)):
        return [_plain(x) for x in v]
    if isinstance(v, (int, float)):
        return float(v)
    return str(v)


def _check_against_pydicom(path: Path) -> bool:
    """True when the reader handled the file (then every field and the pixel bytes agree with pydicom)."""
    fields = read_header_fields(path, WANTED)
    if fields is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
    for keyword in _HEADER_TAGS:
        assert _plain(fields.get(keyword)) == _plain(ds.get(keyword)), (path.name, keyword)
    assert fields.transfer_syntax == str(ds.file_meta.TransferSyntaxUID)
    assert (fields.pixel_offset >= 0) == ("PixelData" in ds), path.name
    offset, dtype = _native_pixels(fields)
    if offset >= 0:  # the bytes at the offset are the pixel data, read with the dtype pydicom uses
        pixels = np.fromfile(path, dtype=dtype, count=ds.Rows * ds.Columns, offset=offset)
        if pixels.size < ds.Rows * ds.Columns:  # a truncated file: loading sees the short read, asks pydicom
            assert path.name == "MR_truncated.dcm"
        else:
            np.testing.assert_array_equal(pixels.reshape(ds.Rows, ds.Columns), ds.pixel_array)
    return True


def test_agrees_with_pydicom_on_every_file_pydicom_ships_and_the_real_pet():
    files = sorted(PYDICOM_FILES.glob("*.dcm")) + sorted(TCIA.rglob("*.dcm"))
    assert len(files) > 60
    handled = [f.name for f in files if _check_against_pydicom(f)]
    assert len(handled) >= 0.75 * len(files)
    # the usual encodings are all handled: implicit and explicit little endian, compressed pixel data
    assert {"CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "rtplan.dcm"} <= set(handled)


@pytest.mark.parametrize("flavour", ["ge", "siemens", "philips"])
def test_agrees_with_pydicom_on_vendor_flavoured_phantom_files(tmp_path, flavour):
    ph.write_studies(tmp_path, task="ct2pet", studies=1, seed=3, fmt="dicom", preset="tiny", flavour=flavour)
    files = sorted(tmp_path.rglob("*.dcm"))
    assert files and all(_check_against_pydicom(f) for f in files)


@pytest.mark.parametrize("name", ["ExplVR_BigEnd.dcm", "image_dfl.dcm", "no_meta.dcm", "meta_missing_tsyntax.dcm"])
def test_big_endian_deflated_or_meta_less_files_are_left_to_pydicom(name):
    assert read_header_fields(PYDICOM_FILES / name, WANTED) is None


def test_truncated_and_garbage_files_are_left_to_pydicom(tmp_path):
    good = (PYDICOM_FILES / "CT_small.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(good[:700])
    (tmp_path / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    assert read_header_fields(tmp_path / "cut.dcm", WANTED) is None
    assert read_header_fields(tmp_path / "junk.dcm", WANTED) is None


def test_corrupted_bytes_never_raise(tmp_path):
    good = bytearray((PYDICOM_FILES / "rtplan.dcm").read_bytes())  # nested sequences of undefined length
    rng = np.random.default_rng(0)
    path = tmp_path / "bad.dcm"
    for _ in range(200):
        bad = bytearray(good)
        for pos in rng.integers(132, len(bad), size=3):
            bad[pos] = int(rng.integers(0, 256))
        path.write_bytes(bytes(bad))
        fields = read_header_fields(path, WANTED)  # fields or None (then pydicom judges), never an exception
        assert fields is None or fields.transfer_syntax


def test_headers_longer_than_the_first_read_are_followed(tmp_path):
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    ds.add_new(0x00090010, "LO", "PETSYNTH TEST")  # a private block of 40 kB pushes the later elements and
    ds.add_new(0x00091010, "OB", bytes(40000))      # the pixels past the first 16 kB read
    ds.save_as(tmp_path / "long.dcm")
    assert _check_against_pydicom(tmp_path / "long.dcm")
    assert read_header_fields(tmp_path / "long.dcm", WANTED).pixel_offset > 40000


def test_a_single_valued_corrected_image_still_marks_attenuation_correction(tmp_path):
    ds = pydicom.dcmread(TCIA / "raw_pet" / sorted(os.listdir(TCIA / "raw_pet"))[0])
    ds.CorrectedImage = "ATTN"  # one value: a str, not a list
    ds.save_as(tmp_path / "pet.dcm")
    studies, _ = scan_dicom([tmp_path])
    assert studies[0].series[0].attenuation_corrected

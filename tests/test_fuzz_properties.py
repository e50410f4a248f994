"""Property-based fuzzing (hypothesis) of the two readers that take more than DICOM pixels: the SUV logic, which
must give the QIBA factor or an SUVError naming the file, and ``load_method``, which must give a model or a
petsynth error naming the checkpoint, for any header values and any damaged model card or weights file.
(The byte- and field-level fuzzing of whole studies through scan, prepare and translate is ``test_fuzz.py``.)"""

import math
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from petsynth.config import ConfigError
from petsynth.data.suv import SUVError, suv_scale
from petsynth.methods.base import MethodError, load_method
from petsynth.train.checkpoint import CheckpointError

BUNDLED = Path(__file__).resolve().parents[1] / "petsynth" / "models" / "phantom-cpdm"

#: Text a header field may hold: numbers in every spelling, absurd ones, empty, garbage.
_TEXT = st.one_of(st.sampled_from(["", "0", "-1", "nan", "inf", "-inf", "1e308", "1e-320", "70", "abc", " 1 "]),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=12))
_TIME = st.one_of(st.sampled_from(["101919.00", "091016", "235959.999999", "000000", "", "2460", "ab"]),
                  st.text(max_size=14))
_DATE = st.sampled_from(["20240915", "20240916", "", "20241399", "00000000", "x"])


def _set_raw(ds: Dataset, keyword: str, text: str) -> None:
    """Set ``keyword`` as a file holds it: raw bytes, converted by pydicom only when read (as ``suv_scale``
    reads it), so that a value that cannot be converted fails where a damaged file fails."""
    tag = tag_for_keyword(keyword)
    raw = text.encode("utf-8", "surrogatepass")
    raw += b" " * (len(raw) % 2)
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)


@st.composite
def pet_headers(draw) -> Dataset:
    ds = Dataset()
    ds.filename = "fuzzed_pet.dcm"
    for keyword, values in (("Units", st.sampled_from(["BQML", "GML", "CNTS", "", "bqml", "PROPCNTS"])),
                            ("DecayCorrection", st.sampled_from(["START", "ADMIN", "NONE", "", "start"])),
                            ("PatientWeight", _TEXT), ("SeriesDate", _DATE), ("SeriesTime", _TIME),
                            ("AcquisitionDate", _DATE), ("AcquisitionTime", _TIME)):
        if draw(st.booleans()) or keyword in ("Units", "DecayCorrection"):
            _set_raw(ds, keyword, draw(values))
    if draw(st.booleans()):
        ds.CorrectedImage = draw(st.lists(st.sampled_from(["DECY", "ATTN", "NORM", ""]), max_size=3))
    if draw(st.integers(0, 4)):
        radio = Dataset()
        for keyword, values in (("RadionuclideTotalDose", _TEXT), ("RadionuclideHalfLife", _TEXT),
                                ("RadiopharmaceuticalStartTime", _TIME),
                                ("RadiopharmaceuticalStartDateTime", st.one_of(st.just("20240915091016.00"),
                                                                               st.text(max_size=20)))):
            if draw(st.booleans()):
                _set_raw(radio, keyword, draw(values))
        ds.RadiopharmaceuticalInformationSequence = [radio]
    return ds


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ds=pet_headers())
def test_suv_scale_gives_a_positive_finite_factor_or_an_suv_error_naming_the_file(ds):
    try:
        scale = suv_scale(ds)
    except SUVError as err:
        assert "fuzzed_pet.dcm" in str(err)
        return
    assert math.isfinite(scale.factor) and scale.factor > 0


@settings(max_examples=200, deadline=None)
@given(weight=st.floats(1, 300), dose_mbq=st.floats(10, 800), half_life=st.floats(60, 10000),
       minutes=st.integers(0, 300))
def test_suv_scale_of_valid_headers_is_the_closed_form(weight, dose_mbq, half_life, minutes):
    """SUVbw factor = weight [kg] x 1000 / (dose x 2^(-dt / T1/2)) (QIBA), dt injection -> series start."""
    ds = Dataset()
    ds.filename = "valid.dcm"
    ds.Units, ds.DecayCorrection, ds.PatientWeight = "BQML", "START", f"{weight:.6g}"
    ds.SeriesDate, ds.SeriesTime = "20240915", f"{10 + minutes // 60:02d}{minutes % 60:02d}00"
    radio = Dataset()
    radio.RadionuclideTotalDose, radio.RadionuclideHalfLife = f"{dose_mbq * 1e6:.6g}", f"{half_life:.6g}"
    radio.RadiopharmaceuticalStartDateTime = "20240915100000"
    ds.RadiopharmaceuticalInformationSequence = [radio]
    w, d, t = float(ds.PatientWeight), float(radio.RadionuclideTotalDose), float(radio.RadionuclideHalfLife)
    expected = w * 1000 / (d * 2 ** (-(minutes * 60) / t))
    assert suv_scale(ds).factor == pytest.approx(expected, rel=1e-12)


#: Values a damaged model card may hold in place of any setting.
_CARD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                         st.text(max_size=8), st.lists(st.integers(-2, 2), max_size=3), st.just({"x": 1}))


def _leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*prefix, key))
    elif isinstance(tree, list) and tree:
        for i, value in enumerate(tree):
            yield from _leaves(value, (*prefix, i))
    else:
        yield prefix


@pytest.fixture(scope="module")
def card_tree():
    return yaml.safe_load((BUNDLED / "card.yaml").read_text())


def _loads_or_names_the_folder(folder: Path) -> None:
    try:
        load_method(folder)
    except (CheckpointError, MethodError, ConfigError) as err:
        assert str(folder) in str(err), str(err)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_model_card_gives_a_model_or_an_error_naming_it(tmp_path_factory, card_tree, data):
    folder = tmp_path_factory.mktemp("card")
    (folder / "weights.safetensors").symlink_to(BUNDLED / "weights.safetensors")
    leaves = sorted(_leaves(card_tree), key=str)
    path = data.draw(st.sampled_from(leaves), label="setting")
    assume(path and path[0] != "format_version")  # a newer format is its own, tested, error
    tree = yaml.safe_load(yaml.safe_dump(card_tree))
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans(), label="delete"):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(_CARD_VALUES, label="value")
    (folder / "card.yaml").write_text(yaml.safe_dump(tree))
    _loads_or_names_the_folder(folder)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 4000), flips=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), max_size=6),
       truncate=st.booleans())
def test_a_damaged_weights_file_gives_an_error_naming_it(tmp_path_factory, cut, flips, truncate):
    """Random bytes in the safetensors header (the JSON of names, dtypes, shapes and offsets) give a model or an
    error naming the folder; a file cut anywhere never loads."""
    folder = tmp_path_factory.mktemp("weights")
    shutil.copy(BUNDLED / "card.yaml", folder / "card.yaml")
    data = bytearray((BUNDLED / "weights.safetensors").read_bytes())
    for at, value in flips:
        data[at] = value
    if truncate:
        data = data[:min(cut, len(data) - 1)]
    (folder / "weights.safetensors").write_bytes(bytes(data))
    if truncate:
        with pytest.raises((CheckpointError, MethodError, ConfigError), match=str(folder)):
            load_method(folder)
    else:
        _loads_or_names_the_folder(folder)

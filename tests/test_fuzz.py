"""A short fuzz budget in the suite (``tests/fuzz_harness.py``; the long run is ``benchmarks/fuzz_dicom.py``):
40 studies with a file damaged byte-wise, scanned and prepared, and 9 with a field made meaningless (NaN,
zero, absurd values, a wrong VR, missing or contradictory geometry), also translated. Each damaged file is
ignored with a reason or fails its study with one; nothing escapes, nothing reaches prepare's catch-all
("unexpected ..."), nothing non-finite is written. The cases the long runs found, fixed, are replayed by seed."""

import warnings

import pytest

from fuzz_harness import FIELD_MUTATIONS, run_case
from petsynth.phantom import make_torso, write_study

#: Seeds whose cases once escaped or reached the catch-all (an unknown VR in the PET's dose, in a CT's
#: StudyInstanceUID and Rows; headers without Rows or Columns), replayed on the same phantom.
FOUND = (6, 324, 971, 1160, 1405)
#: Field-mutation seeds that once wrote NaN or infinity (a NaN or infinite rescale, a dose of 1e-300 Bq) or
#: reached the catch-all (ImageOrientationPatient given the VR FD), or escaped translate as a SeriesError (a CT
#: slice read lazily with an intercept of 1e308).
FOUND_FIELDS = (6, 19, 56, 90, 852, 1298)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_study(make_torso(40, preset="tiny"), tmp_path_factory.mktemp("fuzz") / "src", fmt="dicom")


@pytest.mark.parametrize("seeds", [FOUND, tuple(range(2000, 2040))], ids=["found", "fresh"])
def test_damaged_files_end_as_results_with_reasons(study, tmp_path, seeds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every damaged value it meets
        problems = [c for c in (run_case(study, tmp_path, seed) for seed in seeds) if c.problem]
    assert not problems, problems


@pytest.mark.parametrize("seeds", [FOUND_FIELDS, tuple(range(5000, 5006))], ids=["found", "fresh"])
def test_meaningless_fields_end_as_results_with_reasons_through_translate_too(study, tmp_path, seeds):
    from petsynth.inference import cached_model

    model = cached_model("phantom-cpdm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problems = [c for c in (run_case(study, tmp_path, seed, kinds=FIELD_MUTATIONS, translate_model=model)
                                for seed in seeds) if c.problem]
    assert not problems, problems

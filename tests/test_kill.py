"""kill -9 anywhere (``tests/kill_harness.py``): prepare, translate and train killed at random moments, then run
again, leave nothing that looks complete but is not, and end with the uninterrupted run's result."""

from collections import Counter

import numpy as np

from kill_harness import kill_prepare, kill_train, kill_translate
from petsynth.data.prepare import prepare_dataset
from petsynth.io.nifti import read_nifti
from petsynth.phantom import write_studies
from petsynth.translation import translate


def test_prepare_killed_anywhere_resumes_to_the_uninterrupted_dataset(tmp_path):
    raw = tmp_path / "raw"
    write_studies(raw, task="ct2pet", studies=3, seed=61, fmt="dicom", preset="tiny")
    key = tmp_path / "key"
    key.write_text("kill-harness-key")
    prepare_dataset([raw], tmp_path / "ref", "ct2pet", size=32, key_file=key)
    killed, problems = kill_prepare(raw, tmp_path, tmp_path / "ref", key, kills=3, seed=1)
    assert killed >= 2 and not problems, (killed, problems)


def test_translate_killed_anywhere_leaves_no_half_output(tmp_path):
    raw = tmp_path / "raw"
    write_studies(raw, task="ct2pet", studies=1, seed=62, fmt="dicom", preset="tiny")
    study = next(p for p in raw.iterdir() if p.is_dir()) / "CT"
    # seed 3 kills at 28 % and 57 % of a run; seed 2 drew 96 % and 95 %, and both kills could come too late
    killed, problems = kill_translate(study, tmp_path, kills=2, seed=3)
    assert killed >= 1 and not problems, (killed, problems)
    again = translate("phantom-cpdm", study, tmp_path / "again", steps=1)  # and run again: the same SUV
    reference, _ = read_nifti(tmp_path / "timing" / "synthetic_pet.nii.gz")
    np.testing.assert_allclose(read_nifti(again.files["nifti"])[0], reference, atol=1e-5)


def test_train_killed_anywhere_resumes_to_the_uninterrupted_checkpoint(tiny_dataset, tmp_path):
    # seed 10: killed at the first change of checkpoints/ after two checkpoints (a write), then, resumed from
    # a checkpoint, at a random moment; then resumed to the end
    counts = Counter()
    killed, problems = kill_train(tiny_dataset, tmp_path, kills=2, seed=10, steps=18, counts=counts)
    assert killed >= 1 and counts["from_checkpoint"] >= 1 and counts["completed"] and not problems, \
        (killed, counts, problems)

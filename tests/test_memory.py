"""Memory of a long translation (issue 17): a CT series is read, resampled and written slice by slice, so
translate's memory grows with the slices only by what the output grid needs, not by copies of the CT at its
own resolution. ``benchmarks/bench_memory.py`` measures the resident memory up to 2,000 slices."""

import tracemalloc
import warnings

import numpy as np
import pydicom
import pytest

from petsynth.io.dicom import write_series
from petsynth.methods.base import build_method
from petsynth.train.checkpoint import ModelCard, save_checkpoint
from petsynth.translation import translate

SIZE, PIXEL_MM = 192, 1.5  # the CT's slices: 192 x 192 pixels of 1.5 mm (288 mm)
GRID_MM = 6.0  # the model's pixels: the output grid is 64 x 64 (288 mm / 6 mm, to a multiple of 32)


def _ct(folder, slices: int):
    """A CT series of ``slices`` 2 mm slices: a water ellipse with two lungs, in air."""
    y, x = np.mgrid[:SIZE, :SIZE] / (SIZE - 1) * 2 - 1
    hu = np.where((x / 0.8) ** 2 + (y / 0.55) ** 2 < 1, 0.0, -1000.0)
    hu[((np.abs(x) - 0.35) / 0.2) ** 2 + (y / 0.3) ** 2 < 1] = -800.0
    affine = np.diag([PIXEL_MM, PIXEL_MM, 2.0, 1.0])
    write_series(folder, np.broadcast_to(hu, (slices, SIZE, SIZE)), affine, modality="CT",
                 header={"KVP": "120", "StudyInstanceUID": pydicom.uid.generate_uid(),
                         "FrameOfReferenceUID": pydicom.uid.generate_uid()})
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    method = build_method("unet", {"unet": {"features": [4, 8, 16, 32, 64, 4]}}, task="ct2pet")
    card = ModelCard(method="unet", task="ct2pet", config=method.config.to_dict(),
                     data={"spacing_mm": [GRID_MM, GRID_MM], "size": 32})
    return save_checkpoint(tmp_path_factory.mktemp("model") / "unet", card, {"model": method.state_dict()})


def _peak_bytes(model, ct, out) -> int:
    """Peak bytes traced by tracemalloc (numpy's arrays, Python objects; not torch's own) in one translate
    (NIfTI and DICOM outputs)."""
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = translate(model, ct, out, threads=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.suv.shape == (result.slices, 64, 64)
    return peak


def test_translate_memory_grows_per_slice_by_the_output_grid_not_the_ct(model, tmp_path):
    counts = (70, 150)  # both above the 64-slice slabs the resampler reads at a time
    peaks = [_peak_bytes(model, _ct(tmp_path / f"ct{n}", n), tmp_path / f"out{n}") for n in counts]
    per_slice = (peaks[1] - peaks[0]) / (counts[1] - counts[0])
    ct_slice = SIZE * SIZE * 4  # one float32 slice of the CT: what each whole copy of it costs per slice
    grid_slice = 64 * 64 * 4  # one float32 slice of the output grid
    # held for the whole volume on the grid: the synthetic PET and the CT (float32), the body mask (bool)
    assert per_slice < 4 * grid_slice, (per_slice, grid_slice)
    assert per_slice < ct_slice / 2, (per_slice, ct_slice)

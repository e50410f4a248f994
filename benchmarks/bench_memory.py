"""Peak memory of ``petsynth translate`` against the number of CT slices (issue 17: memory bounded by a batch).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_memory.py [--slices 200,500,1000,2000] [--size 256]
        [--steps 1] [--pictures] [--workdir DIR]

For each slice count, writes one synthetic CT series (``--size`` x ``--size`` pixels of 1.5 mm, 2 mm slices,
int16; an ellipse of soft tissue with lungs and a spine in air, varying slowly along z) and runs
``python -m petsynth.cli translate phantom-cpdm SERIES --out OUT --steps N --threads 1`` in a fresh process
(DICOM + NIfTI outputs; ``--pictures`` adds ``--png --report``), reading its peak resident set from
``os.wait4``. Prints slices, peak RSS, the growth
per slice between rows, and two yardsticks per slice: one float32 slice of the CT at full resolution and one
of the model's grid (what the synthetic PET needs). Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from petsynth.bench import machine
from petsynth.io.dicom import format_ds, write_series

SPACING_MM = 1.5
SLICE_MM = 2.0


def ct_slice(k: int, n: int, size: int) -> np.ndarray:
    """(size, size) HU: air, a soft-tissue ellipse, two lungs that grow and shrink along z, a spine."""
    y, x = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    hu = np.full((size, size), -1000.0)
    hu[(x / 0.8) ** 2 + (y / 0.55) ** 2 < 1] = 40.0
    r = 0.18 + 0.08 * np.sin(np.pi * k / max(n - 1, 1))
    for cx in (-0.35, 0.35):
        hu[((x - cx) / r) ** 2 + (y / (1.4 * r)) ** 2 < 1] = -820.0
    hu[x ** 2 + (y - 0.35) ** 2 < 0.1 ** 2] = 700.0
    return hu


def write_ct_series(folder: Path, n: int, size: int) -> Path:
    """``n`` CT slices of ``size`` x ``size`` in ``folder`` (one series): the first written by petsynth's DICOM
    writer, the others copies with their own position, instance number, UID and pixels."""
    affine = np.diag([SPACING_MM, SPACING_MM, SLICE_MM, 1.0])
    affine[:3, 3] = (-(size - 1) / 2 * SPACING_MM, -(size - 1) / 2 * SPACING_MM, 0.0)
    header = {"PatientName": "MEMORY^BENCH", "PatientID": "mem", "StudyInstanceUID": pydicom.uid.generate_uid(),
              "FrameOfReferenceUID": pydicom.uid.generate_uid(), "KVP": "120", "PatientPosition": "HFS"}
    template = write_series(folder, ct_slice(0, n, size)[None], affine, modality="CT", header=header)[0]
    ds = pydicom.dcmread(template)
    for k in range(1, n):
        ds.ImagePositionPatient = [format_ds(v, 9) for v in (*affine[:2, 3], k * SLICE_MM)]
        ds.SliceLocation = format_ds(k * SLICE_MM, 9)
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.PixelData = (np.rint(ct_slice(k, n, size)) + 1024).astype("<i2").tobytes()
        ds.save_as(folder / f"{k + 1:04d}.dcm", enforce_file_format=True)
    return folder


def peak_rss_of(command: list[str]) -> tuple[int, float, float]:
    """(exit status, peak resident set in MB, seconds) of ``command`` run to its end."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace")
    if proc.returncode:
        print(stderr, file=sys.stderr)
    return proc.returncode, usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", default="200,500,1000,2000")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--pictures", action="store_true", help="also write the PNGs and report.html")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    counts = [int(v) for v in args.slices.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="petsynth_memory_"))
    grid = 128  # phantom-cpdm: 5.92 mm pixels, at least its 128-pixel training size; this FOV fits in 128
    print(f"machine: {machine()}")
    print(f"CT {args.size}x{args.size} of {SPACING_MM} mm (float32 slice {args.size ** 2 * 4 / 2 ** 20:.3f} MB), "
          f"model grid {grid}x{grid} (float32 slice {grid ** 2 * 4 / 2 ** 20:.3f} MB), --steps {args.steps}")
    print(f"{'slices':>7} {'peak RSS MB':>12} {'MB/slice':>9} {'seconds':>8}")
    previous = None
    for n in counts:
        series = work / f"ct_{n}"
        if not series.is_dir():
            write_ct_series(series, n, args.size)
        out = work / f"out_{n}"
        shutil.rmtree(out, ignore_errors=True)
        extra = ["--png", "--report"] if args.pictures else []
        command = [sys.executable, "-m", "petsynth.cli", "translate", "phantom-cpdm", str(series), "--out",
                   str(out), "--steps", str(args.steps), "--threads", "1", *extra]
        code, peak, seconds = peak_rss_of(command)
        slope = "" if previous is None else f"{(peak - previous[1]) / (n - previous[0]):.3f}"
        print(f"{n:>7} {peak:>12.0f} {slope:>9} {seconds:>8.0f}" + (f"  (exit {code})" if code else ""),
              flush=True)
        previous = (n, peak)
        shutil.rmtree(out, ignore_errors=True)
    print(f"command: {' '.join(command[1:3])} translate phantom-cpdm SERIES --out OUT --steps {args.steps} "
          f"--threads 1 {' '.join(extra)}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

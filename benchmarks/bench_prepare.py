"""Speed and memory of ``petsynth prepare`` on phantom DICOM, next to the pydicom read floor.

    .venv/bin/python benchmarks/bench_prepare.py [--studies 3] [--threads 1] [--workdir DIR]

Writes GE-like phantom studies (512x512 CT, 256x256 PET) once into the work folder, then measures
(1) pydicom alone: dcmread + pixel_array of every file of the studies, and (2) prepare with one worker
at 256x256. Reports pairs per second per core for both, their ratio (target >= 2/3), and the peak
resident memory of each study run (should be flat in the number of studies). Asserts nothing.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import pydicom
import torch

from petsynth.data import phantom as ph
from petsynth.data.prepare import prepare_dataset


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    raw = work / "raw"
    if not raw.exists():
        t0 = time.perf_counter()
        ph.write_studies(raw, task="ct2pet", studies=args.studies, seed=0, fmt="dicom", preset="default",
                         flavour="ge")
        print(f"wrote {args.studies} phantom studies in {time.perf_counter() - t0:.1f} s")
    files = [f for f in raw.rglob("*.dcm")]
    pet_files = [f for f in files if f.parent.name == "PT"]
    t0 = time.perf_counter()
    for f in files:
        pydicom.dcmread(f).pixel_array
    t_read = time.perf_counter() - t0
    out = work / f"ds_{time.time_ns()}"
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    peaks: list[float] = []
    report = prepare_dataset([raw], out, "ct2pet", size=256, workers=1, key=b"bench",
                             progress=lambda done, total, status: peaks.append(peak_rss_mb()))
    t_prep = time.perf_counter() - t0
    pairs = sum(r.slices for r in report.results)
    print(f"files: {len(files)} ({len(pet_files)} PET), pairs: {pairs}, threads: {args.threads}")
    print(f"pydicom read+decode floor: {t_read:.1f} s = {pairs / t_read:.1f} pairs/s")
    print(f"prepare (1 worker):        {t_prep:.1f} s = {pairs / t_prep:.1f} pairs/s "
          f"({t_read / t_prep:.2f} of the floor)")
    print(f"peak RSS: {rss_before:.0f} MB before prepare; after each study: "
          + ", ".join(f"{p:.0f}" for p in peaks) + " MB (flat = memory does not grow with studies)")
    print(f"dataset size: {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

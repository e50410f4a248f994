"""Speed and memory of ``petsynth prepare`` on phantom DICOM, next to the pydicom read floor.

    .venv/bin/python benchmarks/bench_prepare.py [--studies 3] [--threads 1] [--workdir DIR]

Writes GE-like phantom studies (512x512 CT, 256x256 PET) once into the work folder, then measures
(1) pydicom alone: dcmread + pixel_array of every file of the studies, and (2) prepare with one worker
at 256x256 (:func:`petsynth.bench.prepare_speed`). Reports pairs per second per core for both, their
ratio (target >= 2/3), and the peak resident memory after each study (should be flat in the number of
studies). Asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from petsynth.bench import peak_rss_mb, prepare_speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rss_before = peak_rss_mb()
    peaks: list[float] = []
    r = prepare_speed(args.studies, workdir=args.workdir, say=print,
                      progress=lambda done, total, status: peaks.append(peak_rss_mb()))
    print(f"files: {r.files}, pairs: {r.pairs}, threads: {args.threads}")
    print(f"pydicom read+decode floor: {r.floor_seconds:.1f} s = {r.floor_pairs_per_s:.1f} pairs/s")
    print(f"prepare (1 worker):        {r.seconds:.1f} s = {r.pairs_per_s:.1f} pairs/s "
          f"({r.floor_seconds / r.seconds:.2f} of the floor)")
    print(f"peak RSS: {rss_before:.0f} MB before prepare; after each study: "
          + ", ".join(f"{p:.0f}" for p in peaks) + " MB (flat = memory does not grow with studies)")


if __name__ == "__main__":
    main()

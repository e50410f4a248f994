"""Speed and memory of ``petsynth prepare`` on phantom DICOM, next to the pydicom read floor.

    .venv/bin/python benchmarks/bench_prepare.py [--studies 3] [--repeats 3] [--with-truth] [--workdir DIR]

Writes GE-like phantom studies (512x512 CT, 256x256 PET) once into the work folder, then measures, each
``--repeats`` times: (1) pydicom alone: dcmread + pixel_array of every file of the studies, and (2) prepare
with one worker at 256x256 (:func:`petsynth.bench.prepare_speed`). Reports every run, pairs per second per
core for the best of each, their ratio (target >= 2/3), and the peak resident memory after each study of
the first run (should be flat in the number of studies). ``--with-truth`` keeps the simulator's truth
volumes beside the series (prepare then stores them too). Asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from petsynth.bench import machine, peak_rss_mb, prepare_speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--with-truth", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peaks: list[float] = []
    r = prepare_speed(args.studies, workdir=args.workdir, say=print, repeats=args.repeats,
                      with_truth=args.with_truth,
                      progress=lambda done, total, status: status != "scanning" and peaks.append(peak_rss_mb()))
    print(f"machine: {machine()}")
    print(f"files: {r.files}, pairs: {r.pairs}, threads: {args.threads}, truth stored: {args.with_truth}")
    print("pydicom floor runs (s): " + ", ".join(f"{s:.2f}" for s in r.floor_runs))
    print("prepare runs (s):       " + ", ".join(f"{s:.2f}" for s in r.run_seconds))
    print(f"pydicom read+decode floor: {r.floor_seconds:.2f} s = {r.floor_pairs_per_s:.1f} pairs/s")
    print(f"prepare (1 worker):        {r.seconds:.2f} s = {r.pairs_per_s:.1f} pairs/s ({r.ratio:.2f} of the floor); "
          f"CPU time {r.cpu_seconds:.2f} s = {r.pairs / r.cpu_seconds:.1f} pairs per CPU second")
    print(f"peak RSS: {r.peak_rss_before_mb:.0f} MB before prepare; after each study of the first run: "
          + ", ".join(f"{p:.0f}" for p in peaks) + " MB (flat = memory does not grow with studies)")
    if r.peak_rss_before_mb > 1000:
        print("(the phantoms were simulated in this process, which set the peak: run again to see prepare's own)")


if __name__ == "__main__":
    main()

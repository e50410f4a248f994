"""Throughput of per-study work here, in a local process pool and on a local Dask cluster.

    .venv/bin/python benchmarks/bench_dask.py [--studies 4] [--translate-studies 2] [--workdir DIR]

``prepare`` of GE-like phantom DICOM studies (default preset: 512x512 CT, 256x256 PET, at 256x256) with one
process, a pool of 2, and a Dask ``LocalCluster`` of 1 and 2 worker processes (one thread each; the cluster
started and its workers' imports done before the timing, its start-up timed apart), next to the pydicom floor (dcmread + pixel_array of
every file, one process); then ``translate`` of an archive of small phantom studies with the bundled model
(1 thread here; 2 Dask workers of 1 thread). Prints pairs/s and slices/s, per worker, and each Dask worker's
resident memory after prepare. Asserts nothing. This machine's timings vary by about 20 % between runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from petsynth.bench import bench_phantoms, machine, peak_rss_mb


def _worker_rss_mb() -> float:
    """Resident memory of this (worker) process now, MB (its peak is not separable from its parent's on fork)."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _warm() -> None:
    import petsynth.data.prepare  # noqa: F401 - the imports a first task would otherwise pay for


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    import pydicom

    from petsynth.archive import translate_archive
    from petsynth.data.prepare import prepare_dataset
    from petsynth.parallel import dask_client
    from petsynth.translation import StudyOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--translate-studies", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="petsynth_dask_"))
    raw = bench_phantoms(work, args.studies, "default", say=print)
    files = sorted(raw.rglob("*.dcm"))
    print(f"machine: {machine()}; {len(os.sched_getaffinity(0))} cores")

    floor, _ = _timed(lambda: [pydicom.dcmread(f).pixel_array for f in files])
    rows = []

    def prepare(label, workers=1, dask=None):
        out = work / f"ds-{time.time_ns()}"
        seconds, report = _timed(lambda: prepare_dataset([raw], out, "ct2pet", size=256, key=b"bench",
                                                         workers=workers, dask=dask))
        shutil.rmtree(out)
        pairs = sum(r.slices for r in report.results)
        rows.append((label, workers, seconds, pairs))
        return pairs

    pairs = prepare("one process")
    prepare("process pool", workers=2)
    for n in (1, 2):
        t0 = time.perf_counter()
        with dask_client("local", n) as client:  # petsynth's local cluster (its worker settings)
            client.run(_warm)
            start = time.perf_counter() - t0
            prepare(f"dask, {n} worker{'s' if n > 1 else ''} (start-up {start:.1f} s apart)", workers=n,
                    dask=client.scheduler.address)
            rss = client.run(_worker_rss_mb)
        print(f"dask {n} worker(s): resident memory per worker after prepare "
              + ", ".join(f"{v:.0f} MB" for v in rss.values()))
    print(f"prepare: {args.studies} studies, {len(files)} files, {pairs} pairs at 256x256")
    print(f"  pydicom floor (1 process): {floor:.1f} s = {pairs / floor:.1f} pairs/s")
    for label, workers, seconds, n_pairs in rows:
        print(f"  {label}: {seconds:.1f} s = {n_pairs / seconds:.1f} pairs/s "
              f"({n_pairs / seconds / workers:.1f} per worker)")
    print(f"  this process' peak memory: {peak_rss_mb():.0f} MB")

    archive = work / f"archive-small-{args.translate_studies}"
    if not archive.exists():
        from petsynth.phantom import write_studies

        write_studies(archive, task="ct2pet", studies=args.translate_studies, seed=1, fmt="dicom", preset="small")
    options = StudyOptions(write_dicom=False)
    for label, kw in (("one process, 1 thread", {"threads": 1}),
                      ("dask, 2 workers of 1 thread", {"dask": "local", "workers": 2})):
        out = work / f"tr-{time.time_ns()}"
        seconds, result = _timed(lambda kw=kw: translate_archive("phantom-cpdm", archive, out, options, key=b"b",
                                                                 **kw))
        slices = sum(s.slices for s in result.studies)
        per = kw.get("workers", 1)
        print(f"translate {args.translate_studies} small studies ({slices} slices, default steps), {label}: "
              f"{seconds:.1f} s = {slices / seconds:.2f} slices/s ({slices / seconds / per:.2f} per worker; "
              "start-up and model loading included)")
        shutil.rmtree(out)


if __name__ == "__main__":
    main()

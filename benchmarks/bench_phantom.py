"""Benchmark the phantom simulator: time to simulate and to write studies, and image quality facts.

    .venv/bin/python benchmarks/bench_phantom.py --task ct2pet --preset default --studies 2 --threads 1

Prints, per study, the seconds spent simulating and writing, the grid sizes, the liver noise (coefficient
of variation of the standard-dose PET in the eroded liver) and the liver mean against its truth; then the
totals. ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import binary_erosion

from petsynth import phantom as ph
from petsynth.phantom import tissues as T


def _liver_stats(study) -> dict:
    labels = study.truth_images["labels"].volume
    liver = binary_erosion(labels == T.LIVER.label, iterations=1)
    if liver.sum() < 10:
        return {}
    truth = study.truth_images["suv_truth_blurred"].volume
    out = {}
    for name, img in study.images.items():
        if img.modality == "PT":
            v = img.volume[liver]
            out[name] = {"mean": float(v.mean()), "cov": float(v.std() / v.mean())}
    out["truth_mean"] = float(truth[liver].mean())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="ct2pet", choices=ph.TASKS)
    p.add_argument("--preset", default="default", choices=sorted(ph.PRESETS))
    p.add_argument("--studies", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="dicom", choices=ph.FORMATS)
    p.add_argument("--flavour", default=None, choices=sorted(ph.FLAVOURS))
    p.add_argument("--dose-fractions", default="0.25,0.1,0.05,0.02,0.01")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fractions = ph.parse_dose_fractions(args.dose_fractions)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for i in range(args.studies):
            t0 = time.perf_counter()
            study = ph.make_study(args.task, args.seed, i, preset=args.preset, dose_fractions=fractions,
                                  flavour=args.flavour)
            t1 = time.perf_counter()
            ph.write_study(study, out, fmt=args.format, overwrite=True)
            t2 = time.perf_counter()
            size = sum(f.stat().st_size for f in (out / study.study_id).rglob("*") if f.is_file())
            row = {"study": study.study_id, "flavour": study.flavour.key, "simulate_s": t1 - t0,
                   "write_s": t2 - t1, "bytes": size,
                   "grids": {k: list(v.geometry.shape) for k, v in study.images.items()},
                   "liver": _liver_stats(study)}
            rows.append(row)
            liver = row["liver"].get("PT", {})
            print(f"{study.study_id} [{study.flavour.key}] simulate {row['simulate_s']:.1f} s, write "
                  f"{row['write_s']:.1f} s, {size / 1e6:.0f} MB, grids {row['grids']}, liver PET mean "
                  f"{liver.get('mean', float('nan')):.3f} (truth {row['liver'].get('truth_mean', float('nan')):.3f})"
                  f" CoV {liver.get('cov', float('nan')):.3f}")
    total = sum(r["simulate_s"] + r["write_s"] for r in rows)
    print(f"total {total:.1f} s for {len(rows)} studies ({total / len(rows):.1f} s/study; median simulate "
          f"{statistics.median(r['simulate_s'] for r in rows):.1f} s, write "
          f"{statistics.median(r['write_s'] for r in rows):.1f} s) with {args.threads} thread(s)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "studies": rows,
                                         "total_s": total}, indent=1, default=lambda o: np.asarray(o).tolist()))


if __name__ == "__main__":
    main()

"""The ultra-high-field experiment of the JDAM seed (its section 4.5), measured where the paper could not: models
trained on 3 T MR -> PET pairs are applied to the 1.5, 3, 5 and 7 T MR of the same held-out subjects, whose PET
(one truth for every field) is known, and scored against it.

Make the data (training subjects at 3 T; held-out subjects, seeds no training saw, at every field):

    petsynth phantom raw-train --task mr2pet --studies 16 --seed 900
    petsynth prepare raw-train --out ds-train --task mr2pet --size 64 --planes axial,coronal,sagittal --split 0.9,0.1,0
    petsynth train jdam ds-train --out run-jdam --config configs/phantom-mr2pet-uhf/jdam.yaml   (and cyclegan, unet)
    petsynth phantom raw-heldout --task mr2pet --studies 3 --seed 950 --field 1.5,3,5,7
    python benchmarks/uhf_experiment.py raw-heldout --out uhf --models run-jdam run-cyclegan run-unet

For each field strength found (study folders ``<study>-<f>T``), the held-out studies of that field are prepared
the way the training set was (``--size``, ``--planes``, ``--fov-mm``; auto brain mask) and every model predicts
every slice. Scores per model and field: PSNR, SSIM (SUV convention, data range 20 SUV) and MAE in SUV against the
noise-free PET truth (blurred by the scanner resolution) and against the simulated PET, inside the brain mask's
slices as prepared; and the SNR of the synthetic PET, mean / standard deviation of its values in the white matter
(label 19) of each study, the paper's measure (they had no truth at 5 and 7 T; here it is beside the truth's
scores). Written to ``--out``: ``uhf.csv``, ``uhf.md`` and one prepared dataset per field. Asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from petsynth.data.brain import BrainOptions, parse_planes  # noqa: E402
from petsynth.data.prepare import prepare_dataset  # noqa: E402
from petsynth.data.store import open_dataset  # noqa: E402
from petsynth.inference import PredictOptions, load_model, predict_dataset  # noqa: E402
from petsynth.metrics import mae, psnr, ssim  # noqa: E402

_FIELD = re.compile(r"^(?P<study>.+)-(?P<field>[0-9.]+)T$")
DATA_RANGE = 20.0  # SUV: the fixed PET window of every SUV-convention metric
WHITE_MATTER = 19


def fields_of(raw: Path) -> dict[float, list[Path]]:
    """Field strength (T) -> the study folders written at it (``<study>-<f>T``)."""
    out: dict[float, list[Path]] = {}
    for study in sorted(p for p in raw.iterdir() if p.is_dir()):
        if m := _FIELD.match(study.name):
            out.setdefault(float(m["field"]), []).append(study)
    if not out:
        raise SystemExit(f"{raw}: no study folder named <study>-<field>T (make them with petsynth phantom --task "
                         "mr2pet --field 1.5,3,5,7)")
    return dict(sorted(out.items()))


def score(model, dataset, batch_size: int) -> dict[str, float]:
    """Mean PSNR / SSIM / MAE against truth and real PET over the slices, and white-matter SNR per study."""
    per: dict[str, list[float]] = {}
    wm: dict[str, list[np.ndarray]] = {}
    k = 0
    start = time.perf_counter()
    for batch, pred in predict_dataset(model, dataset, options=PredictOptions(batch_size=batch_size)):
        pred = pred.to(torch.float64).clamp_min(0)
        for ref_name, key in (("truth", "truth"), ("real", "target")):
            ref = batch[key].to(torch.float64)
            for name, fn in (("psnr", psnr), ("ssim", ssim), ("mae", mae)):
                per.setdefault(f"{name}_{ref_name}", []).extend(fn(pred, ref, data_range=DATA_RANGE).tolist())
        labels = batch["labels"].numpy()[:, 0]
        for b, study in enumerate(batch["study"]):
            wm.setdefault(study, []).append(pred[b, 0].numpy()[labels[b] == WHITE_MATTER])
            wm.setdefault(study + "|real", []).append(batch["target"][b, 0].numpy()[labels[b] == WHITE_MATTER])
            k += 1
    out = {key: float(np.nanmean(np.where(np.isfinite(v), v, np.nan))) for key, v in per.items()}
    snr = {s: np.concatenate(v) for s, v in wm.items()}
    out["snr_wm"] = float(np.mean([v.mean() / v.std() for s, v in snr.items() if not s.endswith("|real")]))
    out["snr_wm_real"] = float(np.mean([v.mean() / v.std() for s, v in snr.items() if s.endswith("|real")]))
    out["seconds_per_slice"] = (time.perf_counter() - start) / max(k, 1)
    out["slices"] = k
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", type=Path, help="held-out phantoms written with --field")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", nargs="+", required=True, help="run folders or model folders")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--planes", default="axial,coronal,sagittal")
    ap.add_argument("--fov-mm", type=float, default=220.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    options = BrainOptions(planes=parse_planes(args.planes), fov_mm=args.fov_mm)
    datasets = {}
    for field, studies in fields_of(args.raw).items():
        ds = args.out / f"ds-{field:g}T"
        if not (ds / "splits.json").exists():
            report = prepare_dataset(studies, ds, "mr2pet", size=args.size, split=(0, 0, 1), brain=options,
                                     resume=(ds / "dataset.yaml").exists())
            for r in report.failed:
                print(f"{field:g} T: {r.study} failed: {r.reason}")
        datasets[field] = open_dataset(ds, split="test")
    models = {Path(m).name: load_model(m, task="mr2pet") for m in args.models}
    rows = []
    for name, model in models.items():
        for field, dataset in datasets.items():
            result = score(model, dataset, args.batch_size)
            rows.append({"model": name, "field_t": field, **result})
            print(name, f"{field:g} T", {k: round(v, 4) for k, v in result.items()})
    columns = list(rows[0])
    with open(args.out / "uhf.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| model | field | PSNR truth | SSIM truth | MAE truth [SUV] | PSNR real | SSIM real | MAE real [SUV] | "
             "SNR (WM) synthetic | SNR (WM) real PET | s / slice |", "|---|---:|" + "---:|" * 9]
    for r in rows:
        lines.append(f"| {r['model']} | {r['field_t']:g} T | {r['psnr_truth']:.2f} | {r['ssim_truth']:.3f} | "
                     f"{r['mae_truth']:.3f} | {r['psnr_real']:.2f} | {r['ssim_real']:.3f} | {r['mae_real']:.3f} | "
                     f"{r['snr_wm']:.2f} | {r['snr_wm_real']:.2f} | {r['seconds_per_slice']:.3f} |")
    (args.out / "uhf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

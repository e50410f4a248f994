"""The dose sweep (the uPETe seed's Fig. 2): the same held-out phantom subjects enhanced at every dose reduction
factor by every model, without retraining, scored against the standard-dose PET and the noise-free truth.

Make the held-out subjects with seeds no training saw, at the ultra-low-dose PET challenge's factors, then sweep:

    petsynth phantom heldout/ --task lpet2spet --studies 2 --seed 700 --dose-fractions 1/4,1/10,1/20,1/50,1/100
    python benchmarks/dose_sweep.py heldout/ --out sweep/ --models low-dose gaussian-filter nlm runs/upete

For each dose fraction found (``PT_low_<fraction>`` series), the studies are prepared with that series as the
low-dose source (links, no copies) and ``petsynth.evaluate`` scores every model on all their slices (its items
carry their dose fraction, which uPETe reads). Written to ``--out``: ``sweep.csv`` (model, reduction factor,
reference, PSNR, SSIM, NRMSE, and the % error of SUVmean and SUVmax in liver, kidney, myocardium and lesions),
``sweep.md`` (the same as tables, with seconds per slice) and ``sweep.png`` (PSNR and lesion SUVmax error against
the reduction factor).
Asserts nothing; the figures go in notes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from petsynth.data.prepare import prepare_dataset  # noqa: E402
from petsynth.evaluate import evaluate  # noqa: E402
from petsynth.inference import PredictOptions  # noqa: E402

#: The regions of the challenge's local measures, as the phantom's label tables name them.
REGIONS = ("liver", "kidney", "myocardium", "lesions")
_LOW = re.compile(r"^PT_low_(?P<fraction>[0-9.]+)$")


def fractions_of(raw: Path) -> list[float]:
    """The low-dose fractions every study under ``raw`` has, highest first."""
    found = None
    for study in sorted(p for p in raw.iterdir() if p.is_dir()):
        mine = {float(m["fraction"]) for d in study.iterdir() if (m := _LOW.match(d.name))}
        found = mine if found is None else found & mine
    if not found:
        raise SystemExit(f"{raw}: no study with PT_low_<fraction> series (make them with petsynth phantom "
                         "--task lpet2spet --dose-fractions ...)")
    return sorted(found, reverse=True)


def view_at(raw: Path, fraction: float, out: Path) -> Path:
    """``out`` holding, per study, links to the files of its CT, standard-dose PET, truth and only the
    ``fraction`` series (links to files: the scan does not follow linked folders)."""
    for study in sorted(p for p in raw.iterdir() if p.is_dir()):
        for folder in sorted(p for p in study.iterdir() if p.is_dir()):
            m = _LOW.match(folder.name)
            if m and float(m["fraction"]) != fraction:
                continue
            target = out / study.name / folder.name
            target.mkdir(parents=True, exist_ok=True)
            for f in folder.iterdir():
                if f.is_file() and not (target / f.name).exists():
                    os.symlink(f.resolve(), target / f.name)
    return out


def _rows(report, fraction: float) -> list[dict]:
    """One row per model and reference of an evaluation at one dose fraction."""
    seconds = json.loads(report.files["settings"].read_text())["seconds_per_model"]
    return [_row(report, model, reference, fraction, seconds.get(model, float("nan")) / report.slices)
            for model in report.models for reference in report.references]


def _row(report, model: str, reference: str, fraction: float, seconds_per_slice: float) -> dict:
    overall = report.overall[model][reference]
    row = {"model": model, "reduction_factor": round(1 / fraction, 2), "dose_fraction": fraction,
           "reference": reference, "psnr_db": overall.get("psnr_suv"), "ssim": overall.get("ssim_suv"),
           "nrmse": overall.get("nrmse_suv"), "seconds_per_slice": seconds_per_slice}
    regions = report.regions.get(model, {}).get(reference, {})
    for region in REGIONS:
        values = regions.get(region, {})
        for field in ("suvmean", "suvmax"):
            bias = values.get(f"{field}_rel_bias")
            row[f"{region}_{field}_error_pct"] = None if bias is None else 100.0 * bias
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("heldout", type=Path, help="phantom lpet2spet studies with several dose fractions")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["low-dose", "gaussian-filter", "nlm"])
    parser.add_argument("--size", type=int, default=128, help="slice size of the prepared data")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps of the diffusion models")
    parser.add_argument("--max-slices", type=int, default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    key = b"dose-sweep"  # the datasets are scratch: a fixed pseudonym key
    rows, start = [], time.perf_counter()
    for fraction in fractions_of(args.heldout):
        tag = f"{fraction:g}"
        view = view_at(args.heldout, fraction, args.out / "views" / tag)
        data = args.out / "data" / tag
        if not (data / "dataset.yaml").exists():
            prepare_dataset([view], data, "lpet2spet", size=args.size, key=key, split=(0.0, 0.0, 1.0))
        report = evaluate(args.models, data, args.out / "eval" / tag, split="test", max_slices=args.max_slices,
                          options=PredictOptions(steps=args.steps))
        rows += _rows(report, fraction)
        print(f"dose 1/{1 / fraction:g}: {report.slices} slices of {len(report.studies)} studies, "
              f"{time.perf_counter() - start:.0f} s so far", flush=True)
    with open(args.out / "sweep.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "sweep.md").write_text(_markdown(rows))
    _plot(rows, args.out / "sweep.png")
    print((args.out / "sweep.md").read_text())


def _fmt(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _markdown(rows: list[dict]) -> str:
    lines = []
    for reference in sorted({r["reference"] for r in rows}):
        lines += [f"## Against the {'standard-dose PET' if reference == 'real' else 'noise-free truth'}", "",
                  "| model | DRF | PSNR dB | SSIM | NRMSE | " + " | ".join(
                      f"{r} SUVmean % | {r} SUVmax %" for r in REGIONS) + " | s/slice |",
                  "|---|---:|---:|---:|---:|" + "---:|" * (2 * len(REGIONS) + 1)]
        for r in (r for r in rows if r["reference"] == reference):
            cells = [r["model"], f"{r['reduction_factor']:g}", _fmt(r["psnr_db"], 2), _fmt(r["ssim"], 4),
                     _fmt(r["nrmse"], 4)]
            cells += [_fmt(r[f"{g}_{f}_error_pct"], 1) for g in REGIONS for f in ("suvmean", "suvmax")]
            cells.append(_fmt(r["seconds_per_slice"], 3))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    truth = [r for r in rows if r["reference"] == "truth"] or rows
    for model in dict.fromkeys(r["model"] for r in truth):
        mine = sorted((r for r in truth if r["model"] == model), key=lambda r: r["reduction_factor"])
        drf = [r["reduction_factor"] for r in mine]
        axes[0].plot(drf, [r["psnr_db"] for r in mine], marker="o", label=model)
        axes[1].plot(drf, [r["lesions_suvmax_error_pct"] for r in mine], marker="o", label=model)
    for ax, label in zip(axes, ("PSNR (dB)", "lesion SUVmax error (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("dose reduction factor")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"dose sweep against the {'noise-free truth' if truth is not rows else 'standard-dose PET'}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

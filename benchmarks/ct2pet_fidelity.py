"""CT -> PET fidelity on held-out phantom subjects, as a user meets it: the phantom written as DICOM, its CT
translated by each model (``petsynth.translation.translate``, the model's default sampler), the synthetic PET
resampled onto the phantom's PET grid and scored against the blurred noise-free truth (the emission image the
scanner saw), per organ and per lesion class.

    python benchmarks/ct2pet_fidelity.py --seed 777 --studies 3 --models phantom-cpdm runs/cpdm/model \\
        --out fidelity/ [--contrast venous] [--threads 2]

Per study and model: body MAE (mean |synthetic - truth| over the body's voxels: every label but air and the
table), organ SUVmean bias ((synthetic - truth) / truth per organ, :func:`petsynth.demo.organ_table`), lesion
SUVmax recovery (synthetic / truth SUVmax per lesion, by class), false-positive hot spots (components of
synthetic > 4 SUV outside labelled uptake, :mod:`petsynth.metrics.lesions`) and the translation's seconds per
slice (the whole ``translate`` call: reading, resampling, sampling, writing). The scanner's own reconstruction
is scored the same way as the column "scanner".

The column "ct-only floor" is what the best possible CT -> PET model would give: the phantom draws each
subject's organ SUVs independently of its CT numbers (uniformly in each tissue's range), so from a CT no model
can know more of an organ's SUVmean than the population mean (:func:`petsynth.phantom.tissues.expected_suv`).
It is the blurred truth with each organ's voxels scaled by expected / drawn SUV (lesion voxels kept): its
organ bias is the part of a model's bias that no training removes.

Written to ``--out``: ``fidelity.md`` (organ table: mean truth, each model's mean SUVmean and mean bias over
the studies; lesion classes; MAE, hot spots, speed), ``organs.csv``, ``lesions.csv``, ``studies.csv`` and
``fidelity.json``. The subjects are made by seed (default preset unless ``--preset``); use seeds no training
saw. Asserts nothing; the figures go in notes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from petsynth.data.geometry import resample  # noqa: E402
from petsynth.data.prepare import phantom_label_table  # noqa: E402
from petsynth.demo import organ_table  # noqa: E402
from petsynth.inference import model_name  # noqa: E402
from petsynth.metrics.lesions import (DEFAULT_HOT_SPOT_SUV, RECOVERY_TOLERANCE, false_positive_hot_spots,  # noqa: E402
                                      labelled_uptake, lesion_class, uptake_labels)
from petsynth.phantom import make_torso, write_study  # noqa: E402
from petsynth.phantom import tissues as T  # noqa: E402
from petsynth.translation import translate  # noqa: E402

#: Labels outside the body: air and the table.
NOT_BODY = (T.AIR.label, T.TABLE.label, T.TABLE_CORE.label)
#: The organs of the issue's targets, in the order of the table.
TARGET_ORGANS = ("liver", "spleen", "kidney", "bladder", "brain", "blood_pool", "lung", "muscle", "fat",
                 "cortical_bone", "bone_marrow", "myocardium")


#: The name of the best possible CT -> PET image (module docstring).
FLOOR = "ct-only floor"


def ct_only_floor(truth: np.ndarray, labels: np.ndarray, study_truth: dict) -> np.ndarray:
    """The blurred ``truth`` (SUV) with each organ's voxels scaled by the tissue's population mean SUV over the
    subject's drawn SUV (``study_truth["labels"]``, truth.json); lesion and background voxels unchanged."""
    ratio = np.ones(int(labels.max()) + 1, dtype=np.float32)
    for row in study_truth["labels"]:
        tissue = T.TISSUES.get(row["label"])
        if tissue is not None and row["label"] < ratio.size and row.get("suv", 0) > 0:
            ratio[row["label"]] = T.expected_suv(tissue) / row["suv"]
    return truth * ratio[labels]


def score_study(images: dict[str, np.ndarray], truth: np.ndarray, labels: np.ndarray, table: list[dict],
                spacing_mm: tuple[float, float, float], threshold: float = DEFAULT_HOT_SPOT_SUV) -> dict:
    """Scores of each image (nz, ny, nx) SUV against ``truth`` on one grid: body MAE, the organ table, lesion
    rows with class and recovery, false-positive hot spots."""
    body = ~np.isin(labels, NOT_BODY)
    organs = organ_table(truth, images, labels, table)
    uptake, benign = uptake_labels(truth, labels, table, threshold)
    uptake_mask = labelled_uptake(truth, labels, uptake, benign, threshold)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    out = {}
    for name, image in images.items():
        spots = false_positive_hot_spots(image, uptake_mask, threshold, voxel_ml=voxel_ml)
        out[name] = {"body_mae_suv": float(np.abs(image - truth)[body].mean()),
                     "hot_spots": len(spots), "hot_spot_suvmax": max((s["suvmax"] for s in spots), default=None)}
    return {"per_image": out, "organs": organs}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", required=True, help="bundled names, run folders or model folders")
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--studies", type=int, default=3)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--contrast", default="none", choices=("none", "venous", "random"))
    ap.add_argument("--arms", default="random", choices=("raised", "sides", "random"))
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: each model's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = [model_name(m) for m in args.models]

    organ_rows, lesion_rows, study_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.studies):
            t0 = time.perf_counter()
            study = make_torso(args.seed, index=index, preset=args.preset, contrast=args.contrast, arms=args.arms)
            dicom = write_study(study, Path(tmp) / f"s{index}", fmt="dicom")
            pet = study.images["PT"]
            truth = study.truth_images["suv_truth_blurred"].volume.astype(np.float32)
            labels = study.truth_images["labels"].volume
            table = phantom_label_table(study.truth)
            print(f"{study.study_id}: simulated in {time.perf_counter() - t0:.0f} s "
                  f"(arms {study.truth['subject'].get('arms')}, contrast {study.truth['ct'].get('contrast')})",
                  flush=True)
            images = {"scanner": pet.volume.astype(np.float32), FLOOR: ct_only_floor(truth, labels, study.truth)}
            seconds = {}
            for spec, name in zip(args.models, names):
                t0 = time.perf_counter()
                result = translate(spec, dicom / "CT", Path(tmp) / f"out-{index}-{len(seconds)}", steps=args.steps,
                                   threads=args.threads, png=False, overwrite=True)
                seconds[name] = (time.perf_counter() - t0, result.slices)
                images[name] = resample(result.suv, result.geometry, pet.geometry, fill=0.0)
                print(f"  {name}: {seconds[name][0]:.1f} s for {result.slices} slices", flush=True)
            scored = score_study(images, truth, labels, table, pet.geometry.spacing)
            for image, values in scored["per_image"].items():
                sec, n = seconds.get(image, (None, None))
                study_rows.append({"study": study.study_id, "image": image, **values,
                                   "seconds": sec, "slices": n, "seconds_per_slice": sec / n if sec else None})
            for row in scored["organs"]:
                for image in images:
                    entry = {"study": study.study_id, "region": row["region"], "kind": row["kind"],
                             "class": lesion_class(row) if row["kind"] == "lesion" else "",
                             "lesion_kind": row.get("lesion_kind", ""), "statistic": row["statistic"],
                             "voxels": row["voxels"], "truth": row["truth"], "image": image, "value": row[image],
                             "rel_bias": row[f"{image}_rel_bias"]}
                    (lesion_rows if row["kind"] == "lesion" else organ_rows).append(entry)

    images = ["scanner", FLOOR, *names]
    _write_csv(args.out / "organs.csv", organ_rows)
    _write_csv(args.out / "lesions.csv", lesion_rows)
    _write_csv(args.out / "studies.csv", study_rows)
    summary = summarise(organ_rows, lesion_rows, study_rows, images)
    (args.out / "fidelity.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                        "summary": summary}, indent=1, default=str))
    md = markdown(summary, images, args)
    (args.out / "fidelity.md").write_text(md)
    print(md)


def summarise(organ_rows, lesion_rows, study_rows, images) -> dict:
    """Means over studies: per organ (truth SUVmean, each image's SUVmean and relative bias), per lesion class
    (count, mean recovery, fraction within +-30 %), per image (body MAE, hot spots, seconds per slice)."""
    organs: dict = defaultdict(lambda: defaultdict(list))
    for r in organ_rows:
        organs[r["region"]]["truth"].append(r["truth"]) if r["image"] == "scanner" else None
        organs[r["region"]][r["image"]].append(r["value"])
        organs[r["region"]][r["image"] + "_bias"].append(r["rel_bias"])
    lesions: dict = defaultdict(lambda: defaultdict(list))
    for r in lesion_rows:
        lesions[r["class"]][r["image"]].append(r["value"] / r["truth"] if r["truth"] > 0 else np.nan)
    per_image: dict = defaultdict(lambda: defaultdict(list))
    for r in study_rows:
        for k in ("body_mae_suv", "hot_spots", "seconds_per_slice"):
            if r[k] is not None:
                per_image[r["image"]][k].append(r[k])
    def mean(values):
        finite = [v for v in values if v is not None and np.isfinite(v)]
        return float(np.mean(finite)) if finite else None

    return {
        "organs": {o: {k: mean(v) for k, v in d.items()} | {"studies": len(d["truth"])} for o, d in organs.items()},
        "lesions": {c: {i: {"n": len(v), "recovery": mean(v),
                            "within": float(np.mean(np.abs(np.asarray(v) - 1) <= RECOVERY_TOLERANCE)) if v else None}
                        for i, v in d.items()} for c, d in lesions.items()},
        "images": {i: {k: (float(np.sum(v)) if k == "hot_spots" else mean(v)) for k, v in d.items()}
                   for i, d in per_image.items()},
    }


def markdown(summary: dict, images: list[str], args) -> str:
    f = lambda v, d=2: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{d}f}"  # noqa: E731
    pct = lambda v: "-" if v is None or np.isnan(v) else f"{100 * v:+.0f} %"  # noqa: E731
    lines = [f"Held-out phantoms: seed {args.seed}, {args.studies} studies, preset {args.preset}, contrast "
             f"{args.contrast}, arms {args.arms}; against the blurred noise-free truth.", "",
             "| organ | truth SUVmean | " + " | ".join(f"{i} | bias" for i in images) + " |",
             "|---|---:|" + "---:|---:|" * len(images)]
    order = [o for o in TARGET_ORGANS if o in summary["organs"]]
    order += [o for o in summary["organs"] if o not in order and o not in ("table_shell", "table_core")]
    for o in order:
        d = summary["organs"][o]
        lines.append(f"| {o} | {f(d.get('truth'))} | " + " | ".join(
            f"{f(d.get(i))} | {pct(d.get(i + '_bias'))}" for i in images) + " |")
    lines += ["", "Organ bias: the mean over the studies of (image SUVmean - truth SUVmean) / truth SUVmean.", "",
              "| lesion class | " + " | ".join(f"{i}: n, mean recovery, within +-30 %" for i in images) + " |",
              "|---|" + "---|" * len(images)]
    for c, d in summary["lesions"].items():
        lines.append(f"| {c} | " + " | ".join(
            f"{d[i]['n']}, {f(d[i]['recovery'])}, {f(d[i]['within'] * 100 if d[i]['within'] is not None else None, 0)} %"
            if i in d else "-" for i in images) + " |")
    lines += ["", "Recovery: image SUVmax / truth SUVmax in the lesion's voxels (1 = perfect).", "",
              "| image | body MAE (SUV) | false-positive hot spots (all studies) | seconds per slice (translate) |",
              "|---|---:|---:|---:|"]
    for i in images:
        d = summary["images"].get(i, {})
        lines.append(f"| {i} | {f(d.get('body_mae_suv'), 3)} | {f(d.get('hot_spots'), 0)} | "
                     f"{f(d.get('seconds_per_slice'), 3)} |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()

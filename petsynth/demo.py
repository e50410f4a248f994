"""The embedded default (``petsynth demo``): CT -> PET on a built-in phantom with the bundled model.

No data and no download: it simulates one whole-body PET/CT phantom study and writes it as DICOM and
NIfTI with its ground truth, translates the CT (the DICOM series, as a user's study would be) with the
bundled CPDM ``phantom-cpdm`` (trained by us on phantoms only), which writes the synthetic PET as NIfTI
and as a DICOM series in the phantom's study, then scores the synthetic PET against the phantom's
noise-free truth (and, for reference, the simulated scanner's own reconstruction against the same truth)
with petsynth's metrics in SUV, and draws a PNG panel.

The synthetic PET lies on the translation grid (the model's pixel spacing over the CT's field of view); it is
resampled onto the phantom's PET grid in world coordinates for scoring.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from petsynth import metrics
from petsynth.data.geometry import Geometry, resample
from petsynth.data.prepare import phantom_label_table
from petsynth.inference import DEMO_MODEL
from petsynth.io.nifti import write_nifti
from petsynth.metrics.lesions import lesion_class
from petsynth.phantom import make_torso, write_study
from petsynth.physics import attenuation_map
from petsynth.physics.constants import HU_AIR
from petsynth.utils.files import atomic_write_text

#: SUV range used for the metrics' data range and the panel's PET window (covers organs and lesions).
DEMO_SUV_RANGE: float = 15.0
#: Voxels of the truth above this SUV form the "high-uptake" region of the SUV bias report.
DEMO_HIGH_UPTAKE_SUV: float = 2.5


@dataclass
class DemoReport:
    """What the demo wrote and measured: ``metrics[name]`` for the synthetic PET, ``reference[name]`` for the
    simulated scanner's reconstruction, both against the noise-free truth."""

    out_dir: Path
    study_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)
    organs: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    translate_seconds: float = 0.0


def score(pred: np.ndarray, truth: np.ndarray, data_range: float = DEMO_SUV_RANGE,
          high_uptake_suv: float = DEMO_HIGH_UPTAKE_SUV) -> dict[str, float]:
    """Whole-volume scores of ``pred`` against ``truth`` (both (nz, ny, nx) SUV on one grid): the mean over the
    slices with body in the truth of MAE (SUV), PSNR and SSIM (data range ``data_range`` SUV), and the mean
    SUVmean / SUVmax bias (pred - truth, in SUV and relative to the truth) in the truth's high-uptake region
    (> ``high_uptake_suv``) over the slices that have one."""
    pred_t = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[:, None]
    truth_t = torch.from_numpy(np.ascontiguousarray(truth, dtype=np.float32))[:, None]
    body = truth_t.flatten(1).amax(1) > 0.1
    pred_t, truth_t = pred_t[body], truth_t[body]
    bias = metrics.suv_bias(pred_t, truth_t, threshold=high_uptake_suv)
    return {
        "slices": int(pred_t.shape[0]),
        "mae_suv": float(metrics.mae(pred_t, truth_t, data_range=data_range).mean()),
        "psnr_db": float(metrics.psnr(pred_t, truth_t, data_range=data_range).mean()),
        "ssim": float(metrics.ssim(pred_t, truth_t, data_range=data_range).mean()),
        "suvmean_bias_high_uptake_suv": float(torch.nanmean(bias.suvmean_bias)),
        "suvmean_rel_bias_high_uptake": float(torch.nanmean(bias.suvmean_rel_bias)),
        "suvmax_bias_high_uptake_suv": float(torch.nanmean(bias.suvmax_bias)),
        "suvmax_rel_bias_high_uptake": float(torch.nanmean(bias.suvmax_rel_bias)),
    }


def _panel(path: Path, images: list[tuple[np.ndarray, str, str]], title: str, columns: int = 3) -> None:
    """The images cropped to the body (and table) with a margin, ``columns`` per row."""
    from petsynth.io.png import save_panel

    ct = images[0][0]
    rows, cols = np.nonzero(ct > -500)
    if rows.size:
        r0, r1 = max(rows.min() - 4, 0), rows.max() + 5
        c0, c1 = max(cols.min() - 4, 0), cols.max() + 5
        images = [(img[r0:r1, c0:c1], caption, kind) for img, caption, kind in images]
    grid = [images[n:n + columns] for n in range(0, len(images), columns)]
    save_panel(path, grid, title=title, dpi=110)


def organ_table(truth: np.ndarray, images: dict[str, np.ndarray], labels: np.ndarray,
                label_table: list[dict]) -> list[dict]:
    """Per organ and per lesion of ``label_table`` (rows ``{"label", "name", "kind"}``, lesions optionally with
    "class" and "lesion_kind") present in ``labels``: voxels, the statistic (SUVmean for organs, SUVmax for
    lesions) of the truth and of each image, and each image's relative bias ((image - truth) / truth; for a
    lesion, recovery - 1); lesions also get "class" ("unclassified" without one) and "lesion_kind" ("" unknown).
    All volumes (nz, ny, nx) SUV on one grid."""
    out = []
    for row in label_table:
        mask = labels == int(row["label"])
        n = int(mask.sum())
        if n == 0:
            continue
        stat = np.max if row["kind"] == "lesion" else np.mean
        ref = float(stat(truth[mask]))
        entry = {"region": row["name"], "kind": row["kind"], "voxels": n,
                 "statistic": "SUVmax" if row["kind"] == "lesion" else "SUVmean", "truth": ref}
        if row["kind"] == "lesion":
            entry.update({"class": lesion_class(row), "lesion_kind": str(row.get("lesion_kind", ""))})
        for name, image in images.items():
            value = float(stat(image[mask]))
            entry[name] = value
            entry[f"{name}_rel_bias"] = (value - ref) / ref if ref > 0 else float("nan")
        out.append(entry)
    return out


def organ_rich_tables(organs: list[dict], model: str | Path) -> list[Any]:
    """The organ table (:func:`organ_table`) as rich Tables that fit 80 columns: the organs (SUVmean), then the
    lesions (SUVmax, with their class; their kind is in metrics.json and report.html): the truth, the synthetic PET and the scanner's PET, each with its
    bias in percent ((image - truth) / truth)."""
    from rich import box
    from rich.table import Table

    def percent(v: float) -> str:
        if not np.isfinite(v):
            return "–"
        return f"{100 * v:+.1f}" if abs(v) < 10 else (">+999" if v > 0 else "<-999")

    tables = []
    for kind, title, first, extra in (("organ", "Organs: SUVmean", "organ", ()),
                                      ("lesion", "Lesions: SUVmax", "lesion", ("class",))):
        rows = [o for o in organs if o["kind"] == kind]
        if not rows:
            continue
        table = Table(title=f"{title} against the phantom's noise-free truth (synthetic: {model}; bias = "
                            "(image - truth) / truth)", box=box.SIMPLE_HEAD)
        for name in (first, *extra):
            table.add_column(name, no_wrap=True)
        for name in ("truth", "synthetic", "bias %", "scanner", "bias %"):
            table.add_column(name, justify="right", no_wrap=True)
        for o in rows:
            names = [o["region"], *([o.get("class", "")] if extra else [])]
            table.add_row(*names, f"{o['truth']:.2f}", f"{o['synthetic']:.2f}", percent(o["synthetic_rel_bias"]),
                          f"{o['scanner']:.2f}", percent(o["scanner_rel_bias"]))
        tables.append(table)
    return tables


def _pictures(out: Path, grid: Geometry, ct: np.ndarray, synthetic: np.ndarray, scanner: np.ndarray, k: int,
              model: str | Path, study_id: str, scores: dict, reference: dict, organs: list[dict],
              info: dict) -> dict[str, Path]:
    """The coronal MIPs, fused slices and report.html of the demo (all on the phantom's PET grid)."""
    from petsynth.io import views
    from petsynth.report import ReportContent, Table, training_summary, write_report

    (ct, synthetic, scanner), grid = views.crop_to(ct > -500, grid, [ct, synthetic, scanner])
    mip = views.save_mip_png(out / "mip.png", [(synthetic, f"synthetic PET ({model})"), (scanner, "scanner PET")],
                             grid, title=f"phantom {study_id}: coronal MIP")
    axial = views.display_index(grid, "axial", k)
    fused = views.save_fused_png(out / "fused.png", ct, [(synthetic, "synthetic PET"), (scanner, "scanner PET")],
                                 grid, [("axial", axial), ("coronal", views.plane_size(grid, "coronal") // 2)],
                                 title=f"phantom {study_id}: PET over CT")
    metric_rows = [[name, value, reference.get(name, "")] for name, value in scores.items()
                   if isinstance(value, float) and name in reference]
    organ_rows = [[o["region"], o.get("class", ""), o.get("lesion_kind", ""), o["statistic"], o["truth"], o["synthetic"],
                   100 * o["synthetic_rel_bias"], o["scanner"], 100 * o["scanner_rel_bias"]] for o in organs]
    content = ReportContent(
        title=f"petsynth demo: phantom {study_id}", geometry=grid, anatomy=ct, synthetic=synthetic,
        reference=scanner, reference_label="scanner PET",
        facts={"model": info["model"]["name"], "method": info["model"]["method"], "task": info["task"],
               "trained on": training_summary(info["model"].get("training_data", {})),
               "sampling steps": info["options"]["steps_used"], "translation seconds": info["seconds"],
               "petsynth": info["petsynth_version"]},
        tables=[Table("Scores against the phantom's noise-free truth (whole volume)",
                      ["metric", "synthetic PET", "scanner PET"], metric_rows, digits=3),
                Table("Organs (SUVmean) and lesions (SUVmax) against the noise-free truth",
                      ["region", "class", "kind", "statistic", "truth", "synthetic", "bias %", "scanner", "bias %"], organ_rows,
                      digits=2, note="bias = (image - truth) / truth; the truth is blurred to the scanner's "
                                     "resolution.")],
        notes=["The bundled model knows digital phantoms only."])
    return {"mip": mip, "fused": fused, "report": write_report(out / "report.html", content)}


def run_demo(out_dir: str | Path, *, seed: int = 0, preset: str = "small", model: str | Path = DEMO_MODEL,
             steps: int | None = None, threads: int | None = None, overwrite: bool = True,
             progress: Callable[[str], None] | None = None) -> DemoReport:
    """Run the demo into ``out_dir``; returns the report (also written as ``out_dir/metrics.json``).

    ``steps``: the model's sampling steps (None: its default); ``model``: another trained ct2pet model."""
    from petsynth.inference import set_threads
    from petsynth.translation import translate

    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    threads = set_threads(threads)  # the simulation runs on torch too: chosen once here, for every stage
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say("simulating a whole-body PET/CT phantom")
    study = make_torso(seed, preset=preset)
    say("writing the phantom as DICOM and NIfTI")
    dicom_dir = write_study(study, out / "phantom-dicom", fmt="dicom", overwrite=overwrite)
    nifti_dir = write_study(study, out / "phantom-nifti", fmt="nifti", overwrite=overwrite)

    say(f"translating the CT with {model}")
    result = translate(model, dicom_dir / "CT", out / "synthetic", steps=steps, threads=threads, png=False,
                       overwrite=True, say=lambda msg: say(f"translate: {msg}"))

    say("scoring against the phantom truth")
    ct, pet = study.images["CT"], study.images["PT"]
    kvp = float(study.acquisition.kvp)
    synthetic = resample(result.suv, result.geometry, pet.geometry, fill=0.0)
    truth = study.truth_images["suv_truth_blurred"].volume.astype(np.float32)
    scores = {**score(synthetic, truth), "kvp": kvp, "data_range_suv": DEMO_SUV_RANGE,
              "sampling_steps": result.info["options"]["steps_used"]}
    reference = score(pet.volume.astype(np.float32), truth)

    ct_on_pet = resample(ct.volume.astype(np.float32), ct.geometry, pet.geometry, fill=HU_AIR)
    mu_map = attenuation_map(ct_on_pet, kvp, method="bilinear", path_length_cm=1.0)
    mu_path = write_nifti(out / "attenuation_map.nii.gz", mu_map.astype(np.float32), pet.geometry.affine)
    labels = study.truth_images["labels"].volume
    scanner = pet.volume.astype(np.float32)
    organs = organ_table(truth, {"synthetic": synthetic, "scanner": scanner}, labels,
                         phantom_label_table(study.truth))
    k = int(np.argmax([len(np.unique(labels[i])) for i in range(labels.shape[0])]))  # most organs in view
    panel = out / "panel.png"
    say("drawing the panel, MIPs and fused slices")
    _panel(panel, [(ct_on_pet[k], f"CT ({kvp:g} kVp, HU)", "ct"), (mu_map[k], "attenuation map exp(-mu L)", "map"),
                   (synthetic[k], "synthetic PET (SUV)", "pet"), (scanner[k], "scanner PET (SUV)", "pet"),
                   (truth[k], "noise-free truth (SUV)", "pet"), (synthetic[k] - truth[k], "synthetic - truth", "error")],
           f"phantom {study.study_id}, slice {k}: {model} vs truth (SSIM {scores['ssim']:.3f}, "
           f"MAE {scores['mae_suv']:.3f} SUV); the scanner's PET: SSIM {reference['ssim']:.3f}, "
           f"MAE {reference['mae_suv']:.3f} SUV")
    pictures = _pictures(out, pet.geometry, ct_on_pet, synthetic, scanner, k, model, study.study_id,
                         scores, reference, organs, result.info)
    report = DemoReport(out_dir=out, study_dir=dicom_dir, metrics=scores, reference=reference, organs=organs,
                        files={"phantom_dicom": dicom_dir, "phantom_nifti": nifti_dir,
                               "synthetic_nifti": result.files["nifti"], "synthetic_dicom": result.files["dicom"],
                               "attenuation_map": mu_path, "panel": panel, **pictures},
                        seconds=time.perf_counter() - start, translate_seconds=result.seconds)
    atomic_write_text(out / "metrics.json", json.dumps(
        {"study": study.study_id, "model": str(model), "metrics": scores, "scanner_pet_metrics": reference,
         "organs": organs,
         "seconds": round(report.seconds, 2), "translate_seconds": round(result.seconds, 2),
         "files": {k: str(v) for k, v in report.files.items()}}, indent=2))
    return report

"""The embedded default (``petsynth demo``): everything petsynth can do today, on a built-in phantom.

No data and no download: it simulates one whole-body PET/CT phantom study, writes it as DICOM and NIfTI
with its ground truth, computes CPDM's Attenuation map from the CT (HU and the header's kVp, resampled
onto the PET grid in world coordinates), scores the reconstructed PET against the phantom's noise-free
truth with petsynth's metrics (in SUV), and draws a PNG panel. Until the CT -> PET models land, the
"PET" scored here is the simulator's own reconstruction; the demo then runs the bundled model instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from petsynth import metrics
from petsynth.data.phantom import make_torso, write_study
from petsynth.data.geometry import resample
from petsynth.io.nifti import write_nifti
from petsynth.physics import attenuation_map
from petsynth.physics.constants import HU_AIR
from petsynth.utils.files import atomic_write_text

#: SUV range used for the metrics' data range and the panel's PET window (covers organs and lesions).
DEMO_SUV_RANGE: float = 15.0
#: Voxels of the truth above this SUV form the "high-uptake" region of the SUV bias report.
DEMO_HIGH_UPTAKE_SUV: float = 2.5


@dataclass
class DemoReport:
    """What the demo wrote and measured."""

    out_dir: Path
    study_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _panel(path: Path, ct: np.ndarray, mu_map: np.ndarray, pet: np.ndarray, truth: np.ndarray,
           title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = np.nonzero(ct > -500)  # crop to the body (and table) with a margin
    if rows.size:
        r0, r1 = max(rows.min() - 4, 0), rows.max() + 5
        c0, c1 = max(cols.min() - 4, 0), cols.max() + 5
        ct, mu_map, pet, truth = (a[r0:r1, c0:c1] for a in (ct, mu_map, pet, truth))
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
    shown = [(ct, "CT (HU)", "gray", -250, 350), (mu_map, "Attenuation map exp(-mu L)", "gray", None, None),
             (pet, "PET (SUV)", "gray_r", 0, 8), (truth, "noise-free truth (SUV)", "gray_r", 0, 8),
             (pet - truth, "PET - truth (SUV)", "RdBu_r", -3, 3)]
    for ax, (img, label, cmap, lo, hi) in zip(axes, shown):
        im = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi)
        ax.set_title(label, fontsize=10)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_demo(out_dir: str | Path, *, seed: int = 0, preset: str = "small", overwrite: bool = True,
             progress: Callable[[str], None] | None = None) -> DemoReport:
    """Run the demo into ``out_dir``; returns the report (also written as ``out_dir/metrics.json``)."""
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say("simulating a whole-body PET/CT phantom")
    study = make_torso(seed, preset=preset)
    say("writing DICOM and NIfTI")
    dicom_dir = write_study(study, out / "dicom", fmt="dicom", overwrite=overwrite)
    nifti_dir = write_study(study, out / "nifti", fmt="nifti", overwrite=overwrite)

    say("attenuation map from the CT")
    ct, pet = study.images["CT"], study.images["PT"]
    kvp = float(study.acquisition.kvp)
    ct_on_pet = resample(ct.volume.astype(np.float32), ct.geometry, pet.geometry, fill=HU_AIR)
    mu_map = attenuation_map(ct_on_pet, kvp, method="bilinear", path_length_cm=1.0)
    mu_path = out / "attenuation_map.nii.gz"
    write_nifti(mu_path, mu_map.astype(np.float32), pet.geometry.affine)

    say("scoring the PET against the phantom truth")
    truth = study.truth_images["suv_truth_blurred"].volume.astype(np.float32)
    pred_t = torch.from_numpy(pet.volume.astype(np.float32))[:, None]
    truth_t = torch.from_numpy(truth)[:, None]
    body = truth_t.flatten(1).amax(1) > 0.1
    pred_t, truth_t = pred_t[body], truth_t[body]
    bias = metrics.suv_bias(pred_t, truth_t, threshold=DEMO_HIGH_UPTAKE_SUV)
    scores = {
        "slices": int(pred_t.shape[0]),
        "kvp": kvp,
        "mae_suv": float(metrics.mae(pred_t, truth_t, data_range=DEMO_SUV_RANGE).mean()),
        "psnr_db": float(metrics.psnr(pred_t, truth_t, data_range=DEMO_SUV_RANGE).mean()),
        "ssim": float(metrics.ssim(pred_t, truth_t, data_range=DEMO_SUV_RANGE).mean()),
        "suvmean_bias_high_uptake": float(torch.nanmean(bias.suvmean_bias)),
        "suvmax_bias_high_uptake": float(torch.nanmean(bias.suvmax_bias)),
        "data_range_suv": DEMO_SUV_RANGE,
    }
    labels = study.truth_images["labels"].volume
    k = int(np.argmax([len(np.unique(labels[i])) for i in range(labels.shape[0])]))  # most organs in view
    panel = out / "panel.png"
    _panel(panel, ct_on_pet[k], mu_map[k], pet.volume[k], truth[k],
           f"phantom {study.study_id}, slice {k}, {kvp:g} kVp: reconstructed PET vs truth "
           f"(SSIM {scores['ssim']:.3f}, MAE {scores['mae_suv']:.3f} SUV)")
    report = DemoReport(out_dir=out, study_dir=dicom_dir,
                        files={"dicom": dicom_dir, "nifti": nifti_dir, "attenuation_map": mu_path, "panel": panel},
                        metrics=scores, seconds=time.perf_counter() - start)
    atomic_write_text(out / "metrics.json", json.dumps(
        {"study": study.study_id, "metrics": scores, "seconds": round(report.seconds, 2),
         "files": {k: str(v) for k, v in report.files.items()}}, indent=2))
    return report

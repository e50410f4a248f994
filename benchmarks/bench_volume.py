"""Seconds per whole-body low-dose PET volume for every lpet2spet method (issue 15: uPETe's default sampler
within 2 minutes per 256 x 256 x 160 volume on a CPU).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_volume.py [--shape 160,256,256] [--steps N]
        [--threads 2] [--methods low-dose gaussian-filter nlm unet n2v upete-pixel upete-latent upete-3d]

Each method enhances one volume of ``--shape`` (slices, rows, columns) of 2.7 mm pixels: a low-dose PET in SUV
(an ellipse of tissue at SUV 1 with a liver at 2 and hot spots, Poisson-like noise) and its CT, through
:func:`petsynth.inference.predict_items` as ``evaluate`` and ``translate`` run it (batches of 8 slices; a 3D
model gets the study whole). Weights are freshly initialised: the time does not depend on them, only on the
architecture, which is that of the CPU runs in the README (upete: pixel space or the default small VQ
autoencoder f4, a (16, 32, 64, 128) denoiser, CT guidance, Poisson process; ``upete-3d``: the same in 3D,
windows of 16 slices overlapping by half). Prints seconds per volume and per slice; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from petsynth.bench import machine  # noqa: E402
from petsynth.inference import PredictOptions, load_model, predict_items  # noqa: E402
from petsynth.methods.base import build_method  # noqa: E402

PIXEL_MM = 2.7
DENOISER = {"channels": [16, 32, 64, 128], "attention_levels": [False, False, False, True], "num_head_channels": 32,
            "norm_num_groups": 8}
UPETE = {"process": "poisson", "ct_guidance": True, "guidance_channels": 16, "guidance_heads": 2, "window": 8,
         "denoiser": DENOISER, "dose_fraction": 0.1}
UNET = {"unet": {"features": [16, 32, 64, 128, 256, 16], "norm": "batch"}}
BUILT = {
    "unet": ("unet", UNET),
    "n2v": ("n2v", UNET),
    "upete-pixel": ("upete", {**UPETE, "pixel_space": True}),
    "upete-latent": ("upete", {**UPETE, "autoencoder": {}, "pixel_space": False}),
    "upete-3d": ("upete", {**UPETE, "pixel_space": True, "spatial_dims": 3, "slab_depth": 16}),
}


def volume(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(low-dose PET in SUV, CT in HU), each ``shape`` float32."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    y, x = np.mgrid[:ny, :nx] / (max(ny, nx) - 1) * 2 - 1
    body = (x / 0.8) ** 2 + (y / 0.55) ** 2 < 1
    liver = ((x + 0.3) / 0.3) ** 2 + ((y + 0.1) / 0.25) ** 2 < 1
    suv = np.where(liver, 2.0, np.where(body, 1.0, 0.0)).astype(np.float32)
    pet = np.repeat(suv[None], nz, axis=0)
    pet[:, ny // 2 - 2:ny // 2 + 2, nx // 2 - 2:nx // 2 + 2] = 8.0
    pet = rng.poisson(pet * 20.0).astype(np.float32) / 20.0
    ct = np.repeat(np.where(body, 40.0, -1000.0).astype(np.float32)[None], nz, axis=0)
    return pet, ct


def method_for(name: str):
    if name in BUILT:
        kind, config = BUILT[name]
        return build_method(kind, config, task="lpet2spet", load_parts=False).eval()
    return load_model(name, task="lpet2spet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="160,256,256")
    parser.add_argument("--steps", type=int, default=None, help="network evaluations (default: the model's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+",
                        default=["low-dose", "gaussian-filter", "nlm", "unet", "n2v", "upete-pixel", "upete-latent",
                                 "upete-3d"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    pet, ct = volume(shape)
    print(machine(), f"threads {args.threads}, volume {shape}, {PIXEL_MM} mm pixels")
    print(f"{'method':16s} {'steps':>5s} {'s/volume':>9s} {'s/slice':>8s}")
    for name in args.methods:
        method = method_for(name)
        takes_steps = "steps" in method.sampler_option_names()
        options = PredictOptions(steps=args.steps if takes_steps else None, batch_size=8)
        steps = (args.steps or method.config.sample_steps) if takes_steps else "-"
        items = ({"source": pet[k], "guidance": ct[k], "kvp": 120.0, "spacing_mm": (PIXEL_MM, PIXEL_MM),
                  "study": "volume", "dose_fraction": 0.1} for k in range(shape[0]))
        start = time.perf_counter()
        done = sum(pred.shape[0] for _, pred in predict_items(method, items, total=shape[0], options=options))
        seconds = time.perf_counter() - start
        assert done == shape[0]
        print(f"{name:16s} {steps!s:>5s} {seconds:9.1f} {seconds / shape[0]:8.3f}", flush=True)


if __name__ == "__main__":
    main()

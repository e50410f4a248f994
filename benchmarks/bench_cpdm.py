"""CPDM speed: seconds per 256x256 slice versus sampling steps, batch 1 and batched, fp32 and bf16; and, given
a trained model and a prepared dataset, quality (SSIM, PSNR, MAE in SUV) versus steps and sampler.

    .venv/bin/python benchmarks/bench_cpdm.py speed [--threads 2] [--steps 1,5,10,20] [--batch 1,8]
    .venv/bin/python benchmarks/bench_cpdm.py quality --model RUN/model --data DATASET [--split test]
        [--slices 32] [--steps 1,2,5,10,20,50,200]

Speed uses the default CPDM configuration with random weights (timing does not depend on the values) and
counts the whole translate: CT encoding, the maps, the denoiser steps, decoding. Also prints the denoiser's
parameter count and the cost of one denoiser call next to the public CPDM configuration. Asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import numpy as np
import torch


def _default_cpdm(pixel_size: int = 256):
    from petsynth.methods.cpdm import CPDM, CPDMConfig
    from petsynth.nn.autoencoder import VQAutoencoderConfig
    from petsynth.nn.segmenter import SegmenterConfig

    cfg = CPDMConfig(autoencoder=VQAutoencoderConfig(), segmenter=SegmenterConfig())
    return CPDM(cfg, load_parts=False).eval()


def _batch(n: int, size: int = 256) -> dict:
    from petsynth.data.batch import add_mu_map

    ct = torch.full((n, 1, size, size), -1000.0)
    ct[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 40.0
    batch = {"source": ct, "kvp": torch.full((n,), 120.0)}
    return add_mu_map(batch, "ct2pet")


def _time(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def speed(args) -> None:
    from petsynth.nn.denoiser import DenoiserConfig, build_denoiser, count_parameters

    torch.set_num_threads(args.threads)
    method = _default_cpdm()
    print(f"threads {args.threads}; denoiser {count_parameters(method.denoiser) / 1e6:.2f} M parameters "
          f"(public CPDM: {count_parameters(build_denoiser(DenoiserConfig.preset('cpdm-public'))) / 1e6:.1f} M)")
    for precision in ("fp32", "bf16"):
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
        x = torch.randn(1, method.denoiser.conv_in.conv.in_channels, 64, 64)
        t = torch.full((1,), 500)
        with torch.no_grad(), ctx():
            one = _time(lambda: method.denoiser(x, t), repeats=5)
        print(f"{precision}: one denoiser call at batch 1 (64x64 latent): {one * 1e3:.1f} ms")
        if precision not in args.translate_precisions:
            continue
        for n in args.batch:
            batch = _batch(n)
            for steps in args.steps:
                with torch.no_grad(), ctx():
                    sec = _time(lambda: method.translate(batch, steps=steps), repeats=2)
                print(f"{precision} batch {n:2d} steps {steps:3d}: {sec / n:.3f} s per slice "
                      f"({sec:.2f} s per batch)")


def quality(args) -> None:
    from petsynth.data.store import open_dataset
    from petsynth.methods import load_method
    from petsynth.metrics.image import mae, psnr, ssim

    torch.set_num_threads(args.threads)
    method = load_method(args.model)
    data = open_dataset(args.data).split(args.split)
    picks = np.linspace(0, len(data) - 1, min(args.slices, len(data))).round().astype(int)
    collate = method.collate()
    rng = method.validation_range()
    print(f"{args.model} on {len(picks)} {args.split} slices of {args.data}; data range {rng:g} SUV")
    print("| sampler | steps | SSIM | PSNR (dB) | MAE (SUV) | s/slice |")
    print("|---|---:|---:|---:|---:|---:|")
    runs = [("deterministic", 0.0, s) for s in args.steps] + [("stochastic", 1.0, s) for s in args.stochastic]
    if not getattr(method.config, "pixel_space", True):
        runs.insert(0, ("autoencoder ceiling", None, 0))  # decode(encode(real PET)): the best a latent model can do
    for label, eta, steps in runs:
        scores = {"ssim": [], "psnr": [], "mae": []}
        t0 = time.perf_counter()
        for b0 in range(0, len(picks), args.batch_size):
            batch = collate([data[int(i)] for i in picks[b0:b0 + args.batch_size]])
            gen = torch.Generator().manual_seed(0)
            if eta is None:
                t = method.intensity_transforms()["target"]
                with torch.no_grad():
                    pred = t.inverse(method.decode(method.encode(t.forward(batch["target"]))))
            else:
                pred = method.translate(batch, steps=steps, eta=eta, generator=gen)
            ref = batch["target"]
            scores["ssim"] += ssim(pred, ref, data_range=rng).tolist()
            scores["psnr"] += psnr(pred, ref, data_range=rng).tolist()
            scores["mae"] += mae(pred, ref, data_range=rng).tolist()
        sec = (time.perf_counter() - t0) / len(picks)
        print(f"| {label} | {steps} | {np.mean(scores['ssim']):.4f} | {np.mean(scores['psnr']):.2f} | "
              f"{np.mean(scores['mae']):.4f} | {sec:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    p = sub.add_parser("speed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=ints, default=[1, 5, 10, 20])
    p.add_argument("--batch", type=ints, default=[1, 8])
    p.add_argument("--translate-precisions", default="fp32",
                   help="precisions of the whole-translate timings (bf16 is ~100x slower on CPUs without bf16)")
    p = sub.add_parser("quality")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=ints, default=[1, 2, 5, 10, 20, 50])
    p.add_argument("--stochastic", type=ints, default=[200])
    args = parser.parse_args()
    speed(args) if args.what == "speed" else quality(args)


if __name__ == "__main__":
    main()

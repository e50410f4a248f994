"""Time petsynth.metrics on a batch of 256x256 images (CPU, and CUDA when present).

    python benchmarks/bench_metrics.py [--batch 8] [--size 256] [--threads 1]

Prints milliseconds per call (median of 5) for each metric; LPIPS is timed with random weights
(its speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from petsynth import metrics


def _time(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return 1000 * statistics.median(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        gen = torch.Generator().manual_seed(0)
        target = torch.rand(args.batch, 1, args.size, args.size, generator=gen).to(device)
        pred = (target + 0.05 * torch.randn(target.shape, generator=gen).to(device)).clamp(0, 1)
        net = metrics.LPIPS("alex", pretrained=False).to(device)
        to3 = lambda x: (2 * x - 1).expand(-1, 3, -1, -1)  # noqa: E731
        cases = {
            "mae": lambda: metrics.mae(pred, target, data_range=1.0),
            "psnr": lambda: metrics.psnr(pred, target, data_range=1.0),
            "ssim": lambda: metrics.ssim(pred, target, data_range=1.0),
            "ssim cpdm": lambda: metrics.ssim(pred, target, data_range=1.0, convention="cpdm"),
            "ms_ssim": lambda: metrics.ms_ssim(pred, target, data_range=1.0),
            "vif": lambda: metrics.vif(pred, target, data_range=1.0),
            "lpips alex": lambda: net(to3(pred), to3(target)),
        }
        for name, fn in cases.items():
            with torch.no_grad():
                ms = _time(fn)
            print(f"{device:5s} {name:11s} B={args.batch} {args.size}x{args.size}: {ms:8.1f} ms")


if __name__ == "__main__":
    main()

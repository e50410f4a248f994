"""Speed of the projector (forward, adjoint, FBP, one MLEM iteration) and of HU -> mu, next to
scikit-image's numpy ``radon``/``iradon`` as a reference. Prints a table; asserts nothing.

    .venv/bin/python benchmarks/bench_physics.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from petsynth.physics import ParallelProjector, fbp, hu_to_mu, mlem


def timed(fn, repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    print(f"{'N':>4} {'views':>5} {'batch':>5} {'forward ms/slice':>17} {'back ms/slice':>14} "
          f"{'FBP ms/slice':>13} {'MLEM it ms/slice':>17}")
    for n, batch in ((128, 1), (128, 32), (256, 1), (256, 16)):
        proj = ParallelProjector(n, n)
        x = torch.rand(batch, n, n) * proj.fov_mask()
        sino = proj.forward(x)
        t_f = timed(lambda: proj.forward(x)) / batch * 1e3
        t_b = timed(lambda: proj.back(sino)) / batch * 1e3
        t_fbp = timed(lambda: fbp(proj, sino, "hann")) / batch * 1e3
        t_ml = timed(lambda: mlem(proj, sino, iterations=1), repeat=1) / batch * 1e3
        print(f"{n:>4} {n:>5} {batch:>5} {t_f:>17.1f} {t_b:>14.1f} {t_fbp:>13.1f} {t_ml:>17.1f}")
    try:
        from skimage.transform import iradon, radon
    except ImportError:
        print("scikit-image not installed: reference timings skipped")
    else:
        for n in (128, 256):
            img = (np.random.rand(n, n) * ParallelProjector(n).fov_mask().numpy()).astype(np.float64)
            theta = np.arange(n) * 180.0 / n
            s = radon(img, theta, circle=True)
            t_r = timed(lambda: radon(img, theta, circle=True)) * 1e3
            t_i = timed(lambda: iradon(s, theta, circle=True, filter_name="hann")) * 1e3
            print(f"scikit-image N={n}: radon {t_r:.1f} ms/slice, iradon (FBP) {t_i:.1f} ms/slice")
    hu = torch.rand(16, 1, 256, 256) * 3000 - 1000
    t_mu = timed(lambda: hu_to_mu(hu, 117.0, "bilinear")) * 1e3
    t0 = time.perf_counter()
    ParallelProjector(160, 160)
    print(f"system matrix build for N=160, 160 views (once per process): {time.perf_counter() - t0:.1f} s")
    print(f"hu_to_mu bilinear, 16 x 256 x 256 at 117 kVp: {t_mu:.1f} ms")


if __name__ == "__main__":
    main()

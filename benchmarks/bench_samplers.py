"""NFE and wall time of every sampler of petsynth.diffusion for one slice with the ``small`` denoiser.

The denoiser is untrained (the cost of a sampler does not depend on its weights): MONAI's DiffusionModelUNet,
preset ``small``, 2 input channels (the state + one condition channel, as a pixel-space JDAM or LDM sees)
and 1 output, on a (1, 2, SIZE, SIZE) input. Each sampler runs once after a warm-up forward; the NFE is the
count the sampler itself reports. Prints a Markdown table; asserts nothing.

    .venv/bin/python benchmarks/bench_samplers.py [--size 128] [--threads 2] [--only pc,ode]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from petsynth.diffusion import VESDE, BrownianBridge, GaussianDiffusion, samplers
from petsynth.nn.denoiser import DenoiserConfig, build_denoiser, count_parameters

#: (row name, sampler, process, steps, options): the methods' defaults and the papers' settings.
RUNS = [
    ("bridge_deterministic", "bridge_deterministic", "bridge", 10, {}),  # cpdm's default
    ("bridge_stochastic", "bridge_stochastic", "bridge", 10, {}),
    ("bridge_stochastic (paper)", "bridge_stochastic", "bridge", 200, {}),  # CPDM: 200 sampling steps
    ("ddim", "ddim", "gaussian", 50, {"eta": 0.0}),  # ldm's default
    ("ode (Heun)", "ode", "ve", 18, {}),
    ("reverse_diffusion", "reverse_diffusion", "ve", 1000, {}),
    ("langevin", "langevin", "ve", 1000, {"snr": 0.16}),
    ("pc", "pc", "ve", 100, {"snr": 0.16}),
    ("pc (JDAM)", "pc", "ve", 1000, {"snr": 0.075, "corrector_steps": 1}),  # JDAM's public config
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated sampler names to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = DenoiserConfig.preset("small", in_channels=2, out_channels=1)
    net = build_denoiser(cfg).eval()
    cond = torch.randn(1, 1, args.size, args.size)
    processes = {"bridge": BrownianBridge(1000), "gaussian": GaussianDiffusion(1000), "ve": VESDE(0.01, 348.0, 1000)}

    def model_fn(x, time):
        return net(torch.cat([x, cond], dim=1), time.float())

    with torch.inference_mode():
        model_fn(cond, torch.zeros(1))  # warm-up
        t0 = time.perf_counter()
        for _ in range(5):
            model_fn(cond, torch.zeros(1))
        per_call = (time.perf_counter() - t0) / 5
    print(f"denoiser small ({count_parameters(net) / 1e6:.2f} M parameters), input (1, 2, {args.size}, {args.size}), "
          f"{args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}: "
          f"{per_call * 1e3:.0f} ms per network call")
    print("| sampler | process | steps | options | NFE | wall s | s per NFE |")
    print("|---|---|---:|---|---:|---:|---:|")
    only = {s for s in args.only.split(",") if s}
    for row, name, process, steps, options in RUNS:
        if only and name not in only:
            continue
        info: dict = {}
        start = cond if process == "bridge" else (1, 1, args.size, args.size)
        t0 = time.perf_counter()
        with torch.inference_mode():
            samplers.SAMPLERS[name](processes[process], model_fn, start, steps, generator=torch.Generator().manual_seed(0),
                                    info=info, **options)
        wall = time.perf_counter() - t0
        opts = ", ".join(f"{k}={v}" for k, v in options.items()) or "-"
        print(f"| {row} | {process} | {steps} | {opts} | {info['nfe']} | {wall:.1f} | {wall / info['nfe']:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()

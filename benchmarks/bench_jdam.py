"""Speed and quality of a trained jdam (or sde) model against its sampler and NFE, on held-out slices.

For each sampler setting: seconds per slice (batches of --batch-size, this machine), the NFE the model made
per slice (counted at its network), and PSNR, SSIM (data range 20 SUV, Gaussian 11x11: the SUV convention of
``petsynth evaluate``) and MAE in SUV against the phantom's noise-free truth and against the reconstructed
(noisy) PET. The slices are the --slices with the most tracer in the truth (brain, not air), the same for
every setting; the sampler noise has the same seed. Prints a Markdown table; asserts nothing.

    .venv/bin/python benchmarks/bench_jdam.py --model runs/jdam/model --data data/mr2pet-heldout \\
        [--slices 8] [--threads 2] [--settings "pc:1000,pc:100,ode:50,ode:25,ode:10,ode:5"]

``--network-cost PRESET[,PRESET]`` instead times one network evaluation of denoiser presets (random weights,
2 -> 1 channels, 128x128, batches of 1 and 8): what one NFE costs at the public code's scale
(``ncsnpp-public``) against the CPU default (``jdam-cpu``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from petsynth.data.store import open_dataset
from petsynth.inference import PredictOptions, load_model, predict_items
from petsynth.metrics import mae, psnr, ssim
from petsynth.nn.denoiser import DenoiserConfig, build_denoiser

WINDOW_SUV = 20.0


def network_cost(presets: str, repeats: int = 3) -> None:
    """Seconds per network evaluation of each denoiser preset at 128x128, batch 1 and 8 (median of repeats)."""
    print("| preset | parameters | s / evaluation, batch 1 | s / evaluation, batch 8 | s / slice / NFE, batch 8 |")
    print("|---|---:|---:|---:|---:|")
    for name in presets.split(","):
        config = DenoiserConfig.preset(name).model_copy(update={"in_channels": 2, "out_channels": 1})
        net = build_denoiser(config).eval()
        params = sum(p.numel() for p in net.parameters())
        row = []
        for batch in (1, 8):
            x = torch.randn(batch, 2, 128, 128)
            t = torch.full((batch,), 500, dtype=torch.long)
            with torch.no_grad():
                net(x, t)  # warm-up
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    net(x, t)
                    times.append(time.perf_counter() - t0)
            row.append(float(np.median(times)))
        print(f"| {name} | {params / 1e6:.2f} M | {row[0]:.3f} | {row[1]:.3f} | {row[1] / 8:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--data", help="a prepared mr2pet dataset with phantom truth")
    parser.add_argument("--network-cost", metavar="PRESETS", help="time denoiser presets instead (see above)")
    parser.add_argument("--split", default=None, help="train/val/test (default: all studies)")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", default="pc:1000,pc:100,ode:50,ode:25,ode:10,ode:5",
                        help="sampler:steps[:option=value...] items (pc:1000 = the seed's 2000-NFE predictor-corrector)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.network_cost:
        network_cost(args.network_cost)
        return
    if not (args.model and args.data):
        parser.error("--model and --data are needed (or --network-cost)")
    method = load_model(args.model)
    data = open_dataset(args.data, args.split)
    mass = [float(np.asarray(data[i]["truth"]).sum()) for i in range(len(data))]
    picks = sorted(np.argsort(mass)[::-1][: args.slices].tolist())
    items = [data[i] for i in picks]
    truth = torch.from_numpy(np.stack([it["truth"] for it in items]))[:, None].double()
    real = torch.from_numpy(np.stack([it["target"] for it in items]))[:, None].double()
    calls = []
    method.denoiser.register_forward_pre_hook(lambda mod, a: calls.append(a[0].shape[0]))
    print(f"model {args.model} ({method.name}, {method.card.parameters.get('denoiser', 0) / 1e6:.2f} M parameters), "
          f"{len(items)} slices of {len({it['study'] for it in items})} held-out studies, batch {args.batch_size}, "
          f"{args.threads} threads")
    print("| sampler | steps | NFE | s / slice | PSNR truth | SSIM truth | MAE truth [SUV] | PSNR real | SSIM real "
          "| MAE real [SUV] |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for setting in args.settings.split(","):
        name, steps, *extra = setting.split(":")
        sampler_options = {"sampler": name, "steps": int(steps)}
        for item in extra:  # further sampler options, e.g. ode:10:rho=3 or pc:25:snr=0.16
            key, _, value = item.partition("=")
            sampler_options[key] = float(value) if "." in value else int(value)
        options = PredictOptions(batch_size=args.batch_size, seed=0, sampler=sampler_options)
        calls.clear()
        t0 = time.perf_counter()
        pred = torch.cat([p for _, p in predict_items(method, items, options=options)]).double()
        seconds = (time.perf_counter() - t0) / len(items)
        nfe = sum(calls) / len(items)
        row = []
        for ref in (truth, real):
            row += [float(psnr(pred, ref, data_range=WINDOW_SUV).mean()),
                    float(ssim(pred, ref, data_range=WINDOW_SUV).mean()),
                    float(mae(pred, ref, data_range=WINDOW_SUV).mean())]
        label = ", ".join([name, *extra])
        print(f"| {label} | {steps} | {nfe:.0f} | {seconds:.2f} | {row[0]:.2f} | {row[1]:.4f} | {row[2]:.4f} | "
              f"{row[3]:.2f} | {row[4]:.4f} | {row[5]:.4f} |", flush=True)


if __name__ == "__main__":
    main()

"""Why the bridge's stochastic sampler (eta = 1, CPDM's Algorithm 2) and the deterministic one (eta = 0) differ
for a trained latent CPDM/BBDM: measurements, not assertions.

On --slices evenly spaced slices of a prepared ct2pet dataset with phantom labels it prints:

1. the latent's scale: x0 = encode(PET) and y = encode(CT) against the bridge's peak noise sqrt(max_var / 2);
2. the body SUVmean (labels > 0) of the truth, of decode(encode(real PET)) (the autoencoder's ceiling), and of
   each sampler's output, decoded with and without snapping to the codebook;
3. an oracle (the exact objective of the real PET's latent) through both samplers: the sampler maths alone;
4. along each 10-step sampler: the noise the visited state carries relative to the training path,
   (x_t - (1 - m_t) x0 - m_t y) / sqrt(delta_t) (about 1 on the path the network was trained on), and the
   slope of x0_hat against x0 (1: no shrinkage towards the latent mean; the latent mean decodes to air);
5. the network on its training path: x0_hat from x_t ~ q(x_t | x0, y) at several t, slope and body SUVmean.

    .venv/bin/python benchmarks/bench_bridge_eta.py --model phantom-cpdm --data data/ct2pet-heldout \\
        [--slices 16] [--threads 2]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from petsynth.data.store import open_dataset
from petsynth.diffusion import samplers
from petsynth.evaluate import select_slices
from petsynth.inference import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="phantom-cpdm")
    parser.add_argument("--data", required=True, help="a prepared ct2pet dataset with phantom truth and labels")
    parser.add_argument("--split", default=None)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    method = load_model(args.model).eval()
    if method.config.pixel_space:
        parser.error("this diagnosis is for latent bridges (pixel_space: false)")
    bridge, transforms, autoencoder = method.bridge, method.config.transforms, method.autoencoder
    data = open_dataset(args.data, args.split)
    items = [data[i] for i in select_slices(len(data), args.slices)]
    batch = method.collate()(items)
    body = torch.from_numpy(np.stack([it["labels"] for it in items]))[:, None] > 0
    truth = torch.from_numpy(np.stack([it["truth"] for it in items]))[:, None]

    def decoded_suv(z: torch.Tensor, snap: bool = True) -> float:
        saved = autoencoder.cfg.quantize_on_decode
        autoencoder.cfg.quantize_on_decode = snap
        try:
            return float(transforms["target"].inverse(method.decode(z).float())[body].mean())
        finally:
            autoencoder.cfg.quantize_on_decode = saved

    with torch.no_grad():
        y = method.encode(method._ct_network(batch["source"]))
        maps = method.maps(batch)
        model_fn = method._model_fn(method.map_encoder(maps) if maps is not None else None)
        x0 = method.encode(transforms["target"].forward(batch["target"]))
        mean = x0.mean(dim=(0, 2, 3), keepdim=True)

        def slope(z: torch.Tensor) -> float:
            d = x0 - mean
            return float(((z - mean) * d).sum() / (d * d).sum())

        print(f"model {args.model}, {len(items)} slices of {len({it['study'] for it in items})} studies")
        print(f"latent: x0 std {x0.std():.3f} (mean {x0.mean():+.3f}), y std {y.std():.3f}, rms(y - x0) "
              f"{(y - x0).pow(2).mean().sqrt():.3f}; bridge peak noise std {np.sqrt(bridge.max_var / 2):.3f}")
        print(f"body SUVmean: truth {float(truth[body].mean()):.3f}, decode(encode(real PET)) "
              f"{decoded_suv(x0):.3f} (no codebook snap {decoded_suv(x0, False):.3f})")
        print("\n| model | eta | steps | body SUVmean | without codebook snap | slope of x0_hat on x0 |")
        print("|---|---:|---:|---:|---:|---:|")
        oracle = lambda x, t: x - x0  # noqa: E731  (the exact "grad" objective of the real PET's latent)
        runs = [("network", model_fn, eta, steps) for eta, steps in ((0.0, 10), (1.0, 10), (0.0, 200), (1.0, 200))]
        runs += [("oracle", oracle, eta, 10) for eta in (0.0, 1.0)]
        traces = {}
        for name, fn, eta, steps in runs:
            trace: list = []
            out = samplers.bridge(bridge, fn, y, steps, eta=eta, generator=torch.Generator().manual_seed(0),
                                  callback=lambda s, trace=trace: trace.append((s["t"], s["x"], s["x0_hat"])))
            traces[(name, eta, steps)] = trace
            print(f"| {name} | {eta:g} | {steps} | {decoded_suv(out):.3f} | {decoded_suv(out, False):.3f} | "
                  f"{slope(out):.3f} |")

        print("\nAlong the 10-step samplers (network): noise of the visited state relative to the training path, "
              "and the slope of x0_hat")
        print("\n| t | eta 0: state noise | eta 0: slope | eta 1: state noise | eta 1: slope |")
        print("|---:|---:|---:|---:|---:|")
        for (t, x_a, z_a), (_, x_b, z_b) in zip(traces[("network", 0.0, 10)], traces[("network", 1.0, 10)]):
            m, sd = float(bridge.m_t[t]), float(bridge.variance_t[t]) ** 0.5
            noise = [float(((x - (1 - m) * x0 - m * y) / sd).std()) for x in (x_a, x_b)]
            print(f"| {t} | {noise[0]:.3f} | {slope(z_a):.3f} | {noise[1]:.3f} | {slope(z_b):.3f} |")

        print("\nThe network on its training path, x_t ~ q(x_t | x0, y):\n")
        print("| t | slope of x0_hat | decoded body SUVmean |")
        print("|---:|---:|---:|")
        generator = torch.Generator().manual_seed(1)
        for t in (999, 750, 500, 250, 100, 0):
            tv = torch.full((y.shape[0],), min(t, bridge.num_timesteps - 1), dtype=torch.long)
            x_t, _ = bridge.q_sample(x0, tv, y=y, generator=generator)
            x0_hat = bridge.predict_x0(x_t, tv, model_fn(x_t, tv), y=y)
            print(f"| {int(tv[0])} | {slope(x0_hat):.3f} | {decoded_suv(x0_hat):.3f} |")


if __name__ == "__main__":
    main()

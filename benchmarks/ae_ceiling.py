"""The autoencoder ceiling per organ: the best a latent CT -> PET model can do is decode(encode(real PET)).

    python benchmarks/ae_ceiling.py --data heldout-ds --models phantom-cpdm runs/cpdm/model runs/vqgan/model \\
        [--split test] [--max-slices 96]

For each model with an autoencoder (a latent cpdm / bbdm / ldm, or a vqgan run), the real PET of evenly spaced
slices of a prepared dataset with labels goes through the model's PET transform, encoder and decoder, back to
SUV; the table gives per organ (and for the lesions, SUVmax) the truth's value (or the real PET's when the
dataset has no truth), the real PET's and each reconstruction's, with its bias against the truth. Asserts
nothing; the figures go in notes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from petsynth.data.store import open_dataset  # noqa: E402
from petsynth.evaluate import select_slices  # noqa: E402
from petsynth.inference import load_model, model_name, resolve_model  # noqa: E402
from petsynth.methods import load_method  # noqa: E402


@torch.no_grad()
def reconstruct(model, pet_suv: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """decode(encode(PET)) in SUV, (N, H, W), through the model's PET transform and autoencoder."""
    if hasattr(model, "reconstruct"):  # a vqgan run
        run = lambda x: model.reconstruct(x, "target")  # noqa: E731
    else:
        t = model.config.transforms["target"]
        run = lambda x: t.inverse(model.decode(model.encode(t.forward(x))).float())  # noqa: E731
    out = [run(pet_suv[i:i + batch_size, None])[:, 0] for i in range(0, pet_suv.shape[0], batch_size)]
    return torch.cat(out).numpy()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--split", default=None)
    ap.add_argument("--max-slices", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = open_dataset(args.data, args.split)
    items = [data[i] for i in select_slices(len(data), args.max_slices)]
    labels = np.stack([it["labels"] for it in items])
    real = np.stack([it["target"] for it in items]).astype(np.float32)
    ref = np.stack([it["truth"] for it in items]) if "truth" in items[0] else real
    images = {"real PET": real}
    for spec in args.models:
        path = resolve_model(spec)  # a vqgan run's model is a part: load_method, not load_model
        model = load_method(path) if (path / "card.yaml").read_text().startswith("method: vqgan") else load_model(spec)
        images[model_name(spec)] = reconstruct(model.eval(), torch.from_numpy(real))
    tables = {}
    for it in items:
        tables.setdefault(it["study"], data.label_table(it["study"]))
    names: dict[str, list[int]] = {}
    for rows in tables.values():
        for row in rows:
            names.setdefault("lesions" if row["kind"] == "lesion" else row["name"], []).append(int(row["label"]))
    ref_name = "truth" if ref is not real else "real PET"
    print(f"{len(items)} slices of {len(tables)} studies ({args.data}); against the {ref_name}")
    print(f"| region | {ref_name} | " + " | ".join(f"{n} | bias" for n in images) + " |")
    print("|---|---:|" + "---:|---:|" * len(images))
    for name, ids in names.items():
        mask = np.isin(labels, ids)
        if mask.sum() < 20 or name in ("table_shell", "table_core"):
            continue
        stat = np.max if name == "lesions" else np.mean
        truth = float(stat(ref[mask]))
        cells = [f"{float(stat(v[mask])):.2f} | {100 * (float(stat(v[mask])) / truth - 1):+.0f} %" for v in images.values()]
        print(f"| {name}{' (SUVmax)' if name == 'lesions' else ''} | {truth:.2f} | " + " | ".join(cells) + " |")
    body = labels > 0
    print("| body MAE (SUV) | | " + " | ".join(f"{np.abs(v - ref)[body].mean():.3f} | " for v in images.values()) + "|")


if __name__ == "__main__":
    main()

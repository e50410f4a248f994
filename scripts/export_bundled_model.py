"""Export a trained model as a bundled package model (``petsynth/models/<name>/``): one set of weights (the
EMA weights where kept), stored as float16 to halve the size, parts' checkpoint paths removed from the card,
and the card's notes saying how it was trained.

    python scripts/export_bundled_model.py /work/runs/cpdm/model petsynth/models/phantom-cpdm \\
        --notes-file petsynth/models/phantom-cpdm.notes.txt --set-data size=128 --set-data spacing_mm=[5.9162,5.9162]

Loading casts the float16 weights back into the float32 networks (``load_state_dict`` copies with a cast).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from petsynth.train.checkpoint import load_checkpoint, save_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a trained model folder (RUN/model)")
    parser.add_argument("dest", type=Path, help="the bundled model folder to write")
    parser.add_argument("--notes-file", type=Path, help="text for the card's notes (how it was trained)")
    parser.add_argument("--set-data", action="append", default=[], help="KEY=YAML entries for the card's data")
    parser.add_argument("--fp32", action="store_true", help="keep float32 weights")
    args = parser.parse_args()

    ckpt = load_checkpoint(args.source)
    state = ckpt.model_state(use_ema=True)
    dtype = torch.float32 if args.fp32 else torch.float16
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    card = ckpt.card
    config = dict(card.config)
    for key in ("autoencoder_checkpoint", "segmenter_checkpoint"):
        if key in config:
            config[key] = None
    data = dict(card.data)
    for item in args.set_data:
        key, _, value = item.partition("=")
        data[key] = yaml.safe_load(value)
    notes = args.notes_file.read_text() if args.notes_file else card.notes
    card = card.model_copy(update={"config": config, "data": data, "notes": notes, "training": {}})
    save_checkpoint(args.dest, card, {"model": state}, overwrite=True)
    size = sum(f.stat().st_size for f in args.dest.iterdir())
    print(f"wrote {args.dest} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

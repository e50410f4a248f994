"""Many kill -9s (``tests/kill_harness.py``): prepare of tiny phantom studies killed and resumed, translate
killed and run again, train killed and resumed, each at random moments. Prints the kills and every problem.
Asserts nothing. A part with 0 kills is skipped.

    .venv/bin/python benchmarks/kill_runs.py [--prepare-kills 30] [--translate-kills 20] [--train-kills 20]
        [--train-steps 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kill_harness import kill_prepare, kill_train, kill_translate  # noqa: E402

from petsynth.data.prepare import prepare_dataset  # noqa: E402
from petsynth.phantom import write_studies  # noqa: E402


def report(part: str, start: float, line: str, problems: list[str]) -> None:
    print(f"{part}: {line}: {len(problems)} problems ({time.perf_counter() - start:.0f} s)", flush=True)
    for p in problems:
        print("  ", p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare-kills", type=int, default=30)
    parser.add_argument("--translate-kills", type=int, default=20)
    parser.add_argument("--train-kills", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="petsynth_kill_"))
    raw = work / "raw"
    write_studies(raw, task="ct2pet", studies=4, seed=71, fmt="dicom", preset="tiny")
    key = work / "key"
    key.write_text("kill-runs-key")
    prepare_dataset([raw], work / "ref", "ct2pet", size=32, key_file=key)
    if args.prepare_kills:
        start = time.perf_counter()
        (work / "prepare").mkdir()
        killed, problems = kill_prepare(raw, work / "prepare", work / "ref", key, args.prepare_kills, args.seed)
        report("prepare", start, f"{args.prepare_kills} runs, {killed} killed mid-run, then resumed", problems)
    if args.translate_kills:
        start = time.perf_counter()
        (work / "translate").mkdir()
        study = next(p for p in raw.iterdir() if p.is_dir()) / "CT"
        killed, problems = kill_translate(study, work / "translate", args.translate_kills, args.seed)
        report("translate", start, f"{args.translate_kills} runs, {killed} killed mid-run", problems)
    if args.train_kills:
        start = time.perf_counter()
        (work / "train").mkdir()
        counts = Counter()
        killed, problems = kill_train(work / "ref", work / "train", args.train_kills, args.seed,
                                      steps=args.train_steps, counts=counts)
        report("train", start, f"{counts['runs']} runs, "
               f"{killed} killed mid-run, {counts['from_checkpoint']} resumed from a checkpoint, "
               f"{counts['completed']} completed, {counts['hidden_left']} temporary entries left in them", problems)


if __name__ == "__main__":
    main()

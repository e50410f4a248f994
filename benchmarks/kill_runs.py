"""Many kill -9s (``tests/kill_harness.py``): prepare of tiny phantom studies killed and resumed, translate
killed and run again, each at random moments. Prints the kills and every problem. Asserts nothing.

    .venv/bin/python benchmarks/kill_runs.py [--prepare-kills 30] [--translate-kills 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kill_harness import kill_prepare, kill_translate  # noqa: E402

from petsynth.data.prepare import prepare_dataset  # noqa: E402
from petsynth.phantom import write_studies  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare-kills", type=int, default=30)
    parser.add_argument("--translate-kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="petsynth_kill_"))
    raw = work / "raw"
    write_studies(raw, task="ct2pet", studies=4, seed=71, fmt="dicom", preset="tiny")
    key = work / "key"
    key.write_text("kill-runs-key")
    prepare_dataset([raw], work / "ref", "ct2pet", size=32, key_file=key)
    start = time.perf_counter()
    (work / "prepare").mkdir()
    killed, problems = kill_prepare(raw, work / "prepare", work / "ref", key, args.prepare_kills, args.seed)
    print(f"prepare: {args.prepare_kills} runs, {killed} killed mid-run, then resumed: {len(problems)} problems "
          f"({time.perf_counter() - start:.0f} s)")
    for p in problems:
        print("  ", p)
    start = time.perf_counter()
    (work / "translate").mkdir()
    study = next(p for p in raw.iterdir() if p.is_dir()) / "CT"
    killed, problems = kill_translate(study, work / "translate", args.translate_kills, args.seed)
    print(f"translate: {args.translate_kills} runs, {killed} killed mid-run: {len(problems)} problems "
          f"({time.perf_counter() - start:.0f} s)")
    for p in problems:
        print("  ", p)


if __name__ == "__main__":
    main()

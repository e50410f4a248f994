"""Translate time of the demo on an idle and on a busy machine, by torch thread count.

Runs ``petsynth demo`` (phantom, bundled model) several times, each in a fresh process, and prints the
translation's seconds: with torch's threads chosen by petsynth (the default), with 1 thread and with one per
core, first on an idle machine, then while another process keeps one core busy. Asserts nothing.

    python benchmarks/bench_threads.py [--preset small]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BURNER = "while True: pass"


def demo_seconds(threads: int | None, preset: str) -> tuple[float, float, int]:
    """(translation seconds, whole demo seconds, torch threads used) of one ``petsynth demo`` in a new
    process."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "petsynth.cli", "demo", "--out", tmp, "--preset", preset]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        subprocess.run(cmd, check=True, capture_output=True)
        report = json.loads((Path(tmp) / "metrics.json").read_text())
        used = json.loads((Path(tmp) / "synthetic" / "translate.json").read_text())["options"]["threads"]
    return report["translate_seconds"], report["seconds"], used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    demo_seconds(None, args.preset)  # warm the file cache
    print(f"demo ({args.preset} phantom), {cores} cores: translation s / whole demo s (threads used)")
    for busy in (False, True):
        burner = subprocess.Popen([sys.executable, "-c", BURNER]) if busy else None
        try:
            for label, threads in (("default (chosen)", None), ("1 thread", 1), (f"{cores} threads", cores)):
                t, whole, used = demo_seconds(threads, args.preset)
                print(f"  {'one core busy' if busy else 'idle':>13} | {label:>16}: {t:6.1f} / {whole:6.1f} ({used})")
        finally:
            if burner is not None:
                burner.kill()


if __name__ == "__main__":
    main()

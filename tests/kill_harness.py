"""kill -9 anywhere: run a petsynth command in a subprocess, SIGKILL it after a delay, check what it left, run
it again; repeat. Used by ``tests/test_kill.py`` (a few kills) and ``benchmarks/kill_runs.py`` (many).

What must hold after every kill: nothing that looks complete but is not. A dataset's study folder (not hidden)
is byte for byte the uninterrupted run's; a translate output folder is absent or whole (it holds
``translate.json``). After the last run, the result equals the uninterrupted one.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path


def cli(*args) -> list[str]:
    """The command line of ``petsynth ARGS`` in this Python."""
    return [sys.executable, "-m", "petsynth.cli", *map(str, args)]


def run_and_kill(command: list[str], delay_s: float) -> bool:
    """Run ``command``; SIGKILL it after ``delay_s`` seconds if it still runs. True when it was killed."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        proc.wait(timeout=delay_s)
        return False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def tree(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - start


def kill_prepare(inputs: Path, work: Path, reference: Path, key_file: Path, kills: int, seed: int) -> tuple[int, list[str]]:
    """Prepare ``inputs`` into ``work/ds``, killed ``kills`` times at random moments (``seed``) and resumed; returns
    (how many runs were really killed, problems found). ``reference``: the uninterrupted dataset."""
    rng = random.Random(seed)
    ref_studies = tree(reference / "studies")
    out = work / "ds"
    base = cli("prepare", inputs, "--out", out, "--size", "32", "--key-file", key_file)
    duration = timed(cli("prepare", inputs, "--out", work / "timing", "--size", "32", "--key-file", key_file))
    problems, killed = [], 0
    for n in range(kills):
        args = base + (["--resume"] if (out / "dataset.yaml").exists() else [])
        killed += run_and_kill(args, rng.uniform(0.05, 1.0) * duration)
        studies = out / "studies"
        for folder in (studies.iterdir() if studies.is_dir() else []):
            if folder.name.startswith("."):
                continue  # a killed run's temporary folder: never taken for a study
            got = {f"{folder.name}/{k}": v for k, v in tree(folder).items()}
            if any(ref_studies.get(k) != v for k, v in got.items()) or \
                    len(got) != sum(k.startswith(f"{folder.name}/") for k in ref_studies):
                problems.append(f"kill {n}: {folder.name} looks complete but differs from the uninterrupted run")
    subprocess.run(base + (["--resume"] if (out / "dataset.yaml").exists() else []), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if tree(out / "studies") != ref_studies:
        problems.append("the resumed dataset differs from the uninterrupted one")
    if (out / "splits.json").read_bytes() != (reference / "splits.json").read_bytes():
        problems.append("the resumed splits differ")
    return killed, problems


def kill_translate(study: Path, work: Path, kills: int, seed: int, steps: int = 1) -> tuple[int, list[str]]:
    """Translate ``study`` into ``work/t-N``, killed at random moments (``seed``), then again until it
    completes; each killed run must leave no folder or a whole one. Returns (kills, problems)."""
    rng = random.Random(seed)
    duration = timed(cli("translate", "phantom-cpdm", study, "--out", work / "timing", "--steps", steps))
    problems, killed = [], 0
    for n in range(kills):
        out = work / f"t-{n}"
        killed += run_and_kill(cli("translate", "phantom-cpdm", study, "--out", out, "--steps", steps),
                               rng.uniform(0.05, 1.0) * duration)
        if out.exists() and not (out / "translate.json").is_file():
            problems.append(f"kill {n}: {out.name} exists without translate.json")
        leftovers = [p.name for p in work.iterdir() if p.name.startswith(f".{out.name}.")]
        if out.exists() and leftovers:
            problems.append(f"kill {n}: temporary folders beside a finished output: {leftovers}")
    return killed, problems

"""kill -9 anywhere: run a petsynth command in a subprocess, SIGKILL it after a delay, check what it left, run
it again; repeat. Used by ``tests/test_kill.py`` (a few kills) and ``benchmarks/kill_runs.py`` (many).

What must hold after every kill: nothing that looks complete but is not. A dataset's study folder (not hidden)
is byte for byte the uninterrupted run's; a translate output folder is absent or whole (it holds
``translate.json``); a training run folder holds only checkpoints, logs and pictures of the uninterrupted
run's (see :func:`kill_train`). After the last run, the result equals the uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import yaml

from petsynth.train.checkpoint import CheckpointError, load_checkpoint
from petsynth.train.trainer import latest_checkpoint


def cli(*args) -> list[str]:
    """The command line of ``petsynth ARGS`` in this Python."""
    return [sys.executable, "-m", "petsynth.cli", *map(str, args)]


def run_and_kill(command: list[str], delay_s: float, when: Callable[[], bool] | None = None) -> bool:
    """Run ``command``; SIGKILL it ``delay_s`` seconds after its start, or after ``when()`` first held (asked
    every millisecond), if it still runs. True when it was killed."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        while when is not None and not when():
            if proc.poll() is not None:
                return False
            time.sleep(0.001)
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
    # timed twice, the faster kept: a first run may also compile the modules' bytecode, and kills timed by it
    # would come after later runs have ended
    duration = min(timed(cli("prepare", inputs, "--out", work / f"timing{n}", "--size", "32", "--key-file", key_file))
                   for n in range(2))
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
    # the shorter of two runs: the first pays for a cold start, and kills timed by it alone can all come late
    outs = (work / "timing", work / "timing-warm")
    duration = min(timed(cli("translate", "phantom-cpdm", study, "--out", o, "--steps", steps)) for o in outs)
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


# --- train ----------------------------------------------------------------------------------------------
#: a pixel-space CPDM small enough for a step in a tenth of a second on one CPU thread; it draws noise, so
#: an exact resume needs the RNG state as well as the weights, the optimiser and the EMA
TRAIN_CONFIG = {
    "method_config": {"pixel_space": True, "use_attention_map": False, "sample_steps": 3,
                      "denoiser": {"channels": [16, 32], "attention_levels": [False, True],
                                   "num_head_channels": 16, "norm_num_groups": 8}},
    "train": {"batch_size": 4, "checkpoint_every": 3, "keep_checkpoints": 2, "validate_every": 10,
              "val_batches": 1, "log_every": 1, "threads": 1, "seed": 3},
}
_PNG_END = b"IEND\xaeB`\x82"


def timed_until(command: list[str], marker: Path) -> tuple[float, float]:
    """Run ``command`` to its end; (seconds until ``marker`` appeared, seconds in all)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seen = None
    while proc.poll() is None:
        if seen is None and marker.exists():
            seen = time.perf_counter() - start
        time.sleep(0.02)
    total = time.perf_counter() - start
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, command)
    return (total if seen is None else seen), total


def _card(path: Path) -> dict:
    """A model card or run.yaml as a dict, less what legitimately differs from the reference run: the
    creation time and ``keep_checkpoints`` (the reference keeps every checkpoint to compare with)."""
    card = yaml.safe_load(path.read_text(encoding="utf-8"))
    card.pop("created", None)
    run = card.get("training", {}).get("run", card)
    run.get("train", {}).pop("keep_checkpoints", None)
    return card


def _rows(path: Path) -> list[dict]:
    """The rows of a log CSV, less ``sec_per_step`` (a wall-clock figure)."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "sec_per_step"} for row in csv.DictReader(fh)]


def _safetensors(path: Path) -> tuple[dict, bytes]:
    """A safetensors file as (its JSON header, parsed; the tensor bytes). Two runs write the same tensors in
    the same order, but the header's keys in another order: safetensors keeps ``__metadata__`` in a hash map
    whose order changes from process to process."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _checkpoint_problems(out: Path, name: str, reference: Path) -> list[str]:
    """Checkpoint folder ``out/name`` must load and be the reference run's ``name``: the same files, the same
    tensor bytes and header in ``weights.safetensors``, the same card (less its creation time)."""
    folder, ref = out / name, reference / name
    if not ref.is_dir():
        return [f"{name}: the uninterrupted run has no such checkpoint"]
    try:
        load_checkpoint(folder)  # safetensors and yaml.safe_load: nothing unpickled
    except CheckpointError as err:
        return [f"{name} does not load: {err}"]
    if sorted(p.name for p in folder.iterdir()) != sorted(p.name for p in ref.iterdir()):
        return [f"{name}: files {sorted(p.name for p in folder.iterdir())}"]
    if _safetensors(folder / "weights.safetensors") != _safetensors(ref / "weights.safetensors"):
        return [f"{name}: weights differ from the uninterrupted run's"]
    if _card(folder / "card.yaml") != _card(ref / "card.yaml"):
        return [f"{name}: card differs from the uninterrupted run's"]
    return []


def train_run_problems(out: Path, reference: Path) -> list[str]:
    """What a (perhaps killed) training run folder ``out`` may hold, against the uninterrupted ``reference``:

    - every checkpoint and the model, when there, loads and equals the reference's (the tensor bytes of
      ``weights.safetensors`` byte for byte, its header and the card as parsed);
    - ``log.csv`` and ``val.csv`` are a prefix of the reference's rows (less ``sec_per_step``): no
      duplicated, missing or changed step, and every row up to the latest checkpoint (where a resume starts);
    - every picture is a whole PNG, a validation panel the reference's byte for byte;
    - no other file is visible: a killed run's temporary files and folders are hidden (``.NAME...``).
    """
    problems = []
    names = {str(p.relative_to(out)) for p in out.rglob("*")  # tensorboard/: files named by time and host
             if not any(part.startswith(".") for part in p.relative_to(out).parts) and
             p.relative_to(out).parts[0] != "tensorboard"}
    for name in ["model", *sorted(str(p.relative_to(out)) for p in (out / "checkpoints").glob("step_*"))]:
        if (out / name).is_dir():
            problems += _checkpoint_problems(out, name, reference)
    strays = {n for n in names if not (reference / n).exists()}
    problems += [f"{n}: not in the uninterrupted run" for n in sorted(strays)
                 if not n.startswith("checkpoints/step_")]  # those are reported above
    latest = latest_checkpoint(out)
    resumes_at = int(latest.name.split("_")[1]) if latest else 0
    for name in ("log.csv", "val.csv"):
        got, want = _rows(out / name), _rows(reference / name)
        if got != want[:len(got)]:
            i = next(i for i, row in enumerate(got) if i >= len(want) or row != want[i])
            problems.append(f"{name}: row {i + 1} (step {got[i].get('step')}) is not the uninterrupted run's: "
                            f"a duplicated, missing or changed step")
        elif len(got) < sum(int(r["step"]) <= resumes_at for r in want):
            problems.append(f"{name}: misses rows up to step {resumes_at}, the checkpoint a resume starts from")
    for png in sorted(n for n in names if n.endswith(".png")):
        data = (out / png).read_bytes()
        if not data.endswith(_PNG_END):
            problems.append(f"{png}: not a whole PNG")
        elif png.startswith("val/") and (reference / png).exists() and data != (reference / png).read_bytes():
            problems.append(f"{png}: differs from the uninterrupted run's")
    if (out / "run.yaml").exists() and _card(out / "run.yaml") != _card(reference / "run.yaml"):
        problems.append("run.yaml differs from the uninterrupted run's")
    return problems


def train_final_problems(out: Path, reference: Path, keep: int) -> list[str]:
    """What a completed run folder must hold besides :func:`train_run_problems`: the last ``keep``
    checkpoints (the others pruned), every row of the logs, the reference's pictures byte for byte."""
    problems = []
    want = sorted(p.name for p in (reference / "checkpoints").glob("step_*"))[-keep:]
    if sorted(p.name for p in (out / "checkpoints").glob("step_*")) != want:
        problems.append(f"checkpoints {sorted(p.name for p in (out / 'checkpoints').glob('step_*'))}, not {want}")
    for name in ("log.csv", "val.csv"):  # the rows it has are the reference's (train_run_problems)
        if len(_rows(out / name)) != len(_rows(reference / name)):
            problems.append(f"{name}: {len(_rows(out / name))} rows, not {len(_rows(reference / name))}")
    for png in ["curves.png", *(str(p.relative_to(reference)) for p in (reference / "val").glob("*.png"))]:
        if not (out / png).exists() or (out / png).read_bytes() != (reference / png).read_bytes():
            problems.append(f"{png} differs from the uninterrupted run's")
    return problems


def kill_train(data: Path, work: Path, kills: int, seed: int, steps: int = 30,
               counts: Counter | None = None) -> tuple[int, list[str]]:
    """Train :data:`TRAIN_CONFIG` for ``steps`` on the prepared dataset ``data`` into ``work/run-N``, killed
    ``kills`` times at random moments (``seed``) and resumed with ``--resume``; a run that completes is
    checked whole and the next kill starts ``run-N+1``; the last run is resumed to its end. Returns (how many
    runs were really killed, problems found); ``counts`` gets "runs", "from_checkpoint" (runs that started
    from a checkpoint), "completed" and "hidden_left" (temporary entries left in completed runs).

    The reference is an uninterrupted run of the same command that keeps every checkpoint. Half the kills
    land at a random moment between half the reference's start-up (before it, Python is importing: nothing
    is written) and its end: building the method, loading a checkpoint and cutting the logs back, training
    steps, validations, checkpoints, the export. The other half land within 20 ms of a change in
    ``checkpoints/`` (a checkpoint being written, or an old one pruned) after 0-2 checkpoints of the run:
    moments random ones rarely hit.

    Resuming is exact (weights, optimiser, EMA, RNG and step in each checkpoint; the data order a function
    of (seed, step); one CPU thread), so checkpoints and the exported model are compared byte for byte (the
    tensor data; see :func:`_safetensors`), not within rounding; so are the losses and validation scores
    in the logs, and the pictures.
    """
    rng = random.Random(seed)
    counts = Counter() if counts is None else counts
    config = work / "train.yaml"
    config.write_text(yaml.safe_dump({**TRAIN_CONFIG, "train": {**TRAIN_CONFIG["train"], "steps": steps}}))
    reference = work / "reference"

    def command(out: Path) -> list[str]:
        return cli("train", "cpdm", data, "--out", out, "--config", config, "--device", "cpu")

    started, duration = timed_until(command(reference) + ["--set", f"train.keep_checkpoints={steps}"],
                                    reference / "log.csv")
    problems, killed, n_run = [], 0, 0
    out = work / "run-0"
    for n in range(kills):
        counts["runs"] += 1
        counts["from_checkpoint"] += latest_checkpoint(out) is not None
        args = command(out) + (["--resume"] if (out / "run.yaml").exists() else [])
        if rng.random() < 0.5:  # at a random moment
            was_killed = run_and_kill(args, rng.uniform(0.5 * started, duration))
        else:  # while a checkpoint is written or pruned, after 0-2 checkpoints of this run
            was_killed = run_and_kill(args, rng.uniform(0.0, 0.02),
                                      when=_checkpoints_change(out / "checkpoints", after=rng.randint(0, 2)))
        killed += was_killed
        problems += [f"kill {n} ({out.name}): {p}" for p in train_run_problems(out, reference)]
        if not was_killed and not (out / "model").is_dir():
            problems.append(f"run {n} ({out.name}) ended, not killed, without a model")
        if (out / "model").is_dir():
            problems += [f"{out.name}: {p}" for p in _completed(out, reference, counts)]
            n_run += 1
            out = work / f"run-{n_run}"
    if out.exists():
        counts["runs"] += 1
        counts["from_checkpoint"] += latest_checkpoint(out) is not None
        last = subprocess.run(command(out) + ["--resume"], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        problems += [f"{out.name}: {p}" for p in train_run_problems(out, reference)]
        if last.returncode:
            tail = (last.stdout + last.stderr).strip().splitlines()[-1:]
            problems.append(f"{out.name}: the last --resume failed (exit {last.returncode}): {tail}")
        else:
            problems += [f"{out.name}: {p}" for p in _completed(out, reference, counts)]
    return killed, problems


def _checkpoints_change(folder: Path, after: int) -> Callable[[], bool]:
    """A test that holds at the first change of ``folder``'s listing once ``after`` new checkpoints have
    appeared there: a checkpoint being written (a hidden temporary folder) or an old one being pruned."""
    def names() -> set[str]:
        return set(os.listdir(folder)) if folder.is_dir() else set()
    new, last = set(), names()

    def changed() -> bool:
        nonlocal last
        now = names()
        if now == last:
            return False
        ready = len(new) >= after
        new.update(n for n in now - last if not n.startswith("."))
        last = now
        return ready

    return changed


def _completed(out: Path, reference: Path, counts: Counter) -> list[str]:
    counts["completed"] += 1
    counts["hidden_left"] += sum(1 for p in out.rglob(".*"))
    return train_final_problems(out, reference, TRAIN_CONFIG["train"]["keep_checkpoints"])

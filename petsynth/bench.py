"""``petsynth bench``: speed and memory of translation and of dataset preparation on this machine.

- :func:`translate_speed`: slices per second of a model's translate (CT encoding, maps, sampling, decoding)
  at several step counts, on CT slices of a phantom resampled to the model's grid, after one warm-up batch;
  seconds per 250-slice study are 250 divided by that rate (the network time of a study; reading and
  writing are measured separately by :func:`study_translate_time`).
- :func:`study_translate_time`: one whole ``translate`` of a phantom DICOM study, end to end.
- :func:`prepare_speed`: ``prepare`` pairs per second on phantom DICOM studies (one worker), next to the
  pydicom floor (dcmread + pixel_array of every file).
- Peak memory: the process's peak resident set (and the GPU's peak allocation on CUDA).

Nothing is asserted; numbers depend on the machine and its load.
"""

from __future__ import annotations

import platform
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from petsynth.inference import DEMO_MODEL, PredictOptions, load_model, predict_items
from petsynth.tasks import DEFAULT_TASK

#: Slices in the "per study" column (a whole-body PET/CT of about 250 slices).
STUDY_SLICES = 250

Say = Callable[[str], None]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    """One line describing the machine: CPU, cores, torch threads, GPU."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} on {torch.get_num_threads()} threads, {gpu}"


@dataclass
class SpeedRow:
    steps: int | None
    batch_size: int
    slices: int
    seconds: float

    @property
    def slices_per_s(self) -> float:
        return self.slices / self.seconds

    @property
    def seconds_per_study(self) -> float:
        return STUDY_SLICES / self.slices_per_s


def _phantom_ct_slices(method, count: int) -> tuple[list[np.ndarray], float]:
    """``count`` CT slices (HU) on the model's translation grid, from a small phantom (cycled), and its kVp."""
    from petsynth.phantom import make_torso
    from petsynth.translation import InputImage, image_on_grid, translation_grid

    study = make_torso(0, preset="small")
    ct = study.images["CT"]
    grid = translation_grid(method, ct.geometry)
    hu = image_on_grid(InputImage(ct.volume.astype(np.float32), ct.geometry, "CT"), grid)
    return [hu[k % hu.shape[0]] for k in range(count)], float(study.acquisition.kvp)


def translate_speed(model: str | Path = DEMO_MODEL, steps: Sequence[int] = (1, 5, 10, 20), batch_size: int = 8,
                    slices: int = 32, device: str = "cpu", bf16: bool = False, say: Say | None = None
                    ) -> list[SpeedRow]:
    """Slices per second of ``model``'s translate at each step count (see the module docstring)."""
    say = say or (lambda _m: None)
    method = load_model(model, device=device)
    cts, kvp = _phantom_ct_slices(method, slices)
    items = [{"source": s, "kvp": kvp} for s in cts]
    rows = []
    for n in steps:
        options = PredictOptions(steps=n, batch_size=batch_size, bf16=bf16)
        for _ in predict_items(method, items[:batch_size], options=options):  # warm-up
            pass
        if device != "cpu":
            torch.cuda.synchronize()
        say(f"{n} steps: {slices} slices")
        t0 = time.perf_counter()
        for _ in predict_items(method, items, options=options):
            pass
        if device != "cpu":
            torch.cuda.synchronize()
        rows.append(SpeedRow(n, batch_size, slices, time.perf_counter() - t0))
    return rows


def study_translate_time(model: str | Path = DEMO_MODEL, preset: str = "small", steps: int | None = None,
                         workdir: Path | None = None, say: Say | None = None) -> tuple[int, float]:
    """(slices, seconds) of one end-to-end ``translate`` of a phantom DICOM study (read, resample, translate,
    write NIfTI and DICOM); the phantom's simulation is not timed."""
    from petsynth.phantom import make_torso, write_study
    from petsynth.translation import translate

    say = say or (lambda _m: None)
    work = Path(workdir or tempfile.mkdtemp(prefix="petsynth_bench_"))
    say(f"simulating a {preset} phantom study (not timed)")
    study_dir = write_study(make_torso(1, preset=preset), work / "phantom", overwrite=True)
    say("translating the study end to end")
    t0 = time.perf_counter()
    result = translate(model, study_dir / "CT", work / "translated", steps=steps, overwrite=True)
    return result.slices, time.perf_counter() - t0


@dataclass
class PrepareSpeed:
    """``prepare`` against the pydicom floor; ``*_runs`` are every repetition's seconds, the figures their
    best (the usual benchmark convention: the run least disturbed by the rest of the machine)."""

    pairs: int
    files: int
    run_seconds: list[float]
    floor_runs: list[float]
    run_cpu_seconds: list[float]  # CPU time (user + system, all threads) of each prepare run
    peak_rss_before_mb: float = 0.0  # the process's peak before the first timed run (after any simulation)

    @property
    def seconds(self) -> float:
        return min(self.run_seconds)

    @property
    def cpu_seconds(self) -> float:
        """CPU time of the fastest run: pairs per CPU second is the speed per core, whatever the threads."""
        return self.run_cpu_seconds[self.run_seconds.index(self.seconds)]

    @property
    def floor_seconds(self) -> float:
        return min(self.floor_runs)

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds

    @property
    def floor_pairs_per_s(self) -> float:
        return self.pairs / self.floor_seconds

    @property
    def ratio(self) -> float:
        """prepare's speed as a fraction of the floor's (the target is at least 2/3)."""
        return self.floor_seconds / self.seconds


def bench_phantoms(work: Path, studies: int, preset: str = "default", *, with_truth: bool = False,
                   say: Say | None = None) -> Path:
    """GE-like ct2pet phantom DICOM studies (seed 0) in ``work``, written once (atomically) and reused; without
    ``with_truth`` only the DICOM series, as an archive holds them."""
    import shutil

    from petsynth import phantom as ph

    raw = Path(work) / f"raw-{preset}-{studies}{'-truth' if with_truth else ''}"
    if not raw.exists():
        (say or (lambda _m: None))(f"simulating {studies} {preset} phantom studies (not timed)")
        tmp = Path(work) / f".{raw.name}-{time.time_ns()}"
        ph.write_studies(tmp, task=DEFAULT_TASK, studies=studies, seed=0, fmt="dicom", preset=preset, flavour="ge")
        if not with_truth:
            for folder in tmp.rglob("truth"):
                shutil.rmtree(folder)
        tmp.rename(raw)
    return raw


def prepare_speed(studies: int = 1, preset: str = "default", size: int = 256, workdir: Path | None = None,
                  say: Say | None = None, progress: Callable[[int, int, str], None] | None = None,
                  repeats: int = 3, with_truth: bool = False) -> PrepareSpeed:
    """``prepare`` (one worker) on GE-like phantom DICOM studies vs the pydicom floor (dcmread + pixel_array
    of every file), each ``repeats`` times. The phantoms are written once into ``workdir`` (not timed) and
    reused by later calls with the same ``workdir``. By default the study folders hold only the DICOM
    series, as an archive does; ``with_truth`` keeps the simulator's noise-free truth beside them, which
    prepare then also resamples and stores (work the floor does not count)."""
    import shutil

    import pydicom

    from petsynth.data.prepare import prepare_dataset

    say = say or (lambda _m: None)
    work = Path(workdir or tempfile.mkdtemp(prefix="petsynth_bench_"))
    raw = bench_phantoms(work, studies, preset, with_truth=with_truth, say=say)
    files = sorted(raw.rglob("*.dcm"))
    floor_runs, run_seconds, run_cpu, pairs = [], [], [], 0
    rss_before = peak_rss_mb()
    for k in range(repeats):
        say(f"pydicom floor: reading every file ({k + 1}/{repeats})")
        t0 = time.perf_counter()
        for f in files:
            pydicom.dcmread(f).pixel_array
        floor_runs.append(time.perf_counter() - t0)
        say(f"prepare ({k + 1}/{repeats})")
        out = work / f"dataset-{time.time_ns()}"
        t0, c0 = time.perf_counter(), _cpu_seconds()
        report = prepare_dataset([raw], out, DEFAULT_TASK, size=size, workers=1, key=b"petsynth-bench",
                                 progress=progress if k == 0 else None)
        run_seconds.append(time.perf_counter() - t0)
        run_cpu.append(_cpu_seconds() - c0)
        pairs = sum(r.slices for r in report.results)
        shutil.rmtree(out)
    return PrepareSpeed(pairs=pairs, files=len(files), run_seconds=run_seconds, floor_runs=floor_runs,
                        run_cpu_seconds=run_cpu, peak_rss_before_mb=rss_before)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

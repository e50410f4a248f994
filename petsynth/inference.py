"""Running a trained method over many slices: the one loop that ``translate``, ``evaluate`` and ``bench`` use.

- :func:`resolve_model`: a model given as a run folder, a checkpoint folder, or a bundled model's name.
- :func:`predict_items` / :func:`predict_dataset`: batches of dataset-style items (physical units) through
  ``method.translate`` with the method's own collate (which computes the attenuation map from the CT), in
  inference mode, optionally under bf16 autocast, reporting progress per batch.

Threads: :func:`set_threads` sets torch's CPU threads; ``None`` chooses them (:func:`choose_threads`): torch's
default (one per core) on an idle machine, fewer when other processes keep cores busy. Why, measured by
``benchmarks/bench_threads.py`` on 2 cores (the demo's translation): idle, 2 threads 10 s and 1 thread 13 s;
with one core kept busy by another process, 2 threads 35 s and 1 thread 13 s (torch's threads wait for each
other at every operation, so one slowed thread slows them all).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from petsynth.data.batch import as_slices, as_volume
from petsynth.methods.base import Method, MethodError, available_methods, build_method, load_method, method_class
from petsynth.train.checkpoint import CARD_FILE, CheckpointError

#: Where the models bundled with the package live (``petsynth/models/<name>/``).
BUNDLED_MODELS_DIR = Path(__file__).parent / "models"
#: The small CPDM trained on phantoms that ships with the package (``petsynth demo`` uses it).
DEMO_MODEL = "phantom-cpdm"

Progress = Callable[[int, int], None]
#: What translate, evaluate and demo print whenever a bundled model is used.
PHANTOMS_ONLY_NOTICE = ("{name} is bundled with petsynth and knows digital phantoms only: its output for a real "
                        "patient means nothing. Train on real data with `petsynth prepare` and `petsynth train`.")


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package."""
    if not BUNDLED_MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_MODELS_DIR.iterdir() if (p / CARD_FILE).is_file())


def resolve_model(spec: str | Path) -> Path:
    """The checkpoint folder meant by ``spec``: a bundled model's name, a checkpoint folder (card.yaml +
    weights.safetensors), or a training run folder (its ``model/``, else its latest checkpoint)."""
    text = str(spec)
    if text in bundled_models():
        return BUNDLED_MODELS_DIR / text
    path = Path(spec)
    if not path.exists():
        names = ", ".join(bundled_models()) or "none"
        raise CheckpointError(f"{path}: no such model folder (bundled models: {names})")
    if (path / CARD_FILE).is_file():
        return path
    if (path / "model" / CARD_FILE).is_file():
        return path / "model"
    checkpoints = sorted((path / "checkpoints").glob("step_*")) if (path / "checkpoints").is_dir() else []
    if checkpoints:
        return checkpoints[-1]
    raise CheckpointError(f"{path} is not a petsynth model: no {CARD_FILE} in it, in {path / 'model'} or under "
                          f"{path / 'checkpoints'} (give a run folder, RUN/model, or a bundled model name)")


#: Models loaded in this process, by (model spec, device): a worker of a batch loads each model once.
_MODELS: dict[tuple[str, str], Method] = {}


def cached_model(spec: str | Path, device: str = "auto") -> Method:
    """The model ``spec`` on ``device`` ("auto": this process's GPU when it has one, else the CPU), loaded once
    per process (translate and evaluate of many studies, on pool or cluster workers)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    key = (str(spec), str(device))
    if key not in _MODELS:
        _MODELS[key] = load_model(spec, device=device)
    return _MODELS[key]


def model_name(spec: str | Path) -> str:
    """A model's display name: a bundled model's name, else the run folder's name (for RUN/model and
    RUN/checkpoints/step_N, RUN's name, the latter with @step_N), else the folder's name."""
    text = str(spec)
    if text in bundled_models():
        return text
    path = Path(spec).resolve()
    if path.name == "model" and path.parent.name:
        return path.parent.name
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return f"{path.parent.parent.name}@{path.name}"
    return path.name or text


def training_free_methods() -> list[str]:
    """Methods with no weights (the classical filters), used by their name as a model spec."""
    return [n for n in available_methods() if not method_class(n).needs_training]


def load_model(spec: str | Path, *, task: str | None = None, device: str | torch.device = "cpu") -> Method:
    """Load a model by :func:`resolve_model` spec, or build a training-free method named by ``spec`` (its
    default settings, for ``task`` or its first task); ``task`` makes a model of another task an error."""
    if str(spec) in training_free_methods():
        cls = method_class(str(spec))
        return build_method(str(spec), task=task or cls.tasks[0]).to(device).eval()
    path = resolve_model(spec)
    method = load_method(path, task=task, device=device)
    if type(method).translate is Method.translate:
        translators = [n for n in available_methods() if method_class(n).translate is not Method.translate]
        raise MethodError(f"{path} holds a {method.name!r} model, which is a part of another method and does "
                          f"not translate images (give a model of {', '.join(translators)})")
    method.source_path = path
    return method


#: torch's own thread count at import (one per core), before any :func:`set_threads`.
TORCH_DEFAULT_THREADS = torch.get_num_threads()


def _cpu_times(cpus: set[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over ``cpus`` from /proc/stat (None where there is no such file)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [float(v) for v in rest.split()]
            idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
            busy += sum(values[:8]) - idle
            total += sum(values[:8])
    return (busy, total) if total > 0 else None


def busy_cores(sample_s: float = 0.1) -> tuple[float, int] | None:
    """(cores kept busy by other work, cores this process may use), measured over ``sample_s`` seconds from
    /proc/stat on the cores of this process' affinity; None where that cannot be read (not Linux). A limit
    set by a cgroup CPU quota is not seen."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    first = _cpu_times(cpus)
    if first is None:
        return None
    time.sleep(sample_s)
    second = _cpu_times(cpus)
    if second is None or second[1] <= first[1]:
        return None
    return len(cpus) * (second[0] - first[0]) / (second[1] - first[1]), len(cpus)


_AUTO_CHOICE: list[int] = []  # the count the last automatic choice set (empty: none yet)


def _callers_choice() -> int | None:
    """torch's thread count when the program set it itself (not torch's default, not petsynth's last
    automatic choice), else None."""
    current = torch.get_num_threads()
    return current if current != TORCH_DEFAULT_THREADS and current not in _AUTO_CHOICE[-1:] else None


def choose_threads(threads: int | None = None) -> tuple[int, str | None]:
    """torch CPU threads to use, and a note when they were lowered. ``threads`` given: that. Else the count
    the caller already set with ``torch.set_num_threads`` (anything but torch's default or petsynth's own
    last choice: a program or test that chose keeps its choice); else torch's default
    (:data:`TORCH_DEFAULT_THREADS`), less the cores other processes keep busy (at least 1)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        return threads, None
    if _callers_choice() is not None:
        return torch.get_num_threads(), None
    measured = busy_cores()
    if measured is None:
        return TORCH_DEFAULT_THREADS, None
    busy, cores = measured
    chosen = max(1, min(TORCH_DEFAULT_THREADS, int(round(cores - busy))))
    if chosen >= TORCH_DEFAULT_THREADS:
        return TORCH_DEFAULT_THREADS, None
    return chosen, (f"{busy:.1f} of {cores} cores are busy with other work: using {chosen} torch "
                    f"thread{'s' if chosen > 1 else ''} instead of {TORCH_DEFAULT_THREADS} (pass --threads to choose)")


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads: ``threads``, or None for :func:`choose_threads`' choice (a warning says when it
    took fewer than one per core). Returns the count set."""
    automatic = threads is None and _callers_choice() is None
    chosen, note = choose_threads(threads)
    torch.set_num_threads(chosen)
    if automatic:
        _AUTO_CHOICE[:] = [chosen]
    if note:
        warnings.warn(note, stacklevel=2)
    return chosen


# --- the scale a model was trained at -------------------------------------------------------------------
#: Slice sides a model is run at are multiples of this (the attention segmenter's encoder halves the size 5
#: times).
GRID_MULTIPLE = 32
#: Slices whose pixel spacing is within this fraction of a model's training spacing are given to it as they are;
#: others are resampled to it (translate in world coordinates, evaluate slice by slice: :class:`ModelScale`).
SPACING_TOLERANCE = 0.15


def model_spacing_mm(method: Method) -> float | None:
    """The in-plane pixel spacing (mm) the model was trained at, from its card (None when not recorded)."""
    data = getattr(getattr(method, "card", None), "data", None) or {}
    spacing = data.get("spacing_mm")
    if not spacing:
        return None
    return float(np.mean(spacing))


def model_slice_spacing_mm(method: Method) -> float | None:
    """The slice spacing (mm) of the model's training data, from its card (None when not recorded)."""
    data = getattr(getattr(method, "card", None), "data", None) or {}
    return float(data["slice_spacing_mm"]) if data.get("slice_spacing_mm") else None


def model_size(method: Method) -> int | None:
    """The slice size (pixels) the model was trained at, from its card (None when not recorded)."""
    data = getattr(getattr(method, "card", None), "data", None) or {}
    return int(data["size"]) if data.get("size") else None


@dataclass(frozen=True)
class ModelScale:
    """Square slices of ``size`` px shown to a model at its training scale: each image resized to ``scaled`` px
    over the same field of view (antialiased when shrinking), centred on a ``canvas`` px square filled with
    air; the model's output cropped back to the field of view and resized to ``size`` px."""

    size: int
    scaled: int
    canvas: int

    @property
    def offset(self) -> int:
        return (self.canvas - self.scaled) // 2

    def to_model(self, image: np.ndarray, fill: float) -> np.ndarray:
        """(size, size) physical units -> (canvas, canvas) float32, ``fill`` around the field of view."""
        t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        t = F.interpolate(t, size=(self.scaled, self.scaled), mode="bilinear", align_corners=False,
                          antialias=self.scaled < self.size)[0, 0]
        out = torch.full((self.canvas, self.canvas), float(fill))
        o = self.offset
        out[o:o + self.scaled, o:o + self.scaled] = t
        return out.numpy()

    def from_model(self, pred: torch.Tensor) -> torch.Tensor:
        """(B, C, canvas, canvas) -> (B, C, size, size): the field of view, resized back."""
        o = self.offset
        crop = pred[..., o:o + self.scaled, o:o + self.scaled]
        return F.interpolate(crop, size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=self.size < self.scaled)


def model_scales(method: Method, size: int, spacings_mm: Mapping[str, float]) -> dict[str, ModelScale] | None:
    """Per key (a study), how its ``size`` px slices of ``spacings_mm[key]`` mm are shown to ``method`` at its
    training spacing, on one canvas for all (a multiple of :data:`GRID_MULTIPLE`, at least the training size);
    None when the model records no spacing or the median spacing is within :data:`SPACING_TOLERANCE` of it."""
    model_mm = model_spacing_mm(method)
    if model_mm is None or not spacings_mm:
        return None
    if abs(float(np.median(list(spacings_mm.values()))) / model_mm - 1) <= SPACING_TOLERANCE:
        return None
    scaled = {k: max(1, int(round(size * mm / model_mm))) for k, mm in spacings_mm.items()}
    canvas = max(GRID_MULTIPLE, int(math.ceil(max(scaled.values()) / GRID_MULTIPLE)) * GRID_MULTIPLE,
                 int(math.ceil((model_size(method) or 0) / GRID_MULTIPLE)) * GRID_MULTIPLE)
    return {k: ModelScale(size=size, scaled=n, canvas=canvas) for k, n in scaled.items()}


def autocast(device: torch.device | str, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when asked (fp32 otherwise)."""
    device_type = torch.device(device).type
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


@dataclass(frozen=True)
class PredictOptions:
    """How to run a method: its sampler options (``steps``, ``eta`` and any others in ``sampler``, e.g.
    ``{"snr": 0.16}``; None or absent: the model's defaults), slices per batch, bf16 autocast, and the seed of
    the sampler's noise (stochastic samplers, LDM's start noise). The method validates the sampler options:
    one it does not have is an error that names it."""

    steps: int | None = None
    eta: float | None = None
    batch_size: int = 8
    bf16: bool = False
    seed: int = 0
    sampler: Mapping[str, Any] = field(default_factory=dict)

    def translate_kwargs(self) -> dict[str, Any]:
        """The sampler options given (not None), as keyword arguments of ``Method.translate``."""
        given = {k: v for k, v in (("steps", self.steps), ("eta", self.eta)) if v is not None}
        overlap = set(given) & set(self.sampler)
        if overlap:
            raise ValueError(f"sampler option {', '.join(sorted(overlap))} given twice")
        return {**given, **{k: v for k, v in self.sampler.items() if v is not None}}

    def for_method(self, method: Method) -> "PredictOptions":
        """These options without the sampler options ``method`` does not have (for comparing models of
        several methods under one set of options: a step count means nothing to a U-Net)."""
        names = set(method.sampler_option_names())
        return replace(self, steps=self.steps if "steps" in names else None,
                       eta=self.eta if "eta" in names else None,
                       sampler={k: v for k, v in self.sampler.items() if k in names})


def _batches(items: Sequence[Mapping[str, Any]] | Iterable[Mapping[str, Any]], size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _studies(items: Iterable[Mapping[str, Any]]) -> Iterator[list]:
    """Consecutive items of one study (its "study"; items without one are one study), for volumetric methods."""
    for _, group in itertools.groupby(items, key=lambda item: item.get("study")):
        yield list(group)


@torch.no_grad()
def predict_items(method: Method, items: Iterable[Mapping[str, Any]], total: int | None = None,
                  options: PredictOptions = PredictOptions(), progress: Progress | None = None,
                  ) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """Translate dataset-style items (dicts with "source" (H, W) in physical units, "kvp", and whatever else
    the task needs) in batches. Yields ``(batch, prediction)`` with the prediction in SUV, (B, 1, H, W),
    float32 on the CPU; ``progress(done, total)`` is called after each batch (slices)."""
    if options.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {options.batch_size}")
    device = next(iter(method.parameters()), torch.empty(0)).device  # a training-free method: the CPU
    collate = method.collate()
    generator = torch.Generator(device=device).manual_seed(options.seed)
    kwargs = options.translate_kwargs()
    method.eval()
    done = 0
    volumetric = bool(method.slab_depth)
    for chunk in _studies(items) if volumetric else _batches(items, options.batch_size):
        batch = collate(chunk)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with autocast(device, options.bf16):
            if volumetric:  # the study as one volume; its prediction back as slices
                pred = as_slices(method.translate(as_volume(batch), generator=generator, **kwargs))
            else:
                pred = method.translate(batch, generator=generator, **kwargs)
        pred = pred.float().cpu()
        done += pred.shape[0]
        if progress is not None:
            progress(done, total if total is not None else done)
        yield batch, pred


def predict_dataset(method: Method, dataset: torch.utils.data.Dataset, options: PredictOptions = PredictOptions(),
                    progress: Progress | None = None) -> Iterator[tuple[dict[str, Any], torch.Tensor]]:
    """:func:`predict_items` over a prepared dataset (or split) in index order; the dataset's task must be
    the model's."""
    task = getattr(dataset, "task", None)
    if task is not None and task != method.task:
        raise MethodError(f"the model is for {method.task!r} but the dataset is a {task!r} dataset")
    if method.context_slices and hasattr(dataset, "with_context"):  # 2.5-D: each slice with its neighbours
        dataset = dataset.with_context(method.context_slices)
    items = (dataset[i] for i in range(len(dataset)))
    return predict_items(method, items, total=len(dataset), options=options, progress=progress)

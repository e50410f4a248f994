"""One training loop for every method.

Run folder::

    RUN/
      run.yaml                       the run config (method, task, data, method config, training settings)
      checkpoints/step_00000500/     checkpoint format of petsynth.train.checkpoint, plus training state
      model/                         the exported model (EMA weights in place of the raw ones), at the end
      log.csv, val.csv               losses / learning rate / speed per logged step; validation metrics
      tensorboard/                   the same scalars, when the tensorboard package is installed
      curves.png                     loss and validation SSIM, PSNR, MAE over steps
      val/step_00000500.png          validation panels (source | prediction | reference | error)

Exact resume: weights, optimiser states, EMA, RNG state and step are in each checkpoint, and the data order
is a pure function of (seed, step), so a resumed run takes the same batches and noise as an uninterrupted
one. Data-parallel training over processes started by ``torchrun`` (gloo on CPU, NCCL on GPU): each rank
takes its share of every batch, and the method runs in ``torch.nn.parallel.DistributedDataParallel`` (one
wrapper per optimiser group, see :meth:`Trainer._data_parallel`), which starts every rank from rank 0's
weights and averages each group's gradients over the processes during its backward pass (once per
optimiser step: ``no_sync`` for all but the last micro-batch of gradient accumulation).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field

from petsynth.config import Config
from petsynth.data.balance import balance_weights, slice_uptake, weighted_indices
from petsynth.data.batch import as_slices, to_device
from petsynth.data.slabs import StudySlabs
from petsynth.data.store import DatasetError, open_dataset
from petsynth.inference import autocast
from petsynth.methods.base import Method, MethodError, build_method
from petsynth.tasks import DEFAULT_TASK, get_task
from petsynth.train.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from petsynth.utils.files import atomic_file, atomic_write_text

RUN_FILE = "run.yaml"
CHECKPOINTS = "checkpoints"
EXPORT = "model"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class TrainError(ValueError):
    """A run cannot start or resume; the message names the problem and what to do."""


class TrainConfig(Config):
    """Optimisation and bookkeeping settings shared by every method."""

    steps: int = Field(2000, ge=1, description="optimiser steps in total")
    batch_size: int = Field(8, ge=1, description="slices per optimiser step, over all processes")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    lr: float | None = Field(None, gt=0, description="learning rate (default: the method's)")
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm per optimiser; null: none")
    ema_decay: float | None = Field(0.995, gt=0, lt=1, description="EMA of the weights; null: no EMA")
    ema_start: int = Field(0, ge=0, description="step from which the EMA is updated (copied before)")
    precision: Literal["fp32", "bf16"] = "fp32"
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    validate_every: int = Field(500, ge=1)
    val_batches: int = Field(2, ge=1)
    val_options: dict[str, Any] = Field(default_factory=dict, description="passed to validation_pair")
    log_every: int = Field(10, ge=1)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    seed: int = 0
    slice_balance: Literal["none", "uptake"] = Field(
        "none", description="none: every training slice equally often; uptake: every PET uptake bin equally "
                            "often (petsynth.data.balance)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")


class RunConfig(Config):
    """Everything that defines a training run."""

    method: str
    task: str = DEFAULT_TASK
    data: str = Field(..., description="prepared dataset folder")
    method_config: dict[str, Any] = Field(default_factory=dict)
    train: TrainConfig = Field(default_factory=TrainConfig)


# --- data order: a pure function of (seed, position) ---------------------------------------------------
def sample_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Indices at global sample positions start..start+count-1 of an endless shuffled stream over n items
    (a new permutation each epoch, seeded by (seed, epoch))."""
    out: list[int] = []
    pos = start
    while len(out) < count:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        take = min(count - len(out), n - offset)
        out.extend(perm[offset:offset + take].tolist())
        pos += take
    return out


class _StepBatches(torch.utils.data.Sampler):
    """Batch sampler yielding this rank's micro-batches from ``start_step`` on."""

    def __init__(self, n: int, cfg: TrainConfig, start_step: int, rank: int, world: int,
                 weights: torch.Tensor | None = None):
        self.n, self.cfg, self.start, self.rank, self.world = n, cfg, start_step, rank, world
        self.micro = cfg.batch_size // (cfg.grad_accum * world)
        self.weights = weights

    def __iter__(self) -> Iterator[list[int]]:
        per_step = self.cfg.batch_size
        for step in range(self.start, self.cfg.steps):
            if self.weights is None:
                indices = sample_indices(self.n, self.cfg.seed, step * per_step, per_step)
            else:
                indices = weighted_indices(self.weights, self.cfg.seed, step * per_step, per_step)
            for a in range(self.cfg.grad_accum):
                base = (a * self.world + self.rank) * self.micro
                yield indices[base:base + self.micro]

    def __len__(self) -> int:
        return (self.cfg.steps - self.start) * self.cfg.grad_accum


# --- EMA ------------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of the parameters of the method's translating submodules."""

    def __init__(self, method: Method, decay: float):
        self.decay = decay
        prefixes = tuple(f"{n}." for n in method.ema_module_names())
        self.params = {k: p for k, p in method.named_parameters() if k.startswith(prefixes)}
        self.shadow = {k: p.detach().clone() for k, p in self.params.items()}

    @torch.no_grad()
    def update(self, decay: float | None = None) -> None:
        keys = list(self.params)
        torch._foreach_lerp_([self.shadow[k] for k in keys], [self.params[k].detach() for k in keys],
                             1.0 - (self.decay if decay is None else decay))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k in self.shadow:
            self.shadow[k].copy_(state[k])


# --- optimiser state <-> safetensors --------------------------------------------------------------------
def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = opt.state_dict()
    tensors, extras = {}, {}
    for idx, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                extras[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "extras": extras}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *meta.get("extras", {}).items()]:
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _lr_factor(cfg: TrainConfig, step: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        span = max(cfg.steps - cfg.warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - cfg.warmup_steps, span) / span))
    return 1.0


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest step in a run folder (None when there is none)."""
    folder = Path(run_dir) / CHECKPOINTS
    steps = sorted(p for p in folder.iterdir() if _STEP_DIR.match(p.name)) if folder.is_dir() else []
    return steps[-1] if steps else None


def training_geometry(dataset: Any) -> dict[str, Any]:
    """Slice size (pixels), median in-plane pixel spacing (mm, [dy, dx]) and median slice spacing (mm, from
    the slices' z_mm) of a prepared dataset: saved in the model card so that ``translate`` resamples a CT to the
    scale the model was trained at (and takes a 2.5-D model's neighbouring slices at that distance)."""
    info = getattr(dataset, "info", {}) or {}
    spacings = [dataset.study_meta(s).get("spacing_mm") for s in getattr(dataset, "studies", [])]
    spacings = [s for s in spacings if s]
    out: dict[str, Any] = {}
    if "size" in info:
        out["size"] = int(info["size"])
    if spacings:
        out["spacing_mm"] = [round(float(v), 4) for v in np.median(np.asarray(spacings, dtype=np.float64), axis=0)]
    steps = [float(np.median(np.abs(np.diff(z)))) for z in map(dataset.slice_z_mm, getattr(dataset, "studies", []))
             if len(z) > 1] if hasattr(dataset, "slice_z_mm") else []
    if steps:
        out["slice_spacing_mm"] = round(float(np.median(steps)), 4)
    masks = {dataset.study_meta(s).get("brain_mask") for s in getattr(dataset, "studies", [])} - {None, "none"}
    if masks:  # mr2pet trained on brain-masked MR: translate masks its MR the same way
        out["brain_mask"] = sorted(masks)[0]
    return out


def parameter_counts(method: Method) -> dict[str, int]:
    """Parameter elements per top-level network of ``method`` (its named children) and in total "trainable"."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in method.named_children()}
    counts = {k: v for k, v in counts.items() if v}
    counts["trainable"] = sum(p.numel() for params in method.optimizer_groups().values() for p in params)
    return counts


class Trainer:
    """Train one method on a prepared dataset into a run folder (see the module docstring).

    Args:
        run: the run config.
        out: run folder (created; with ``resume`` it must hold a run of a compatible config).
        resume: continue from the latest checkpoint.
        progress: ``progress(step, total, losses)`` after each logged step (the CLI draws a bar with it).
    """

    def __init__(self, run: RunConfig, out: str | Path, *, resume: bool = False,
                 device: str | torch.device | None = None,
                 progress: Callable[[int, int, dict[str, float]], None] | None = None):
        self.run, self.cfg, self.out = run, run.train, Path(out)
        self.progress = progress
        self.rank, self.world = _dist_info()
        if self.cfg.batch_size % (self.cfg.grad_accum * self.world):
            raise TrainError(f"batch_size {self.cfg.batch_size} must be divisible by grad_accum "
                             f"({self.cfg.grad_accum}) x processes ({self.world})")
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", self.rank % torch.cuda.device_count())
        self._check_run_folder(resume)
        self.data = self._open_data()
        torch.manual_seed(self.cfg.seed)
        try:
            self.method = build_method(run.method, run.method_config, task=run.task,
                                       source=f"{self.out / RUN_FILE}: method_config")
        except MethodError as err:
            raise TrainError(str(err)) from None
        if not self.method.needs_training:
            raise TrainError(f"{run.method} has no weights and needs no training: use it by name, e.g. "
                             f"`petsynth translate {run.method} STUDY --out OUT` or `petsynth evaluate {run.method} ...`")
        if not self.data.has_source and not self.method.trains_without_source:
            raise TrainError(f"{self.run.data} holds only standard-dose PET (prepared with --standard-dose-only): "
                             f"{run.method} learns from low-dose/standard-dose pairs; only methods trained on "
                             "standard-dose PET alone (upete) can learn from it")
        if self.method.context_slices:  # 2.5-D: each slice with its neighbours (petsynth.data.slabs)
            self.train_data, self.val_data = (d.with_context(self.method.context_slices)
                                              for d in (self.train_data, self.val_data))
        if self.method.slab_depth:  # a volumetric method learns from slabs of slices (petsynth.data.slabs)
            try:
                self.train_data, self.val_data = (StudySlabs(d, self.method.slab_depth)
                                                  for d in (self.train_data, self.val_data))
            except ValueError as err:
                raise TrainError(f"{self.run.data}: {err}") from None
        self.method.to(self.device)
        self.groups = self.method.optimizer_groups()
        # what train_step calls per group: the method itself, or its DDP wrappers (built here, they give
        # every rank rank 0's weights and buffers before the EMA copies the weights)
        self.models = self._data_parallel()
        lr = self.cfg.lr or self.method.default_lr
        self.optimizers = {name: torch.optim.AdamW(params, lr=lr, betas=self.cfg.betas,
                                                    weight_decay=self.cfg.weight_decay)
                           for name, params in self.groups.items()}
        self.base_lr = lr
        self.ema = EMA(self.method, self.cfg.ema_decay) if self.cfg.ema_decay and self.method.ema_module_names() \
            else None
        self.step = 0
        if resume and latest_checkpoint(self.out) is not None:
            self._load_state(latest_checkpoint(self.out))
        elif self.rank == 0:  # a fresh start (or a resume before the first checkpoint): no stale log rows
            for name in ("log.csv", "val.csv"):
                _truncate_csv(self.out / name, 0)

    def _data_parallel(self) -> dict[str, torch.nn.Module]:
        """The module train_step calls for each optimiser group: the method itself in one process; over
        several, a ``DistributedDataParallel`` wrapper of the method per group whose reducer holds only that
        group's parameters (the other groups' are on its ignore list).

        Why one wrapper per group: a method with several groups (pix2pix, vqgan: generator, then
        discriminator) uses only one group's parameters in each backward (the discriminator is set to
        ``requires_grad_(False)`` during the generator's turn; the discriminator's turn sees detached fakes).
        One wrapper of the whole method without ``find_unused_parameters`` fails at the next forward
        ("Expected to have finished reduction in the prior iteration"); with ``static_graph=True`` it fails
        too ("training graph has changed"): the used parameters alternate between groups. With
        ``find_unused_parameters=True`` it is correct, but walks the autograd graph after every forward and
        all-reduces the other group's parameters as zeros in every backward: twice the traffic of a step
        (measured over two gloo processes on a pix2pix of 16.7M + 2.8M parameters: 38.8M gradient elements
        all-reduced per step against 19.4M, the same weights after; a default pix2pix has 54.4M + 2.8M).
        Per group, every parameter of the group that requires grad gets a gradient in each of its
        backwards (checked for every built-in method; vqgan's discriminator gets zeros before
        ``discriminator_start``), so each step all-reduces exactly the gradients it steps, each once. A
        group that left a parameter without gradient would fail at its next forward, as above; a parameter
        in two reducers would have its reduction finished in the other group's backward, out of step
        (hence the ignore lists). Parameters with ``requires_grad`` False at construction (frozen parts: an
        autoencoder or segmenter; vqgan's EMA-updated codebook) are in no reducer. Each wrapper's
        construction broadcasts from rank 0 all buffers and the parameters not on its ignore list (frozen
        ones included), so together they start every rank from rank 0's weights.

        Buffers: each wrapper broadcasts rank 0's buffers before its forward (DDP's default
        ``broadcast_buffers``). Rank 0's own buffers are never changed by that, so its run (the one that
        checkpoints and validates) is the same as with per-rank buffers; batch-norm running statistics
        follow rank 0's batches on every rank. LDM's ``latent_scale`` is estimated inside the first forward,
        after that broadcast, from a ``dist.all_reduce`` of the batch std over processes, so it is the same
        on every rank and later broadcasts rewrite it with that same value; the VQ codebook's EMA buffers
        are all-reduced inside its forward (MONAI ``ddp_sync``) likewise.
        """
        if self.world == 1:
            return dict.fromkeys(self.groups, self.method)
        grouped = {id(p) for params in self.groups.values() for p in params}
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        models: dict[str, torch.nn.Module] = {}
        for name, params in self.groups.items():
            own = {id(p) for p in params}
            # read by DDP's constructor only (torch's workaround for ignoring parameters, see
            # DistributedDataParallel._set_params_and_buffers_to_ignore_for_model, which would also flag the
            # parameters themselves as ignored for every later wrapper)
            self.method._ddp_params_and_buffers_to_ignore = [
                n for n, p in self.method.named_parameters() if id(p) in grouped and id(p) not in own]
            try:
                models[name] = torch.nn.parallel.DistributedDataParallel(self.method, device_ids=device_ids)
            finally:
                del self.method._ddp_params_and_buffers_to_ignore
        return models

    # --- set-up -----------------------------------------------------------------------------------------
    def _check_run_folder(self, resume: bool) -> None:
        saved = self.out / RUN_FILE
        if saved.exists():
            if not resume:
                raise TrainError(f"{self.out} already holds a run; pass --resume to continue it or choose "
                                 "another folder")
            old = RunConfig.from_yaml(saved)
            for key in ("method", "task", "method_config"):
                if getattr(old, key) != getattr(self.run, key):
                    raise TrainError(f"cannot resume {self.out}: its {key} is {getattr(old, key)!r}, the new "
                                     f"config has {getattr(self.run, key)!r}")
            for key in ("batch_size", "grad_accum", "seed"):
                if getattr(old.train, key) != getattr(self.cfg, key):
                    raise TrainError(f"cannot resume {self.out} exactly: train.{key} was "
                                     f"{getattr(old.train, key)!r}, now {getattr(self.cfg, key)!r}")
        if self.world > 1:  # every rank has looked (and found the same) before rank 0 writes the config
            dist.barrier()
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            self.run.to_yaml(saved)

    def _open_data(self):
        try:
            data = open_dataset(self.run.data)
        except DatasetError as err:
            raise TrainError(str(err)) from None
        if data.task != self.run.task:
            raise TrainError(f"{self.run.data} was prepared for {data.task!r}; this run is for "
                             f"{self.run.task!r}: prepare a dataset with --task {self.run.task}")
        train = data.split("train")
        if len(train) == 0:
            raise TrainError(f"{self.run.data} has no training slices (splits.json lists no train study)")
        val = data.split("val")
        self.train_data, self.val_data = train, (val if len(val) else train)
        self.train_slices = train
        return data

    def _loader(self, start: int) -> torch.utils.data.DataLoader:
        collate = self.method.collate()
        sampler = _StepBatches(len(self.train_data), self.cfg, start, self.rank, self.world,
                               self._slice_weights())
        return torch.utils.data.DataLoader(self.train_data, batch_sampler=sampler, collate_fn=collate,
                                           num_workers=self.cfg.num_workers,
                                           persistent_workers=False, pin_memory=self.device.type == "cuda",
                                           # its own generator: creating the iterator must not draw from the
                                           # global RNG, or a resumed run would take other noise
                                           generator=torch.Generator().manual_seed(self.cfg.seed),
                                           multiprocessing_context="spawn" if self.cfg.num_workers else None)

    def _slice_weights(self) -> torch.Tensor | None:
        """The training slices' sampling weights under ``slice_balance`` (None: uniform)."""
        if self.cfg.slice_balance == "none":
            return None
        if self.method.slab_depth:
            raise TrainError(f"slice_balance {self.cfg.slice_balance!r} weights slices; {self.run.method} "
                             "learns from slabs: use slice_balance: none")
        return torch.as_tensor(balance_weights(slice_uptake(self.train_data)), dtype=torch.float64)

    # --- checkpoints ------------------------------------------------------------------------------------
    def _card(self, training: dict[str, Any] | None = None) -> ModelCard:
        return ModelCard(method=self.run.method, task=self.run.task, config=self.method.config.to_dict(),
                         intensity={k: t.to_dict() for k, t in self.method.intensity_transforms().items()},
                         data={"dataset": Path(self.run.data).name, "train_slices": len(self.train_slices),
                               "train_studies": len(self.train_slices.studies),
                               **training_geometry(self.train_slices)},
                         step=self.step, parameters=parameter_counts(self.method), training=training or {})

    def save_checkpoint(self) -> Path:
        weights: dict[str, dict[str, torch.Tensor]] = {"model": self.method.state_dict()}
        if self.ema is not None:
            weights["ema"] = self.ema.state_dict()
        optim_meta = {}
        for name, opt in self.optimizers.items():
            tensors, meta = _flatten_optimizer(opt)
            weights[f"optim.{name}"] = tensors
            optim_meta[name] = meta
        weights["rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            weights["rng"]["cuda"] = torch.cuda.get_rng_state()
        path = self.out / CHECKPOINTS / f"step_{self.step:08d}"
        save_checkpoint(path, self._card({"optimizers": optim_meta, "run": self.run.to_dict()}),
                        weights, overwrite=True)
        old = sorted(p for p in path.parent.iterdir() if _STEP_DIR.match(p.name))[:-self.cfg.keep_checkpoints]
        for p in old:  # out of sight in one rename first: a run killed meanwhile leaves no half-deleted checkpoint
            os.replace(p, p.with_name(f".{p.name}.pruned"))
        for p in path.parent.glob(".step_*.pruned"):  # these, and any a killed run left
            shutil.rmtree(p, ignore_errors=True)
        return path

    def _load_state(self, path: Path) -> None:
        ckpt = load_checkpoint(path, device=self.device)
        self.method.load_state_dict(ckpt.weights["model"])
        if self.ema is not None and "ema" in ckpt.weights:
            self.ema.load_state_dict(ckpt.weights["ema"])
        for name, opt in self.optimizers.items():
            meta = ckpt.card.training["optimizers"][name]
            opt.load_state_dict(_unflatten_optimizer(ckpt.weights.get(f"optim.{name}", {}), meta))
        torch.set_rng_state(ckpt.weights["rng"]["torch"].cpu())
        if "cuda" in ckpt.weights["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(ckpt.weights["rng"]["cuda"].cpu())
        self.step = int(ckpt.card.step or 0)
        if self.rank == 0:
            for name in ("log.csv", "val.csv"):
                _truncate_csv(self.out / name, self.step)

    def export(self) -> Path:
        """Write RUN/model: the weights to translate with (the EMA weights where kept, in place of the raw
        ones) and the card; no optimiser state (the checkpoints keep everything for resuming)."""
        state = self.method.state_dict()
        if self.ema is not None:
            state.update(self.ema.state_dict())
        return save_checkpoint(self.out / EXPORT, self._card(), {"model": state}, overwrite=True)

    # --- the loop ---------------------------------------------------------------------------------------
    def _autocast(self):
        return autocast(self.device, self.cfg.precision == "bf16")

    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimiser step per group over the micro-batches of this step; returns the logged scalars."""
        logged: dict[str, float] = {}
        factor = _lr_factor(self.cfg, self.step)
        for name, params in self.groups.items():
            model, opt = self.models[name], self.optimizers[name]
            for g in opt.param_groups:
                g["lr"] = self.base_lr * factor
            opt.zero_grad(set_to_none=True)
            for i, batch in enumerate(micro_batches):
                # over processes, gradients accumulate locally and are averaged in the last backward
                last = i == len(micro_batches) - 1
                with contextlib.nullcontext() if self.world == 1 or last else model.no_sync():
                    with self._autocast():
                        out = model(batch, name, self.step)
                    loss = out["loss"]
                    if not torch.isfinite(loss):
                        raise TrainError(f"step {self.step}: the {name} loss is {loss.item()}; lower the "
                                         "learning rate or check the data")
                    (loss / len(micro_batches)).backward()
                for k, v in out.items():
                    key = f"{name}_loss" if k == "loss" and len(self.groups) > 1 else k
                    logged[key] = logged.get(key, 0.0) + float(v.detach()) / len(micro_batches)
            if self.cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            opt.step()
        if self.ema is not None:
            self.ema.update(0.0 if self.step < self.cfg.ema_start else None)
        logged["lr"] = self.base_lr * factor
        self.step += 1
        return logged

    def fit(self) -> Path:
        """Train to ``train.steps``; returns the exported model folder."""
        start = self.step
        log_path, val_path = self.out / "log.csv", self.out / "val.csv"
        loader = self._loader(start)
        micro: list[dict[str, Any]] = []
        t_last, steps_since = time.perf_counter(), 0
        board = _tensorboard(self.out, start) if self.rank == 0 else None
        self.method.train()
        for batch in loader:
            micro.append(to_device(batch, self.device))
            if len(micro) < self.cfg.grad_accum:
                continue
            logged = self.train_step(micro)
            micro = []
            steps_since += 1
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                now = time.perf_counter()
                logged["sec_per_step"] = (now - t_last) / steps_since
                t_last, steps_since = now, 0
                if self.rank == 0:
                    _append_csv(log_path, {"step": self.step, **logged})
                    if board is not None:
                        for k, v in logged.items():
                            board.add_scalar(f"train/{k}", v, self.step)
                if self.progress:
                    self.progress(self.step, self.cfg.steps, logged)
            if self.step % self.cfg.validate_every == 0 or self.step == self.cfg.steps:
                if self.rank == 0:
                    scores = self.validate()
                    _append_csv(val_path, {"step": self.step, **scores})
                    plot_curves(self.out)
                    if board is not None:
                        for k, v in scores.items():
                            board.add_scalar(f"val/{k}", v, self.step)
                self.method.train()
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                if self.rank == 0:
                    self.save_checkpoint()
                if self.world > 1:
                    dist.barrier()
        if board is not None:
            board.close()
        if self.rank == 0:
            self.export()
        if self.world > 1:
            dist.barrier()
        return self.out / EXPORT

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Metrics on the first ``val_batches`` validation batches (EMA weights when kept) and a panel."""
        from petsynth.io.png import save_panel
        from petsynth.metrics.image import mae, psnr, ssim

        backup = None
        if self.ema is not None:
            backup = {k: p.detach().clone() for k, p in self.ema.params.items()}
            for k, p in self.ema.params.items():
                p.copy_(self.ema.shadow[k])
        self.method.eval()
        collate = self.method.collate()
        n = len(self.val_data)
        size = min(self.cfg.batch_size, n)
        picks = np.linspace(0, n - 1, min(n, size * self.cfg.val_batches)).round().astype(int)
        rng_state = torch.get_rng_state()
        torch.manual_seed(self.cfg.seed + 1)  # the same validation noise every time
        scores: dict[str, list[float]] = {"val_mae": [], "val_psnr": [], "val_ssim": []}
        rows = []
        data_range = self.method.validation_range()
        try:
            for b0 in range(0, len(picks), size):
                batch = to_device(collate([self.val_data[int(i)] for i in picks[b0:b0 + size]]), self.device)
                with self._autocast():
                    pred, ref = self.method.validation_pair(batch, **self.cfg.val_options)
                pred, ref = as_slices(pred.float().cpu()), as_slices(ref.float().cpu())
                sources = as_slices(batch["source"])
                scores["val_mae"] += mae(pred, ref, data_range=data_range).tolist()
                scores["val_psnr"] += psnr(pred, ref, data_range=data_range).tolist()
                if min(pred.shape[-2:]) >= 11:
                    scores["val_ssim"] += ssim(pred, ref, data_range=data_range).tolist()
                for k in range(min(2, pred.shape[0]) if len(rows) < 4 else 0):
                    src = sources[k, 0].float().cpu().numpy()
                    p, r = pred[k, 0].numpy(), ref[k, 0].numpy()
                    kind = self.method.display_kind
                    rows.append([(src, "source", get_task(self.run.task).source_kind), (p, "prediction", kind),
                                 (r, "reference", kind), (p - r, "prediction - reference", "error")])
        finally:
            torch.set_rng_state(rng_state)
            if backup is not None:
                for k, p in self.ema.params.items():
                    p.copy_(backup[k])
        if rows:
            save_panel(self.out / "val" / f"step_{self.step:08d}.png", rows,
                       title=f"{self.run.method} step {self.step}")
        return {k: float(np.mean(v)) if v else float("nan") for k, v in scores.items()}


def _tensorboard(run_dir: Path, start: int):
    """A TensorBoard writer into RUN/tensorboard when the tensorboard package is installed, else None. A run
    resumed from step ``start`` hides the events of later steps a killed run wrote (``purge_step``), as the
    logs drop their rows, so that no step shows twice."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=start + 1 if start else None)


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` (with the header line when the file is new), all or nothing."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(row))
    if not path.exists():
        writer.writeheader()
    writer.writerow(row)
    with atomic_file(path, "a") as fh:
        fh.write(buffer.getvalue())


def _truncate_csv(path: Path, step: int) -> None:
    """Drop the rows after ``step`` (a resumed run redoes those steps). Rewritten atomically: a run killed
    meanwhile leaves all the rows, never fewer."""
    rows = _read_csv(path)
    if rows:
        keep = [r for r in rows if int(r["step"]) <= step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)
        atomic_write_text(path, buffer.getvalue())


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def plot_curves(run_dir: str | Path) -> Path | None:
    """curves.png: training loss and validation SSIM / PSNR / MAE over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    log, val = _read_csv(run_dir / "log.csv"), _read_csv(run_dir / "val.csv")
    if not log:
        return None
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    loss_keys = [k for k in log[0] if k.endswith("loss")]
    for k in loss_keys:
        axes[0].plot([int(r["step"]) for r in log], [float(r[k]) for r in log], label=k)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[0].set_title("training loss")
    for ax, key, label in zip(axes[1:], ("val_ssim", "val_psnr", "val_mae"), ("SSIM", "PSNR (dB)", "MAE")):
        ax.plot([int(r["step"]) for r in val], [float(r[key]) for r in val], "o-")
        ax.set_title(f"validation {label}")
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    path = run_dir / "curves.png"
    try:
        with atomic_file(path) as fh:
            fig.savefig(fh, dpi=80, format="png")
    finally:
        plt.close(fig)
    return path


def train(run: RunConfig, out: str | Path, *, resume: bool = False, **kwargs: Any) -> Path:
    """Train a run (see :class:`Trainer`); returns the exported model folder. Under ``torchrun`` the process
    group is initialised here (gloo on CPU, NCCL on GPU) and torn down at the end."""
    started = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        started = True
    try:
        return Trainer(run, out, resume=resume, **kwargs).fit()
    finally:
        if started:
            dist.destroy_process_group()


def make_run_config(method: str, data: str | Path, *, config_file: str | Path | None = None,
                    overrides: dict[str, Any] | None = None, task: str | None = None) -> RunConfig:
    """A run config from a method name, a dataset, an optional YAML file (keys ``method_config`` and
    ``train``, or a whole run config) and dotted overrides such as ``{"train.steps": 100,
    "method_config.sample_steps": 20}``. The task defaults to the dataset's."""
    import yaml

    base: dict[str, Any] = {}
    source = "<command line>"
    if config_file is not None:
        source = str(config_file)
        try:
            base = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise TrainError(f"configuration file not found: {config_file}") from None
        except yaml.YAMLError as err:
            raise TrainError(f"{config_file} is not valid YAML: {err}") from None
        if not isinstance(base, dict):
            raise TrainError(f"{config_file}: expected a mapping with method_config and/or train")
    base = {**base, "method": method, "data": str(data)}
    if task is None:
        try:
            task = open_dataset(data).task
        except DatasetError as err:
            raise TrainError(str(err)) from None
    base.setdefault("task", task)
    for dotted, value in (overrides or {}).items():
        node = base
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise TrainError(f"override {dotted}: {key} is not a section")
        node[leaf] = value
    return RunConfig.from_dict(base, source=source)

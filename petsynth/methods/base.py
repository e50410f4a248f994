"""The interface every method implements, and the registry of methods by name.

A method is a ``torch.nn.Module`` that owns its networks, its noise process (if any), its loss and its
intensity transforms. The one trainer (:mod:`petsynth.train.trainer`) only calls this interface:

- ``optimizer_groups()``: parameters per optimiser, in the order they are stepped (e.g. a GAN's
  "generator" then "discriminator"); most methods have one group, "model". Over several processes each
  group is reduced by its own ``DistributedDataParallel`` wrapper, so every parameter of a group that
  requires grad must get a gradient in each backward of that group (a zero one at least), and no other
  group's (freeze the other network, as the GANs do, or detach what it produced).
- ``losses(batch, group, step)``: a dict with the scalar "loss" to back-propagate for that group, plus any
  other scalars to log. ``batch`` is in physical units (see :mod:`petsynth.data.batch`); the method applies
  its own intensity transforms. The trainer calls it as ``method(batch, group, step)`` (``forward`` is
  ``losses``), so that a ``DistributedDataParallel`` wrapper sees every training forward pass.
- ``translate(batch, generator=None, **options)``: the prediction in the target's physical units (SUV),
  (B, 1, H, W). ``options`` are the method's sampler options, typed by ``sampler_options_class`` (e.g. steps,
  eta): :meth:`Method.sampler_options` validates them, and an option the method does not have is an error
  that names it, never ignored.
- ``validation_pair(batch)``: (prediction, reference) in the same physical units, for validation metrics.

Methods are built from their config (a :class:`~petsynth.config.Config`), so a checkpoint card (method
name + config) and a weights file rebuild them exactly (:func:`load_method`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field

from petsynth.config import Config, ConfigError
from petsynth.data.batch import Collate
from petsynth.data.intensity import IntensityTransform
from petsynth.tasks import DEFAULT_TASK, get_task
from petsynth.train.checkpoint import CheckpointError, ModelCard, load_checkpoint

_REGISTRY: dict[str, type["Method"]] = {}


class MethodError(ValueError):
    """A method name, config or checkpoint does not fit what was asked; the message says what to do."""


class NoSamplerOptions(Config):
    """Methods that translate in one pass take no sampler options."""


class StepsEtaOptions(Config):
    """Sampler options of the diffusion methods with a step count and a stochasticity (None: the model's
    config default: ``sample_steps``, ``eta``)."""

    steps: int | None = Field(None, ge=1, description="sampling steps (network evaluations)")
    eta: float | None = Field(None, ge=0, le=1, description="0: deterministic; 1: fully stochastic")


class Method(torch.nn.Module):
    """Base class of all methods (see the module docstring)."""

    #: registry name, e.g. "cpdm"
    name: ClassVar[str] = ""
    #: one line for `petsynth methods`
    summary: ClassVar[str] = ""
    #: tasks the method can be trained for
    tasks: ClassVar[tuple[str, ...]] = (DEFAULT_TASK,)
    #: the method's config class
    config_class: ClassVar[type[Config]] = Config
    #: whether batches must carry the CT attenuation map "mu_map" (computed in the data pipeline)
    needs_mu_map: ClassVar[bool] = False
    #: default optimiser settings the trainer uses unless the run config overrides them
    default_lr: ClassVar[float] = 1e-4
    #: how validation panels show predictions ("pet", "ct", "map"; see petsynth.io.png.DISPLAY)
    display_kind: ClassVar[str] = "pet"
    #: the typed options of ``translate`` (see :meth:`sampler_options`)
    sampler_options_class: ClassVar[type[Config]] = NoSamplerOptions
    #: False for methods with no weights (classical filters): used by name, never trained
    needs_training: ClassVar[bool] = True
    #: True for methods that learn from the target (and guidance) alone: they train on an lpet2spet dataset
    #: prepared with only its standard-dose PET (uPETe)
    trains_without_source: ClassVar[bool] = False

    @property
    def slab_depth(self) -> int | None:
        """None: the method works on slices, (B, 1, H, W). An int: it is volumetric, trained on slabs of that
        many slices ((B, 1, D, H, W), :mod:`petsynth.data.slabs`) and given whole studies to translate
        (:func:`petsynth.inference.predict_items` hands it a study's slices in order, (S, 1, H, W))."""
        return None

    @property
    def context_slices(self) -> int:
        """Neighbouring source slices on each side the method sees with each slice (2.5-D context; 0: none): its
        items need "source_context" (2c, H, W) (:mod:`petsynth.data.slabs`)."""
        return 0

    def __init__(self, config: Config, task: str = DEFAULT_TASK, load_parts: bool = True):
        super().__init__()
        get_task(task)  # an unknown name is a TaskError listing the known ones
        if task not in self.tasks:
            raise MethodError(f"method {self.name!r} is for tasks {', '.join(self.tasks)}, not {task!r}")
        self.config = config
        self.task = task

    # --- the interface ------------------------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Trainable parameters per optimiser, in stepping order."""
        return {"model": [p for p in self.parameters() if p.requires_grad]}

    def losses(self, batch: Mapping[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, batch: Mapping[str, Any], group: str, step: int) -> dict[str, torch.Tensor]:
        """``losses(batch, group, step)``. The trainer calls the method (or, over several processes, its
        ``DistributedDataParallel`` wrapper, which hooks ``forward``) rather than ``losses`` directly; methods
        override ``losses``, not this."""
        return self.losses(batch, group, step)

    @torch.no_grad()
    def translate(self, batch: Mapping[str, Any], generator: torch.Generator | None = None,
                  **options: Any) -> torch.Tensor:
        raise NotImplementedError(f"method {self.name!r} does not translate images")

    @classmethod
    def sampler_option_names(cls) -> tuple[str, ...]:
        """The names of the options ``translate`` takes."""
        return tuple(cls.sampler_options_class.model_fields)

    def sampler_options(self, options: Mapping[str, Any]) -> Config:
        """``options`` validated against ``sampler_options_class``; unknown or invalid ones are a
        :class:`MethodError` that names them (None values are dropped: the model's defaults apply)."""
        given = {k: v for k, v in options.items() if v is not None}
        names = self.sampler_option_names()
        unknown = sorted(set(given) - set(names))
        if unknown:
            takes = ", ".join(names) if names else "none"
            raise MethodError(f"{self.name} has no sampler option {', '.join(map(repr, unknown))} "
                              f"(its options: {takes})")
        try:
            return self.sampler_options_class.from_dict(given, source=f"{self.name} sampler options")
        except ConfigError as err:
            raise MethodError(str(err)) from None

    @torch.no_grad()
    def validation_pair(self, batch: Mapping[str, Any], **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, reference) in physical units; by default the translation and the target PET."""
        return self.translate(batch, **options), batch["target"]

    def intensity_transforms(self) -> dict[str, IntensityTransform]:
        """The transforms the method applies, by image role (saved in the card)."""
        return {}

    def validation_range(self) -> float:
        """Data range (physical units) for PSNR/SSIM at validation: the target window's width."""
        t = self.intensity_transforms().get("target")
        return float(t.high - t.low) if t is not None else 1.0

    def ema_module_names(self) -> list[str]:
        """Submodules whose weights get an exponential moving average (the ones used to translate)."""
        return [n for n, m in self.named_children() if any(p.requires_grad for p in m.parameters())]

    def train(self, mode: bool = True) -> "Method":
        super().train(mode)
        for m in self.modules():
            if getattr(m, "_petsynth_frozen", False):
                m.eval()
        return self

    def collate(self) -> Collate:
        """The DataLoader ``collate_fn`` that builds this method's batches (with the maps it needs)."""
        return Collate(self.task, mu_map=self.needs_mu_map,
                       path_length_cm=float(getattr(self.config, "mu_path_length_cm", 1.0)))


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is already registered by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


#: modules of the built-in methods (imported on first use of the registry; they register themselves)
BUILTIN_MODULES = ("vqgan", "attention", "cpdm", "unet", "pix2pix", "ldm", "jdam", "cyclegan", "classical", "upete",
                   "n2v")


def _load_builtin() -> None:
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(f"petsynth.methods.{module}")


def available_methods() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def build_method(name: str, config: Mapping[str, Any] | Config | None = None, task: str = DEFAULT_TASK,
                 source: str = "<method config>", load_parts: bool = True) -> Method:
    """A fresh method by name, from a config mapping (validated; unknown keys are errors).

    ``load_parts``: load pretrained parts named in the config (e.g. CPDM's autoencoder checkpoint); off when
    the weights come from the method's own checkpoint anyway.
    """
    cls = method_class(name)
    if not isinstance(config, Config):
        config = cls.config_class.from_dict(dict(config or {}), source=source)
    return cls(config, task=task, load_parts=load_parts)


def load_method(path: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu",
                task: str | None = None) -> Method:
    """Rebuild a method from a checkpoint folder (card + safetensors; never unpickles).

    ``task``: when given, a checkpoint trained for another task is an error naming both.
    """
    ckpt = load_checkpoint(path, device=device)
    card: ModelCard = ckpt.card
    if task is not None and card.task != task:
        raise MethodError(f"{path} holds a {card.method} model for {card.task!r}, not {task!r}")
    try:
        method = build_method(card.method, card.config, task=card.task, source=f"{path}/card.yaml", load_parts=False)
    except (ConfigError, CheckpointError):
        raise  # they name the card already
    except (ValueError, TypeError, ZeroDivisionError, RuntimeError) as err:  # a card no model can be built from
        raise CheckpointError(f"{path}/card.yaml: cannot build a {card.method!r} model for task {card.task!r} "
                              f"from it: {err}") from None
    try:
        missing, unexpected = method.load_state_dict(ckpt.model_state(use_ema), strict=False)
    except RuntimeError as err:  # tensors of other shapes: a card and weights that do not belong together
        first = str(err).split("\n\t")[1] if "\n\t" in str(err) else str(err)
        raise CheckpointError(f"{path}: weights do not match a {card.method} model with this config ({first})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match a {card.method} model with this config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    method.card = card
    return method.to(device).eval()


def frozen(module: torch.nn.Module) -> torch.nn.Module:
    """Freeze a submodule: no gradients, and kept in eval mode by :meth:`Method.train`."""
    module.requires_grad_(False)
    module.eval()
    module._petsynth_frozen = True
    return module

"""The checkpoint format shared by every method: a folder with weights in safetensors and a YAML card.

::

    CHECKPOINT/
      weights.safetensors   all tensors, keys "<group>/<parameter>" (e.g. "model/conv.weight", "ema/...")
      card.yaml             method, full config, intensity transforms, training-data summary, version

Loading never unpickles: safetensors for tensors, ``yaml.safe_load`` for the card. Folders are written
atomically (built under a temporary name, then renamed), so an interrupted save leaves no partial
checkpoint.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save

import petsynth
from petsynth.config import Config, ConfigError
from petsynth.utils.files import atomic_directory, atomic_file, atomic_write_text

WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "card.yaml"
FORMAT_VERSION = 1
_GROUP_SEP = "/"


class CheckpointError(ValueError):
    """A path is not a readable petsynth checkpoint; the message names the path and the problem."""


class ModelCard(Config):
    """What a checkpoint is: enough to rebuild the model and to know what it was trained on."""

    method: str
    task: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    intensity: dict[str, dict[str, Any]] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    step: int | None = None
    #: parameter counts: per top-level network of the method, and "trainable" (what the optimisers step)
    parameters: dict[str, int] = Field(default_factory=dict)
    #: training state for an exact resume (optimiser hyper-parameters, run config); empty in exported models
    training: dict[str, Any] = Field(default_factory=dict)
    petsynth_version: str = petsynth.__version__
    format_version: int = FORMAT_VERSION
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    notes: str = ""


@dataclass
class Checkpoint:
    """A loaded checkpoint: its card and its weights by group (each a state dict)."""

    card: ModelCard
    weights: dict[str, dict[str, torch.Tensor]]
    path: Path | None = None

    def model_state(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """The model's state dict, with the EMA weights in place of the raw ones where kept (``use_ema``)."""
        state = dict(self.weights.get("model", {}))
        if use_ema:
            state.update(self.weights.get("ema", {}))
        return state


def save_checkpoint(path: str | Path, card: ModelCard, weights: dict[str, dict[str, torch.Tensor]],
                    overwrite: bool = False) -> Path:
    """Write a checkpoint folder atomically.

    Args:
        path: folder to create.
        card: the model card.
        weights: state dicts by group name (e.g. ``{"model": net.state_dict(), "ema": ...}``).
        overwrite: replace an existing checkpoint at ``path``.
    """
    flat: dict[str, torch.Tensor] = {}
    for group, state in weights.items():
        if _GROUP_SEP in group or not group:
            raise ValueError(f"invalid weight group name {group!r}")
        for name, tensor in state.items():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"weights[{group!r}][{name!r}] is {type(tensor).__name__}, not a tensor")
            flat[f"{group}{_GROUP_SEP}{name}"] = tensor.detach().to("cpu").contiguous().clone()
    path = Path(path)
    with atomic_directory(path, overwrite=overwrite) as tmp:
        with atomic_file(tmp / WEIGHTS_FILE) as fh:  # safetensors' own file writer would bypass the atomic helpers
            fh.write(save(flat, metadata={"format": "petsynth", "method": card.method}))
        atomic_write_text(tmp / CARD_FILE, card.to_yaml())
    return path


def load_card(path: str | Path) -> ModelCard:
    """Read only the card of a checkpoint folder."""
    path = Path(path)
    card_path = path / CARD_FILE
    if not path.is_dir() or not card_path.is_file():
        raise CheckpointError(f"{path} is not a petsynth checkpoint: expected a folder with {CARD_FILE} "
                              f"and {WEIGHTS_FILE}")
    try:
        data = yaml.safe_load(card_path.read_text(encoding="utf-8"))
        card = ModelCard.from_dict(data, source=str(card_path))
    except (yaml.YAMLError, ConfigError) as err:
        raise CheckpointError(f"{card_path} is not a valid petsynth model card: {err}") from None
    if card.format_version > FORMAT_VERSION:
        raise CheckpointError(f"{path} uses checkpoint format {card.format_version}; this petsynth "
                              f"({petsynth.__version__}) reads format {FORMAT_VERSION} or older: upgrade petsynth")
    return card


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder (never unpickles)."""
    path = Path(path)
    card = load_card(path)
    try:
        flat = load_file(str(path / WEIGHTS_FILE), device=str(device))
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {WEIGHTS_FILE}") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path / WEIGHTS_FILE} is not a readable safetensors file: {err}") from None
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in flat.items():
        group, _, name = key.partition(_GROUP_SEP)
        weights.setdefault(group, {})[name] = tensor
    return Checkpoint(card=card, weights=weights, path=path)

"""Batches for training and translation: prepared-dataset items -> tensors, plus derived physical maps.

A batch is a dict of tensors in physical units: "source", "target" (and "guidance", "truth", "labels"
where present), each (B, 1, H, W) float32; "source_context" (B, 2c, H, W) where the items have it (the
2.5-D context, :mod:`petsynth.data.slabs`); "kvp" (B,) in kV; and, when asked for, "mu_map" (B, 1, H, W):
CPDM's attenuation map exp(-mu L) computed here, in the data pipeline (DataLoader workers), never inside
a network's forward(). Metadata ("study", "index", "z_mm", ...) stay as lists.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from petsynth.data.slabs import CONTEXT_KEY  # the items' neighbouring source slices: stacked to (B, 2c, H, W)
from petsynth.physics.attenuation import attenuation_map
from petsynth.tasks import get_task

#: kVp assumed for a CT whose header gave none (NIfTI inputs); a warning says so.
DEFAULT_KVP = 120.0
IMAGE_KEYS = ("source", "target", "guidance", "truth", "labels", "mask")


def ct_of(batch: Mapping[str, Any], task: str) -> torch.Tensor | None:
    """The CT of a batch: the image in the task's ``ct_role`` (:mod:`petsynth.tasks`), None for a task without."""
    role = get_task(task).ct_role
    return batch.get(role) if role else None


def kvp_tensor(values: Sequence[Any]) -> torch.Tensor:
    """kVp per item as float32 (B,); missing values become :data:`DEFAULT_KVP` with a warning."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            warnings.warn(f"CT without kVp: assuming {DEFAULT_KVP:g} kV for its attenuation map", stacklevel=3)
            v = DEFAULT_KVP
        out.append(float(v))
    return torch.tensor(out, dtype=torch.float32)


class Collate:
    """``collate_fn`` for a DataLoader over :class:`~petsynth.data.store.PreparedDataset` items.

    Args:
        task: the dataset's task (tells which image is the CT).
        mu_map: also compute the attenuation map from the CT and its kVp (CPDM, and baselines with maps).
        path_length_cm: L of exp(-mu L) (CPDM: 1 cm).
    """

    def __init__(self, task: str, mu_map: bool = False, path_length_cm: float = 1.0):
        self.task, self.mu_map, self.path_length_cm = task, mu_map, path_length_cm

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key in IMAGE_KEYS:
            if key in items[0]:
                stacked = np.stack([np.asarray(it[key], dtype=np.float32) for it in items])
                batch[key] = torch.from_numpy(stacked)[:, None]
        if CONTEXT_KEY in items[0]:
            batch[CONTEXT_KEY] = torch.from_numpy(np.stack([np.asarray(it[CONTEXT_KEY], dtype=np.float32)
                                                            for it in items]))
        batch["kvp"] = kvp_tensor([it.get("kvp") for it in items]) if get_task(self.task).has_ct else None
        for key in items[0]:
            if key not in batch and key != "kvp":
                batch[key] = [it[key] for it in items]
        if self.mu_map:
            add_mu_map(batch, self.task, self.path_length_cm)
        return batch


def add_mu_map(batch: dict[str, Any], task: str, path_length_cm: float = 1.0) -> dict[str, Any]:
    """Add "mu_map" = exp(-mu(HU, kVp) L), (B, 1, H, W) in (0, 1], to a batch that has a CT."""
    ct = ct_of(batch, task)
    if ct is None:
        raise ValueError(f"task {task!r} has no CT: the attenuation map needs one")
    kvp = batch.get("kvp")
    if kvp is None:
        kvp = torch.full((ct.shape[0],), DEFAULT_KVP)
    batch["mu_map"] = attenuation_map(ct, kvp.view(-1, 1, 1, 1), path_length_cm=path_length_cm).float()
    return batch


def to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move the tensors of a batch to ``device`` (metadata untouched)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def as_slices(images: torch.Tensor) -> torch.Tensor:
    """Volumes (B, C, D, H, W) -> their slices (B * D, C, H, W), volume by volume; slices are returned as given."""
    return images.movedim(2, 1).flatten(0, 1) if images.ndim == 5 else images


def as_volume(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A batch of one study's S slices in order -> a batch of one volume: images (S, 1, H, W) -> (1, 1, S, H, W);
    per-slice tensors (S,) and lists keep their first slice's value (a study's kVp, spacing, dose fraction;
    "index" and "z_mm" of its first slice). :func:`as_slices` turns the volume's prediction back into slices."""
    n = batch["source"].shape[0]
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key in IMAGE_KEYS and isinstance(value, torch.Tensor):
            out[key] = value.movedim(0, 1)[None]
        elif isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n:
            out[key] = value[:1]
        elif isinstance(value, (list, tuple)) and len(value) == n:
            out[key] = list(value[:1])
        else:
            out[key] = value
    return out

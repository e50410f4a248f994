"""Consecutive slices: slabs (the training items of volumetric (3D) methods) and the neighbours of a slice
(the 2.5-D context of slice methods).

A :class:`StudySlabs` view of a prepared dataset has one item per position a slab of ``depth`` slices can
take inside a study (slabs never cross studies): images (depth, H, W) in physical units, with the metadata of
their first slice. The slabs span the whole slice in-plane, so the Poisson forward process of uPETe projects
whole slices (its noise is the scan's) and only the depth is a patch's. :class:`~petsynth.data.batch.Collate`
stacks them to (B, 1, depth, H, W).

:func:`context_stack` gives a slice's ``context`` neighbours on each side, (2 * context, H, W) in the order
z - context .. z - 1, z + 1 .. z + context, the study's first or last slice repeated beyond its ends: the
"source_context" of an item (:class:`~petsynth.data.store.PreparedDataset` with ``context_slices``). A model
learns them at its training data's slice spacing (its card's ``slice_spacing_mm``); translation takes them
at that distance in millimetres, interpolated between the study's slices
(:func:`petsynth.translation.translate_inputs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # the store reads its items' context through this module
    from petsynth.data.store import PreparedDataset


#: The item key of a slice's neighbouring source slices, (2c, H, W).
CONTEXT_KEY = "source_context"


def context_rows(k: int, count: int, context: int) -> list[int]:
    """Indices of the ``context`` neighbours on each side of slice ``k`` of ``count`` slices, in the order
    k - context .. k - 1, k + 1 .. k + context, clamped to 0 .. count - 1 (the end slices repeated)."""
    if context < 0 or not 0 <= k < count:
        raise IndexError(f"slice {k} of {count} (context {context})")
    return [min(max(k + d, 0), count - 1) for d in (*range(-context, 0), *range(1, context + 1))]


def context_stack(volume: Any, k: int, context: int, step: float = 1.0) -> np.ndarray:
    """The neighbours of slice ``k`` of ``volume`` (anything sliced like an array along its first axis: a
    numpy volume, a zarr array; (n, H, W)) as float32 (2 * context, H, W), in the order of
    :func:`context_rows`, ``step`` slices apart: at positions k + d * step (d = -context .. -1, 1 .. context),
    clamped to the volume, linearly interpolated between slices when not whole (a study translated on slices
    spaced unlike the training data's: ``step`` = training spacing / its spacing). One contiguous read."""
    count = int(volume.shape[0])
    if not step > 0:
        raise ValueError(f"the context step must be > 0 slices, got {step}")
    if context == 0:
        return np.zeros((0, *volume.shape[1:]), dtype=np.float32)
    if step == 1.0:
        rows = context_rows(k, count, context)
        lo, hi = min(rows), max(rows) + 1
        return np.asarray(volume[lo:hi], dtype=np.float32)[[r - lo for r in rows]]
    context_rows(k, count, context)  # the same checks
    at = np.clip([k + d * step for d in (*range(-context, 0), *range(1, context + 1))], 0, count - 1)
    below = np.floor(at).astype(int)
    above = np.minimum(below + 1, count - 1)
    lo, hi = int(below.min()), int(above.max()) + 1
    block = np.asarray(volume[lo:hi], dtype=np.float32)
    w = (at - below).astype(np.float32)[:, None, None]
    return (1 - w) * block[below - lo] + w * block[above - lo]


class StudySlabs(torch.utils.data.Dataset):
    """Every slab of ``depth`` consecutive slices of the studies of ``dataset`` (studies with fewer slices
    give none).

    Args:
        dataset: a prepared dataset or split.
        depth: slices per slab (>= 1).
        stride: slices between the starts of successive slabs of a study (1: every position).
    """

    def __init__(self, dataset: PreparedDataset, depth: int, stride: int = 1):
        if depth < 1 or stride < 1:
            raise ValueError(f"depth and stride must be >= 1, got {depth} and {stride}")
        self.dataset, self.depth = dataset, int(depth)
        self.starts: list[tuple[str, int]] = [
            (study, start) for study in dataset.studies
            for start in range(0, len(dataset.study_slices(study)) - self.depth + 1, stride)]
        if not self.starts:
            longest = max((len(dataset.study_slices(s)) for s in dataset.studies), default=0)
            raise ValueError(f"no study of {dataset.root} has {self.depth} slices for a slab (longest: {longest})")

    @property
    def task(self) -> str:
        return self.dataset.task

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"slab {i} out of range for {len(self)} slabs")
        study, start = self.starts[i]
        return self.dataset.slab(study, start, self.depth)

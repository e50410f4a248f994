"""Slabs of consecutive slices: the training items of volumetric (3D) methods.

A :class:`StudySlabs` view of a prepared dataset has one item per position a slab of ``depth`` slices can
take inside a study (slabs never cross studies): images (depth, H, W) in physical units, with the metadata of
their first slice. The slabs span the whole slice in-plane, so the Poisson forward process of uPETe projects
whole slices (its noise is the scan's) and only the depth is a patch's. :class:`~petsynth.data.batch.Collate`
stacks them to (B, 1, depth, H, W).
"""

from __future__ import annotations

from typing import Any

import torch

from petsynth.data.store import PreparedDataset


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

"""Uptake-balanced slice sampling: how often the trainer draws each training slice.

A whole-body study is mostly slices whose PET is low and even (fat, muscle, lung, bowel); the slices that hold
what a CT -> PET model must learn to place (brain, myocardium, kidneys, bladder, lesions) are a minority, so a
uniform draw shows them rarely. ``uptake`` balancing puts each slice in a bin by its target's high quantile
(the ``quantile`` of its PET, SUV) with bin edges ``edges`` (SUV), and weights the slices so that every
non-empty bin is drawn equally often; within a bin slices are drawn uniformly. It needs no labels (it reads
only the PET), so it applies to patient data as well as to phantoms.

Draws are a pure function of (seed, position) like the uniform stream (``petsynth.train.trainer``), so a
resumed run continues the same sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: Bin edges (SUV) of a slice's high PET quantile: background-only, liver-level, brain/heart-level, bladder-level.
UPTAKE_EDGES_SUV: tuple[float, ...] = (2.0, 3.5, 6.0, 10.0)
#: The quantile of a slice's PET that places it in a bin (0.99: the top 1 % of its pixels).
UPTAKE_QUANTILE: float = 0.99


def slice_uptake(dataset, quantile: float = UPTAKE_QUANTILE) -> np.ndarray:
    """The ``quantile`` of every slice's target (SUV), in dataset order, (n,) float64. ``dataset`` is a
    :class:`petsynth.data.store.PreparedDataset` (read study by study)."""
    values = []
    for study in dataset.studies:
        count = len(dataset.study_slices(study))
        if count == 0:
            continue
        target = np.asarray(dataset.slab(study, 0, count)["target"], dtype=np.float32)
        values.append(np.quantile(target.reshape(count, -1), quantile, axis=1))
    return np.concatenate(values) if values else np.zeros(0)


def balance_weights(uptake: np.ndarray, edges: Sequence[float] = UPTAKE_EDGES_SUV) -> np.ndarray:
    """Sampling weights (n,), summing to 1, that draw every non-empty uptake bin equally often."""
    uptake = np.asarray(uptake, dtype=np.float64)
    if uptake.size == 0:
        raise ValueError("no slices to weight")
    bins = np.digitize(uptake, np.asarray(edges, dtype=np.float64))
    counts = np.bincount(bins)
    weights = 1.0 / counts[bins]
    return weights / weights.sum()


def weighted_indices(weights: torch.Tensor, seed: int, start: int, count: int) -> list[int]:
    """``count`` indices drawn with replacement by ``weights`` for sample positions start..start+count-1;
    the same (seed, start, count) gives the same indices."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * start + 1)
    return torch.multinomial(weights, count, replacement=True, generator=gen).tolist()

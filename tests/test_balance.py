"""Uptake-balanced slice sampling (petsynth.data.balance) and the trainer's ``slice_balance`` option."""

import numpy as np
import pytest
import torch

from petsynth.data.balance import UPTAKE_EDGES_SUV, balance_weights, slice_uptake, weighted_indices


def test_weights_give_every_bin_the_same_mass():
    # 6 background slices, 3 liver-level, 1 bladder-level: bins by the edges 2, 3.5, 6, 10 SUV
    uptake = np.array([1.0, 1.2, 0.5, 1.9, 1.1, 0.9, 2.5, 3.0, 2.2, 25.0])
    w = balance_weights(uptake)
    assert w.sum() == pytest.approx(1.0)
    bins = np.digitize(uptake, UPTAKE_EDGES_SUV)
    masses = [w[bins == b].sum() for b in np.unique(bins)]
    np.testing.assert_allclose(masses, 1 / 3)          # three non-empty bins, a third each
    assert w[-1] == pytest.approx(1 / 3) and w[0] == pytest.approx(1 / 18)  # 1/3 over 6 slices


def test_weighted_draws_follow_the_weights_and_repeat():
    w = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    draws = np.array(weighted_indices(w, seed=3, start=0, count=20000))
    freq = np.bincount(draws, minlength=3) / draws.size
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.015)
    assert weighted_indices(w, 3, 80, 8) == weighted_indices(w, 3, 80, 8)       # a pure function: resumes
    assert weighted_indices(w, 3, 80, 64) != weighted_indices(w, 3, 88, 64)     # positions differ


def test_slice_uptake_is_each_slices_quantile(tiny_dataset):
    from petsynth.data.store import open_dataset

    ds = open_dataset(tiny_dataset, "train")
    got = slice_uptake(ds, 0.99)
    assert got.shape == (len(ds),)
    for i in (0, len(ds) // 2, len(ds) - 1):
        assert got[i] == pytest.approx(float(np.quantile(np.asarray(ds[i]["target"]), 0.99)), rel=1e-5)


def test_trainer_draws_high_uptake_slices_more_often(tiny_dataset, tmp_path):
    from petsynth.train.trainer import RunConfig, Trainer
    from tests.conftest import TINY_AE, tiny_train_config

    cfg = tiny_train_config(steps=1, slice_balance="uptake")
    trainer = Trainer(RunConfig(method="vqgan", data=str(tiny_dataset), method_config=TINY_AE, train=cfg),
                      tmp_path / "run")
    w = trainer._slice_weights().numpy()
    uptake = slice_uptake(trainer.train_data)
    bins = np.digitize(uptake, UPTAKE_EDGES_SUV)
    assert len(np.unique(bins)) >= 2, "the tiny phantoms should span at least two uptake bins"
    masses = [w[bins == b].sum() for b in np.unique(bins)]
    np.testing.assert_allclose(masses, 1 / len(masses), rtol=1e-9)
    rare = min(np.unique(bins), key=lambda b: (bins == b).sum())
    assert w[bins == rare].max() > 1 / len(w)           # a rare bin's slices drawn more often than uniformly

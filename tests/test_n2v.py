"""Noise2Void (``petsynth.methods.n2v``), uPETe's unsupervised comparison: the blind spots hide each chosen
pixel behind another pixel of its window, and the denoiser learns from the low-dose images alone."""

import numpy as np
import pytest
import torch

from conftest import loss_before_and_after
from petsynth.methods.base import build_method
from petsynth.methods.n2v import blind_spots

TINY_UNET = {"unet": {"features": [8, 8, 16, 16, 32, 8], "norm": "batch"}}


def test_blind_spots_take_another_pixel_of_their_window_and_leave_the_rest():
    h = w = 40
    x = torch.arange(2 * h * w, dtype=torch.float32).view(2, 1, h, w)  # each value names its pixel
    altered, mask = blind_spots(x, 0.1, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(altered[~mask], x[~mask])
    assert 0.07 < mask.float().mean() < 0.13
    b, _, rows, cols = torch.nonzero(mask, as_tuple=True)
    source = altered[mask].long() - b * h * w
    src_rows, src_cols = source // w, source % w
    assert torch.all((src_rows - rows).abs() <= 2) and torch.all((src_cols - cols).abs() <= 2)
    assert torch.all((src_rows != rows) | (src_cols != cols))  # never the hidden pixel itself


def test_it_learns_from_the_low_dose_images_alone():
    torch.manual_seed(0)
    method = build_method("n2v", TINY_UNET, task="lpet2spet")
    y, x = np.mgrid[:32, :32] - 15.5
    disc = np.where(x ** 2 + y ** 2 < 12 ** 2, 2.0, 0.1)
    noisy = disc + np.random.default_rng(0).normal(0, 0.4, (8, 32, 32)) * (disc > 1)
    batch = {"source": torch.from_numpy(noisy.astype(np.float32))[:, None]}  # no "target" at all
    before, after = loss_before_and_after(method, batch, lr=3e-3, steps=30)
    assert after < 0.7 * before, (before, after)
    out = method.eval().translate(batch)
    assert out.shape == batch["source"].shape and torch.isfinite(out).all()


def test_an_even_window_is_refused():
    with pytest.raises(ValueError, match="odd"):
        build_method("n2v", {**TINY_UNET, "neighbourhood": 4}, task="lpet2spet")

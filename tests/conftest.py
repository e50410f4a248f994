"""Suite-wide settings: one torch thread (tiny tensors gain nothing from two, and two OpenMP threads stall
badly when the other core is busy, e.g. under a DataLoader or a parallel process)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

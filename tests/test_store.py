"""The dataset store: atomic per-study writes, random access, splits, DataLoader workers."""

import numpy as np
import pytest
import torch

from petsynth.data import open_dataset
from petsynth.data.store import (DatasetError, create_dataset, finished_studies, write_splits,
                                 write_study)


def _study(root, name, n, offset):
    src = np.arange(n * 16 * 16, dtype=np.float32).reshape(n, 16, 16) + offset
    tgt = src / 100.0
    write_study(root, name, {"source": src, "target": tgt, "labels": (src % 3).astype(np.uint8)},
                {"index": list(range(n)), "z_mm": [10.0 + 3 * k for k in range(n)]},
                {"spacing_mm": [2.0, 2.0], "kvp": 120.0, "vendor": "GE", "units": "BQML", "dose_fraction": None})
    return src, tgt


def test_write_open_index_split_and_load(tmp_path):
    root = create_dataset(tmp_path / "ds", task="ct2pet", size=16)
    a_src, _ = _study(root, "a1", 3, 0)
    b_src, b_tgt = _study(root, "b2", 5, 1000)
    write_splits(root, {"a1": "train", "b2": "test"})
    ds = open_dataset(root)
    assert len(ds) == 8 and ds.task == "ct2pet"
    item = ds[4]  # second slice of the second study
    assert item["study"] == "b2" and item["split"] == "test" and item["index"] == 1 and item["z_mm"] == 13.0
    np.testing.assert_array_equal(item["source"], b_src[1])
    np.testing.assert_allclose(item["target"], b_tgt[1])
    assert item["source"].dtype == np.float32 and item["kvp"] == 120.0 and item["spacing_mm"] == [2.0, 2.0]
    np.testing.assert_array_equal(ds[-1]["source"], b_src[-1])
    with pytest.raises(IndexError):
        ds[8]
    train = ds.split("train")
    assert len(train) == 3 and {train[i]["study"] for i in range(3)} == {"a1"}
    loader = torch.utils.data.DataLoader(
        open_dataset(root, split="test"), batch_size=2, num_workers=2,
        collate_fn=lambda items: torch.stack([torch.from_numpy(it["source"]) for it in items]))
    stacked = torch.cat(list(loader))
    np.testing.assert_array_equal(stacked.numpy(), b_src)


def test_resume_checks_settings_and_interrupted_study_leaves_nothing(tmp_path):
    root = create_dataset(tmp_path / "ds", task="ct2pet", size=16)
    with pytest.raises(DatasetError, match="already holds"):
        create_dataset(root, task="ct2pet", size=16)
    with pytest.raises(DatasetError, match="size=16, not 256"):
        create_dataset(root, task="ct2pet", size=256, resume=True)
    assert create_dataset(root, task="ct2pet", size=16, resume=True) == root
    with pytest.raises(ValueError, match="shape"):
        write_study(root, "bad", {"source": np.zeros((2, 16, 16)), "target": np.zeros((3, 16, 16))},
                    {"index": [0, 1, 2], "z_mm": [0, 1, 2]}, {})
    text = np.full((3, 16, 16), "x")  # fails while the study is being written
    with pytest.raises(ValueError):
        write_study(root, "half", {"source": np.zeros((3, 16, 16)), "target": np.zeros((3, 16, 16)),
                                   "truth": text}, {"index": [0, 1, 2], "z_mm": [0, 1, 2]}, {})
    assert finished_studies(root) == [] and list((root / "studies").iterdir()) == []
    with pytest.raises(DatasetError, match="not a petsynth dataset"):
        open_dataset(tmp_path)

"""The dataset store: atomic per-study writes, random access, splits, DataLoader workers."""

import numpy as np
import pytest
import torch
import zarr

from petsynth.data import open_dataset
from petsynth.data.store import (_COMPRESSOR, SLICES_PER_SHARD, DatasetError, create_dataset, finished_studies,
                                 write_splits, write_study)


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


def _slices(n, dtype, seed):
    """Random slices with constant ones mixed in: zero (the fill value, which zarr skips), -0.0, and 7."""
    rng = np.random.default_rng(seed)
    a = (rng.normal(0, 100, (n, 8, 8)) if dtype == np.float32 else rng.integers(0, 5, (n, 8, 8))).astype(dtype)
    a[n // 2] = 0
    a[-1] = 7
    if dtype == np.float32 and n > 2:
        a[1] = -0.0
    return a


@pytest.mark.parametrize("n", [1, 63, 64, 65, 130])
def test_sharded_write_reads_back_bit_for_bit_through_zarr_and_dataset(tmp_path, n):
    src, tgt, lab = _slices(n, np.float32, n), _slices(n, np.float32, n + 1), _slices(n, np.uint8, n + 2)
    root = create_dataset(tmp_path / "ds", task="ct2pet", size=8)
    path = write_study(root, "s1", {"source": src, "target": tgt, "labels": lab},
                       {"index": list(range(n)), "z_mm": [float(k) for k in range(n)]}, {})
    group = zarr.open_group(path, mode="r")
    for name, a in (("source", src), ("target", tgt), ("labels", lab)):
        back = group[name][:]
        assert back.dtype == a.dtype and back.tobytes() == a.tobytes()
    ds = open_dataset(root)
    assert len(ds) == n
    for k in {k % n for k in (0, 1, n // 2, 63, 64, n - 1)}:
        item = ds[k]
        assert item["index"] == k and item["source"].tobytes() == src[k].tobytes()
        assert item["target"].tobytes() == tgt[k].tobytes() and item["labels"].tobytes() == lab[k].tobytes()


@pytest.mark.parametrize("n", [63, 65])
def test_sharded_write_matches_zarrs_own_write(tmp_path, n):
    arrays = {"source": _slices(n, np.float32, 1), "target": _slices(n, np.float32, 2),
              "labels": _slices(n, np.uint8, 3)}
    ours = zarr.open_group(write_study(tmp_path, "s1", arrays, {"index": list(range(n)), "z_mm": [0.0] * n}, {}),
                           mode="r")
    theirs = zarr.open_group(tmp_path / "zarr", mode="w")
    for name, a in arrays.items():
        theirs.create_array(name, data=a, chunks=(1, 8, 8), shards=(min(n, SLICES_PER_SHARD), 8, 8),
                            compressors=_COMPRESSOR)
        assert ours[name].metadata.to_dict() == theirs[name].metadata.to_dict()  # the format does not drift
        assert ours[name][:].tobytes() == theirs[name][:].tobytes() == a.tobytes()
        assert ours[name][n - 1].tobytes() == theirs[name][n - 1].tobytes()


def test_sharded_write_refuses_a_layout_it_does_not_produce(tmp_path, monkeypatch):
    from petsynth.data import store

    monkeypatch.setattr(store, "_COMPRESSOR", zarr.codecs.ZstdCodec(level=1))  # not blosc: must not guess
    with pytest.raises(RuntimeError, match="does not produce"):
        write_study(tmp_path, "s1", {"source": np.ones((2, 8, 8)), "target": np.ones((2, 8, 8))},
                    {"index": [0, 1], "z_mm": [0.0, 1.0]}, {})
    assert finished_studies(tmp_path) == []


def test_label_table_is_stored_checked_and_empty_when_absent(tmp_path):
    root = create_dataset(tmp_path / "ds", task="ct2pet", size=16)
    _study(root, "old", 2, 0)  # no table, as datasets written before tables were stored
    arrays = {"source": np.zeros((2, 16, 16)), "target": np.zeros((2, 16, 16)),
              "labels": np.full((2, 16, 16), 3, np.uint8)}
    meta = {"index": [0, 1], "z_mm": [0.0, 1.0]}
    table = [{"label": np.int64(3), "name": "widget", "kind": "organ"}]
    write_study(root, "new", arrays, meta, {"label_table": table})
    ds = open_dataset(root)
    assert ds.label_table("old") == [] and ds.label_table("new") == [{"label": 3, "name": "widget", "kind": "organ"}]
    assert "labels" in ds[0] and "label_table" not in ds[0]  # items are unchanged
    for bad in ([{"label": 0, "name": "air", "kind": "organ"}], [{"label": 3, "name": "a", "kind": "tumour"}],
                [{"label": 3, "name": "a", "kind": "organ"}, {"label": 3, "name": "b", "kind": "lesion"}]):
        with pytest.raises(ValueError, match="bad label table row"):
            write_study(root, "bad", arrays, meta, {"label_table": bad})
    with pytest.raises(ValueError, match="needs a labels array"):
        write_study(root, "bad", {k: arrays[k] for k in ("source", "target")}, meta, {"label_table": table})
    assert finished_studies(root) == ["new", "old"]

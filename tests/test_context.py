"""2.5-D context: a slice method given the neighbouring source slices as maps (``context_slices``).

The neighbours are read from the study the slice belongs to (never from the next study), the study's end
slices repeated beyond its ends; they reach the network as extra channels after the maps; training, the
dataset path of evaluation and translation of a whole study all give them; translation takes them at the
training data's slice spacing in millimetres, interpolated between the study's slices."""

import numpy as np
import pytest
import torch

from petsynth.data.batch import CONTEXT_KEY, Collate
from petsynth.data.slabs import context_rows, context_stack
from petsynth.data.store import open_dataset
from petsynth.evaluate import evaluate
from petsynth.inference import PredictOptions, load_model, predict_dataset
from petsynth.methods.base import build_method
from petsynth.phantom.presets import PRESETS
from petsynth.train.trainer import RunConfig, train
from petsynth.translation import translate
from conftest import TINY_DENOISER, tiny_train_config

TINY_UNET = {"unet": {"features": [4, 8, 16, 32, 64, 4]}}


def test_context_rows_are_the_neighbours_with_the_ends_repeated():
    assert context_rows(5, 10, 2) == [3, 4, 6, 7]
    assert context_rows(0, 10, 2) == [0, 0, 1, 2]
    assert context_rows(9, 10, 1) == [8, 9]
    assert context_rows(0, 1, 1) == [0, 0]
    assert context_rows(3, 10, 0) == []
    with pytest.raises(IndexError):
        context_rows(10, 10, 1)
    volume = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)
    np.testing.assert_array_equal(context_stack(volume, 1, 2)[:, 0, 0], [0, 0, 2, 3])
    assert context_stack(volume, 1, 0).shape == (0, 2, 3)
    # 2.5 slices apart (a model trained on 10 mm slices, a study of 4 mm): slice k's values are k, interpolated
    np.testing.assert_allclose(context_stack(volume, 3, 1, step=2.5)[:, 0, 0], [0.5, 5.0])
    np.testing.assert_allclose(context_stack(volume, 2, 2, step=0.5)[:, 0, 0], [1.0, 1.5, 2.5, 3.0])
    with pytest.raises(ValueError, match="step"):
        context_stack(volume, 1, 1, step=0)


def test_items_carry_their_neighbours_from_their_own_study(tiny_dataset):
    plain = open_dataset(tiny_dataset)
    data = plain.with_context(2)
    assert CONTEXT_KEY not in plain[0] and data.context_slices == 2
    for study in data.studies:
        rows = data.study_slices(study)
        sources = np.stack([plain[i]["source"] for i in rows])
        for k in (0, 1, len(rows) // 2, len(rows) - 1):
            got = data[rows[k]][CONTEXT_KEY]
            want = sources[[min(max(k + d, 0), len(rows) - 1) for d in (-2, -1, 1, 2)]]
            np.testing.assert_array_equal(got, want)
    assert open_dataset(tiny_dataset, split="train", context_slices=1).split("val").context_slices == 1
    batch = Collate("ct2pet")([data[0], data[1], data[2]])
    assert batch[CONTEXT_KEY].shape == (3, 4, 32, 32) and batch["source"].shape == (3, 1, 32, 32)


def test_the_neighbours_reach_the_network_after_the_maps(tiny_dataset):
    """unet input: concat(source, the window, the 2c neighbours in network units, the neighbours windowed)."""
    method = build_method("unet", {**TINY_UNET, "ct_windows": [[-160, 240]], "context_slices": 1})
    assert method.context_slices == 1 and method.num_maps == 1 + 2 * 2
    assert method.net.stages[0].conv_0.conv_0.conv.in_channels == 6
    data = open_dataset(tiny_dataset).with_context(1)
    batch = Collate("ct2pet")([data[4], data[5]])
    x = method.source_with_maps(batch).numpy()
    ctx = batch[CONTEXT_KEY].numpy()
    src = method.config.transforms["source"]
    np.testing.assert_allclose(x[:, 2:4], src.forward(ctx), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(x[:, 4:6], np.clip((ctx + 160) / 400, 0, 1), rtol=1e-6, atol=1e-6)
    # the neighbour of slice 5 below it is slice 4: the first context channel of item 5 is item 4's source
    np.testing.assert_allclose(x[1, 2], x[0, 0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="context_slices=1"):
        method.source_with_maps(Collate("ct2pet")([open_dataset(tiny_dataset)[4]]))


def test_the_bridge_encodes_the_neighbours_like_its_maps(tiny_dataset):
    """cpdm: the neighbours go through the map encoder (bilinear resize + a 1x1 conv per map), after M_mu."""
    torch.manual_seed(0)
    method = build_method("cpdm", {"pixel_space": True, "use_attention_map": False, "use_attenuation_map": True,
                                   "denoiser": TINY_DENOISER, "context_slices": 1})
    assert method.num_maps == 3 and method.map_encoder.proj.weight.shape[0] == 3 * 3
    data = open_dataset(tiny_dataset).with_context(1)
    batch = Collate("ct2pet", mu_map=True)([data[2], data[9]])
    with torch.no_grad():
        got = method._conditioning(batch)
    w = method.map_encoder.proj.weight.detach().numpy()[:, 0, 0, 0]
    neighbours = method.config.transforms["source"].forward(batch[CONTEXT_KEY]).numpy()
    np.testing.assert_allclose(got[:, 3:6].numpy(), neighbours[:, :1] * w[3:6, None, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[:, 6:9].numpy(), neighbours[:, 1:] * w[6:9, None, None], rtol=1e-5, atol=1e-6)


def test_a_context_model_trains_evaluates_and_translates(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    model = train(RunConfig(method="unet", data=str(tiny_dataset), train=tiny_train_config(steps=2),
                            method_config={**TINY_UNET, "context_slices": 1}), tmp_path / "run")
    method = load_model(model)
    assert method.context_slices == 1
    tiny = PRESETS["tiny"]  # the prepared slices are the PET's: the covered range over the slice count
    want_dz = (tiny.body_range_mm[1] - tiny.body_range_mm[0]) / tiny.num_slices
    assert method.card.data["slice_spacing_mm"] == pytest.approx(want_dz, rel=0.05)

    # the dataset path: each slice with its neighbours, as in training
    test = open_dataset(tiny_dataset, split="test")
    preds = torch.cat([p for _, p in predict_dataset(method, test, PredictOptions(batch_size=4))])
    assert preds.shape == (len(test), 1, 32, 32) and torch.isfinite(preds).all()
    report = evaluate([model, "phantom-cpdm"], tiny_dataset, tmp_path / "eval", max_slices=6)  # one without
    assert report.models == ["run", "phantom-cpdm"]
    assert all(np.isfinite(report.overall[m]["truth"]["mae_suv"]) for m in report.models)

    # a whole study, translated on its CT's slices (5 mm): the neighbours are taken 10 mm away, as trained
    raw = next(p for p in sorted((tiny_dataset.parent / "raw").iterdir()) if p.is_dir())
    result = translate(method, raw, tmp_path / "out", write_dicom=False)
    assert result.suv.shape[0] == result.geometry.shape[0] and np.isfinite(result.suv).all()
    assert result.geometry.spacing[0] == pytest.approx(tiny.ct_slice_mm)
    assert result.info["context"] == {"slices": 1, "spacing_mm": pytest.approx(want_dz, rel=0.05)}

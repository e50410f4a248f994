"""3D methods (uPETe's volumes): slabs of slices as training items, the 3D autoencoder and denoiser, whole
studies enhanced by Gaussian-blended sliding windows, checked against the slices they are made of."""

import numpy as np
import pytest
import torch

from conftest import TINY_DENOISER, loss_before_and_after, tiny_train_config
from petsynth.data.batch import Collate, as_slices, as_volume
from petsynth.data.slabs import StudySlabs
from petsynth.data.store import open_dataset
from petsynth.inference import PredictOptions, predict_dataset
from petsynth.methods.base import MethodError, build_method

DEPTH = 4
TINY_3D = {"pixel_space": True, "spatial_dims": 3, "slab_depth": DEPTH, "denoiser": TINY_DENOISER,
           "guidance_channels": 8, "guidance_heads": 2, "window": 4, "sample_steps": 2}
TINY_VQ_3D = {"autoencoder": {"spatial_dims": 3, "base_channels": 8, "norm_num_groups": 4, "downsample_factor": 2,
                              "codebook_size": 32},
              "discriminator": {"channels": 8, "num_layers": 1, "kernel_size": 3}, "slab_depth": DEPTH, "discriminator_start": 0}


def test_slabs_are_the_studies_consecutive_slices_and_never_cross_a_study(lowdose_studies):
    dataset = open_dataset(lowdose_studies / "ds")
    slabs = StudySlabs(dataset, DEPTH)
    lengths = [len(dataset.study_slices(s)) for s in dataset.studies]
    assert len(slabs) == sum(n - DEPTH + 1 for n in lengths)
    for i in (0, len(slabs) - 1, lengths[0] - DEPTH, lengths[0] - DEPTH + 1):
        slab = slabs[i]
        first = dataset.study_slices(slab["study"])[slab["index"]]
        for role in ("source", "target", "guidance"):
            expected = np.stack([dataset[first + k][role] for k in range(DEPTH)])
            np.testing.assert_array_equal(slab[role], expected)
        assert all(dataset.slice_study(first + k) == slab["study"] for k in range(DEPTH))
    batch = Collate("lpet2spet")([slabs[0], slabs[1]])
    assert batch["target"].shape == (2, 1, DEPTH, 32, 32) and batch["kvp"].shape == (2,)
    with pytest.raises(ValueError, match="slices for a slab"):
        StudySlabs(dataset, 1000)


def test_a_study_as_one_volume_and_back():
    slices = {"source": torch.arange(5 * 6, dtype=torch.float32).reshape(5, 1, 2, 3), "kvp": torch.full((5,), 120.0),
              "spacing_mm": [(4.0, 4.0)] * 5, "study": ["a"] * 5}
    volume = as_volume(slices)
    assert volume["source"].shape == (1, 1, 5, 2, 3) and volume["kvp"].shape == (1,)
    assert volume["spacing_mm"] == [(4.0, 4.0)] and volume["study"] == ["a"]
    torch.testing.assert_close(volume["source"][0, 0, 3], slices["source"][3, 0])
    torch.testing.assert_close(as_slices(volume["source"]), slices["source"])


def test_windows_are_blended_without_seams(lowdose_studies):
    """A model that gives its window back unchanged must give the whole volume back unchanged: every voxel's
    Gaussian weights sum to one over the overlapping windows; each window holds slab_depth whole slices."""
    method = build_method("upete", TINY_3D, task="lpet2spet").eval()
    windows = []

    def identity(batch, fraction, steps, generator):
        windows.append(tuple(batch["source"].shape))
        assert batch["guidance"].shape == batch["source"].shape  # the CT window cut alike
        return batch["source"] * (1 + 0 * batch["guidance"])

    method._enhance = identity
    low = torch.rand(1, 1, 11, 32, 32) * 5
    batch = {"source": low, "guidance": torch.rand(1, 1, 11, 32, 32) * 100, "kvp": torch.tensor([120.0]),
             "spacing_mm": [(4.0, 4.0)]}
    out = method.translate(batch, dose_fraction=0.1)
    torch.testing.assert_close(out, low, rtol=1e-5, atol=1e-5)
    assert len(windows) >= 11 // DEPTH + 1 and set(windows) == {(1, 1, DEPTH, 32, 32)}


def test_3d_upete_learns_from_standard_dose_slabs_and_enhances_whole_studies(lowdose_studies, tmp_path):
    from petsynth.train.trainer import RunConfig, train
    from petsynth.inference import load_model

    torch.manual_seed(0)
    method = build_method("upete", TINY_3D, task="lpet2spet")
    assert method.slab_depth == DEPTH
    slabs = StudySlabs(open_dataset(lowdose_studies / "ds"), DEPTH)
    batch = Collate("lpet2spet")([slabs[i] for i in (0, 5)])
    del batch["source"]  # never read in training
    before, after = loss_before_and_after(method, batch, lr=2e-3, steps=20)
    assert after < 0.7 * before, (before, after)

    train(RunConfig(method="upete", task="lpet2spet", data=str(lowdose_studies / "ds"), method_config=TINY_3D,
                    train=tiny_train_config(steps=2, batch_size=2, validate_every=2, checkpoint_every=2)),
          tmp_path / "run")
    model = load_model(tmp_path / "run")
    dataset = open_dataset(lowdose_studies / "ds")
    preds = [(b["study"][0], p) for b, p in predict_dataset(model, dataset, PredictOptions(steps=2))]
    assert [s for s, _ in preds] == dataset.studies  # one call per study, its slices in order
    for study, pred in preds:
        assert pred.shape == (len(dataset.study_slices(study)), 1, 32, 32) and torch.isfinite(pred).all()


def test_3d_vqgan_trains_on_slabs_and_gives_upete_its_latent(lowdose_studies, tmp_path):
    from petsynth.train.trainer import RunConfig, train

    torch.manual_seed(0)
    vq = build_method("vqgan", TINY_VQ_3D, task="lpet2spet")
    slabs = StudySlabs(open_dataset(lowdose_studies / "ds"), DEPTH)
    batch = Collate("lpet2spet")([slabs[0], slabs[3]])
    losses = vq.losses(batch, "autoencoder", 1)
    assert losses["generator"].ndim == 0 and torch.isfinite(losses["loss"])
    train(RunConfig(method="vqgan", task="lpet2spet", data=str(lowdose_studies / "ds"), method_config=TINY_VQ_3D,
                    train=tiny_train_config(steps=2, batch_size=2, validate_every=2, checkpoint_every=2)),
          tmp_path / "vq")
    latent = {**TINY_3D, "pixel_space": False, "autoencoder_checkpoint": str(tmp_path / "vq" / "model")}
    upete = build_method("upete", latent, task="lpet2spet")
    assert upete._to_space(batch["target"]).shape == (2, 3, DEPTH // 2, 16, 16)
    out = upete.eval().translate(as_volume(Collate("lpet2spet")([open_dataset(lowdose_studies / "ds")[i]
                                                                  for i in range(6)])), steps=1)
    assert out.shape == (1, 1, 6, 32, 32) and torch.isfinite(out).all()
    with pytest.raises(MethodError, match="needs a 2D autoencoder.* is 3D"):
        build_method("upete", {**latent, "spatial_dims": 2}, task="lpet2spet")


def test_evaluate_refuses_scattered_slices_for_a_3d_model(lowdose_studies, tmp_path):
    from petsynth.evaluate import EvaluationError, evaluate
    from petsynth.train.checkpoint import ModelCard, save_checkpoint

    method = build_method("upete", TINY_3D, task="lpet2spet")
    card = ModelCard(method="upete", task="lpet2spet", config=method.config.to_dict(), step=1,
                     intensity={k: t.to_dict() for k, t in method.intensity_transforms().items()})
    model = save_checkpoint(tmp_path / "model", card, {"model": method.state_dict()})
    with pytest.raises(EvaluationError, match="whole studies"):
        evaluate([model], lowdose_studies / "ds", tmp_path / "eval", split="train", max_slices=4)

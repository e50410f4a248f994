"""Suite-wide settings and shared fixtures.

One torch thread: tiny tensors gain nothing from two, and two OpenMP threads stall badly when the other core
is busy (a DataLoader, a parallel process). ``tiny_dataset`` (3 phantom PET/CT studies at 32x32) and
``tiny_parts`` (a vqgan and an attention model after two steps) are shared by the training tests.
"""

import pytest
import torch

TINY_AE = {"autoencoder": {"base_channels": 8, "norm_num_groups": 4, "codebook_size": 32},
           "discriminator": {"channels": 8}, "discriminator_start": 2}
TINY_SEG = {"segmenter": {"decoder_channels": [16, 8, 8, 8, 8]}}
TINY_DENOISER = {"channels": [16, 32], "attention_levels": [False, True], "num_head_channels": 16,
                 "norm_num_groups": 8}
TINY_P2P = {"generator": {"num_downs": 5, "base_channels": 8}, "discriminator": {"channels": 8}}
TINY_CG = {"generator": {"base_channels": 8, "num_blocks": 2}, "discriminator": {"channels": 8}}


def tiny_train_config(**kw):
    from petsynth.train.trainer import TrainConfig

    base = dict(steps=4, batch_size=4, checkpoint_every=2, validate_every=2, log_every=1, val_batches=1)
    return TrainConfig(**{**base, **kw})


def loss_before_and_after(method, batch, lr, steps=40, seed=123):
    """The method's "model" loss on ``batch`` with the same random draws (t, noise) before and after ``steps``
    Adam steps at ``lr``: (before, after)."""

    def fixed_loss():
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        with torch.no_grad():
            loss = method.losses(batch, "model", 0)["loss"].item()
        torch.set_rng_state(state)
        return loss

    before = fixed_loss()
    opt = torch.optim.Adam(method.optimizer_groups()["model"], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        method.losses(batch, "model", 0)["loss"].backward()
        opt.step()
    return before, fixed_loss()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    from petsynth.data.prepare import prepare_dataset
    from petsynth.phantom import write_studies

    root = tmp_path_factory.mktemp("tiny")
    write_studies(root / "raw", task="ct2pet", studies=3, seed=5, fmt="dicom", preset="tiny")
    prepare_dataset([root / "raw"], root / "ds", "ct2pet", size=32, key=b"k")
    return root / "ds"


@pytest.fixture(scope="session")
def lowdose_studies(tmp_path_factory):
    """Two tiny lpet2spet phantom studies (DICOM under ``raw/``, a low-dose series at 1/10) and their dataset
    prepared at 32 px, every study in train (``ds/``)."""
    from petsynth.data.prepare import prepare_dataset
    from petsynth.phantom import write_studies

    root = tmp_path_factory.mktemp("lowdose")
    write_studies(root / "raw", task="lpet2spet", studies=2, seed=31, fmt="dicom", preset="tiny",
                  dose_fractions=[0.1])
    prepare_dataset([root / "raw"], root / "ds", "lpet2spet", size=32, key=b"upete", split=(1.0, 0.0, 0.0))
    return root


@pytest.fixture(scope="session")
def tiny_parts(tiny_dataset, tmp_path_factory):
    """Model folders of a vqgan and an attention run of 2 steps (CPDM/LDM prerequisites); read-only."""
    from petsynth.train.trainer import RunConfig, train

    root = tmp_path_factory.mktemp("parts")
    cfg = tiny_train_config(steps=2)
    ae = train(RunConfig(method="vqgan", data=str(tiny_dataset), method_config=TINY_AE, train=cfg), root / "vq")
    seg = train(RunConfig(method="attention", data=str(tiny_dataset), method_config=TINY_SEG, train=cfg),
                root / "att")
    return ae, seg

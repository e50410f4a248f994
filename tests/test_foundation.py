"""Configs, intensity transforms, checkpoints, atomic writes and the CLI entry point."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import petsynth
from petsynth.cli import app
from petsynth.config import Config, ConfigError
from petsynth.data.intensity import IntensityTransform
from petsynth.train.checkpoint import (CARD_FILE, WEIGHTS_FILE, CheckpointError, ModelCard, load_card,
                                       load_checkpoint, save_checkpoint)
from petsynth.utils.files import atomic_directory, atomic_write_text


class Inner(Config):
    channels: int = 8
    mult: tuple[int, ...] = (1, 2)


class Outer(Config):
    name: str = "x"
    lr: float = 1e-4
    inner: Inner = Inner()


def test_config_yaml_round_trip(tmp_path):
    cfg = Outer(name="run", lr=3e-4, inner=Inner(channels=16, mult=(1, 2, 4)))
    cfg.to_yaml(tmp_path / "c.yaml")
    assert Outer.from_yaml(tmp_path / "c.yaml") == cfg


def test_config_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: a\ninner:\n  chanels: 4\nlr: fast\n")
    with pytest.raises(ConfigError) as err:
        Outer.from_yaml(bad)
    msg = str(err.value)
    assert str(bad) in msg and "inner.chanels: unknown key" in msg and "lr:" in msg and "fast" in msg
    with pytest.raises(ConfigError, match="not found"):
        Outer.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        Outer.from_yaml(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Outer.from_yaml(tmp_path / "broken.yaml")


def test_intensity_transform_inverts_and_paper_ct_matches_cpdm():
    t = IntensityTransform(low=0.0, high=20.0, unit="SUV")
    x = torch.linspace(0, 20, 11)
    assert torch.allclose(t.inverse(t.forward(x)), x, atol=1e-5)
    assert t.forward(torch.tensor([0.0, 20.0, 35.0])).tolist() == [-1.0, 1.0, 1.0]
    ct = IntensityTransform.paper_ct()
    hu = np.array([-1024.0, 0.0, 1023.0])
    # CPDM: stored = HU + 1024, then stored / 2047 in [0, 1], then 2 v - 1
    np.testing.assert_allclose(ct.forward(hu), (hu + 1024) / 2047 * 2 - 1, rtol=1e-7)
    with pytest.raises(ConfigError, match="must exceed"):
        IntensityTransform.from_dict({"low": 1, "high": 1})


def test_log_intensity_transform_against_its_formula():
    t = IntensityTransform(kind="log", low=0.0, high=20.0, scale=1.0, unit="SUV")
    suv = np.array([0.0, 0.5, 1.0, 3.0, 20.0, 35.0])
    want = 2 * np.log(1 + np.minimum(suv, 20.0)) / np.log(21.0) - 1  # clipped to the window first
    np.testing.assert_allclose(t.forward(suv), want, rtol=1e-12)
    np.testing.assert_allclose(t.forward(torch.tensor(suv)).numpy(), want, rtol=1e-12)  # numpy and torch alike
    x = torch.linspace(0, 20, 41)
    back = t.inverse(t.forward(x))
    assert torch.allclose(back, x, atol=1e-5) and back.max() <= 20.0 and back.min() >= 0.0
    assert float(t.inverse(torch.tensor(1.5))) == 20.0  # network values past the window clip to it
    # tissue gets the resolution: SUV 0..3 spans 0.91 network units of 2 (the linear window: 0.30)
    assert t.forward(np.array(3.0)) + 1 == pytest.approx(2 * np.log(4) / np.log(21), rel=1e-12)
    assert IntensityTransform.from_dict(t.to_dict()) == t
    for bad, match in (({"scale": None}, "needs one"), ({"scale": 0.0}, "must be > 0"),
                       ({"clip": False}, "needs clip")):
        with pytest.raises(ConfigError, match=match):
            IntensityTransform.from_dict({**t.to_dict(), **bad})
    with pytest.raises(ConfigError, match="scale is the log"):
        IntensityTransform.from_dict({"low": 0, "high": 20, "scale": 1.0})


def test_checkpoint_round_trip(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4))
    card = ModelCard(method="unet", task="ct2pet", config={"channels": 4},
                     intensity={"target": IntensityTransform(low=0, high=20).to_dict()},
                     data={"studies": 3, "slices": 90}, step=10)
    path = save_checkpoint(tmp_path / "ckpt", card, {"model": net.state_dict(), "ema": net.state_dict()})
    assert sorted(p.name for p in path.iterdir()) == [CARD_FILE, WEIGHTS_FILE]
    loaded = load_checkpoint(path)
    assert loaded.card == card and loaded.card.petsynth_version == petsynth.__version__
    for group in ("model", "ema"):
        for k, v in net.state_dict().items():
            assert torch.equal(loaded.weights[group][k], v)
    card_yaml = yaml.safe_load((path / CARD_FILE).read_text())
    assert card_yaml["method"] == "unet" and card_yaml["intensity"]["target"]["high"] == 20
    with pytest.raises(FileExistsError):
        save_checkpoint(path, card, {"model": net.state_dict()})
    save_checkpoint(path, card.model_copy(update={"step": 20}), {"model": net.state_dict()}, overwrite=True)
    assert load_card(path).step == 20 and set(load_checkpoint(path).weights) == {"model"}


def test_checkpoint_loading_refuses_non_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not a petsynth checkpoint"):
        load_checkpoint(tmp_path)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / CARD_FILE).write_text("method: unet\n")
    torch.save({"a": torch.zeros(1)}, fake / WEIGHTS_FILE)  # a pickle named like safetensors
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(fake)
    (fake / CARD_FILE).write_text("method: unet\nformat_version: 99\n")
    with pytest.raises(CheckpointError, match="upgrade"):
        load_card(fake)
    (fake / CARD_FILE).write_text("methd: unet\n")
    with pytest.raises(CheckpointError, match="methd"):
        load_card(fake)


def test_interrupted_atomic_directory_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello" and len(list(tmp_path.iterdir())) == 1


def test_cli_version_and_help():
    runner = CliRunner()
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and petsynth.__version__ in result.output
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "phantom" in result.output and "demo" in result.output
    for command in ("phantom", "prepare", "demo"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "petsynth"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, env={**os.environ})
    assert out.returncode == 0 and out.stdout.strip() == f"petsynth {petsynth.__version__}"

"""Every shipped training config (configs/<set>/<method>.yaml) is valid: its method config for its method, its
train block for the trainer. The method is the file's name; the task is the set's (mr2pet sets are mr2pet)."""

from pathlib import Path

import pytest
import yaml

from petsynth.methods.base import method_class
from petsynth.train.trainer import TrainConfig

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*/*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_is_valid_for_its_method(path):
    cfg = yaml.safe_load(path.read_text())
    assert set(cfg) <= {"method_config", "train"}, f"{path}: unknown top-level keys {set(cfg)}"
    TrainConfig.model_validate(cfg.get("train", {}))
    method_class(path.stem.split("-")[0]).config_class.model_validate(cfg.get("method_config", {}))

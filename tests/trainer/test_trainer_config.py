"""hp.json in the reference's keys; flags win over the file; configs are frozen."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest

from trainer.cli import _fit_config
from trainer.config import read_hyperparameters


def test_reference_keys_and_sagemaker_strings(tmp_path: Path) -> None:
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"batch-size": "512", "epochs": 11, "lr": "0.005676"}))
    assert read_hyperparameters(hp) == {"batch_size": 512, "epochs": 11, "lr": 0.005676}
    hp.write_text(json.dumps({"momentum": 0.9}))
    with pytest.raises(ValueError, match="momentum"):
        read_hyperparameters(hp)


def test_flags_override_file(tmp_path: Path) -> None:
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps({"batch-size": 512, "epochs": 11, "lr": 0.005676}))
    config = _fit_config(manifest=tmp_path / "m.json", hyperparameters=hp, epochs=3,
                         out=tmp_path / "run")
    assert (config.batch_size, config.epochs, config.lr) == (512, 3, 0.005676)
    assert config.version.startswith("efficientnet_lite0-")
    with pytest.raises(pydantic.ValidationError):
        config.epochs = 4  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        _fit_config(manifest=tmp_path / "m.json", hyperparameters=None, freeze="some")

"""The artifact contract: save/load round trip and clear ArtifactErrors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import PIL.Image
import pytest
import torch

from core.model.architectures import build_model
from core.model.artifact import find_latest_artifact, load_artifact, save_artifact
from core.model.card import ArtifactError, Calibration, DecisionPolicy, ModelCard, read_card
from core.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_uint8


def _card(version: str = "v1", *, arch: str = "efficientnet_lite0",
          created: datetime | None = None) -> ModelCard:
    return ModelCard(version=version, architecture=arch, class_counts=[1, 2, 3, 4, 5],
                     input_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     created_at=created or datetime.now(UTC), code_version="test")


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    model = build_model("efficientnet_lite0", 5, weights=None)
    return save_artifact(tmp_path / "a", model, _card())


def test_round_trip(artifact: Path) -> None:
    model, card = load_artifact(artifact)
    assert not model.training and card.version == "v1"
    x = normalize(resize_uint8(PIL.Image.new("RGB", (100, 80)), card.input_size),
                  card.mean, card.std)
    assert x.shape == (3, 32, 32)
    assert model(x[None]).shape == (1, 5)


def test_pretrained_lite0_weights_load() -> None:
    model = build_model("efficientnet_lite0", 5, weights="default").eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 5)


@pytest.mark.parametrize("broken", ["no_dir", "no_card", "no_weights", "corrupt_weights",
                                    "bad_card", "unknown_arch", "wrong_classes"])
def test_broken_artifacts_raise(artifact: Path, tmp_path: Path, broken: str) -> None:
    expect = {"no_dir": "does not exist", "no_card": "model.json", "no_weights": "model.pt",
              "corrupt_weights": "could not read", "bad_card": "not a valid ModelCard",
              "unknown_arch": "architecture", "wrong_classes": "does not match"}[broken]
    card = json.loads((artifact / "model.json").read_text())
    if broken == "no_dir":
        artifact = tmp_path / "nowhere"
    elif broken == "no_card":
        (artifact / "model.json").unlink()
    elif broken == "no_weights":
        (artifact / "model.pt").unlink()
    elif broken == "corrupt_weights":
        (artifact / "model.pt").write_bytes(b"not a torch file")
    elif broken == "bad_card":
        (artifact / "model.json").write_text('{"version": 3}')
    elif broken == "unknown_arch":
        (artifact / "model.json").write_text(json.dumps(card | {"architecture": "resnet9000"}))
    else:
        (artifact / "model.json").write_text(json.dumps(card | {"class_counts": [1, 2, 3]}))
    with pytest.raises(ArtifactError, match=expect):
        load_artifact(artifact)


def test_naive_created_at_rejected() -> None:
    with pytest.raises(ValueError):
        _card(created=datetime(2026, 1, 1))


def test_find_latest_artifact(tmp_path: Path) -> None:
    model = build_model("efficientnet_lite0", 5)
    now = datetime.now(UTC)
    save_artifact(tmp_path / "old", model, _card("old", created=now - timedelta(days=1)))
    save_artifact(tmp_path / "new", model, _card("new", created=now))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.json").write_text("{")
    (tmp_path / "junk" / "model.pt").write_text("")
    assert find_latest_artifact(tmp_path) == tmp_path / "new"
    assert find_latest_artifact(tmp_path / "absent") is None


def test_missing_b4_weights_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """Not cached: torchvision is asked to download them (as for every user); when that
    fails (offline: here a proxy that refuses, so the test never reaches the internet) the
    message says where to put the file."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    expected = tmp_path / "checkpoints" / "efficientnet_b4_rwightman-23ab8bcd.pth"
    with pytest.raises(ArtifactError, match=f"put it at {expected}"):
        build_model("efficientnet_b4", 5, weights="default")
    assert "could not download efficientnet_b4_rwightman-23ab8bcd.pth" in caplog.text
    assert build_model("efficientnet_b4", 5, weights=None).classifier[1].out_features == 5


def test_calibration_and_thresholds_round_trip_through_the_card(tmp_path: Path) -> None:
    calibration = Calibration(temperature=2.37, ece_before=0.21, ece_after=0.04)
    decision = DecisionPolicy(match_min_p=0.83, mismatch_min_score=0.991,
                              target_false_alarm_rate=0.05,
                              measured={"false_alarm_rate": 0.031, "off_by_one_recall": 0.4},
                              chosen_on="validation")
    card = _card().model_copy(update={"calibration": calibration, "decision": decision})
    directory = save_artifact(tmp_path / "cal", build_model("efficientnet_lite0", 5), card)
    loaded = read_card(directory)
    assert loaded.calibration == calibration and loaded.decision == decision
    assert loaded == card


def test_an_old_card_without_calibration_still_loads(artifact: Path) -> None:
    raw = json.loads((artifact / "model.json").read_text())
    for key in ("calibration", "decision", "decode"):
        raw.pop(key)
    raw["format_version"] = 1
    (artifact / "model.json").write_text(json.dumps(raw))
    _, card = load_artifact(artifact)
    # Documented defaults: plain softmax, mismatch at P(manifest count) <= 0.05, match >= 0.5.
    assert card.calibration.temperature == 1.0 and card.calibration.ece_after is None
    assert (card.decision.match_min_p, card.decision.mismatch_min_score) == (0.5, 0.95)
    assert card.decision.target_false_alarm_rate is None and card.decode == "full"

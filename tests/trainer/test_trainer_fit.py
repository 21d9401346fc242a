"""End-to-end training: prepare -> fit -> evaluate, resume, torchrun (gloo), tune, register."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import Engine, delete, select

from core.model.artifact import load_artifact
from core.model.card import read_card
from core.tables import model_versions

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fitted(cli: Any, tiny_manifest: Path, tiny_flags: list[str],
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "run"
    cli("train", "fit", "--manifest", tiny_manifest, "--epochs", "2", "--batch-size", "8",
        "--lr", "0.01", "--out", out, "--profile", "--profile-steps", "2", *tiny_flags)
    return out


def test_fit_writes_a_loadable_artifact(fitted: Path, tiny_manifest: Path) -> None:
    model, card = load_artifact(fitted)
    assert card.architecture == "efficientnet_lite0" and card.input_size == 32
    assert card.class_counts == [1, 2, 3, 4, 5]
    assert card.hyperparameters["batch-size"] == 8 and card.hyperparameters["epochs"] == 2
    assert card.data_fingerprint == json.loads(tiny_manifest.read_text())["fingerprint"]
    assert "test_accuracy" in card.metrics and "test_rmse" in card.metrics
    # Calibrated and thresholded on the validation split (core.model.calibration).
    assert card.calibration.fitted_on == card.decision.chosen_on == "validation"
    assert card.calibration.temperature > 0 and card.calibration.ece_before is not None
    assert card.decision.target_false_alarm_rate == 0.05
    assert card.decision.measured["false_alarm_rate"] <= 0.05
    assert 0.5 <= card.decision.match_min_p <= 1
    metrics = json.loads((fitted / "metrics.json").read_text())
    assert len(metrics["history"]) == 2
    assert metrics["test"]["n"] == 5 and "baseline_majority" in metrics
    for name in ("training_curves.png", "confusion_matrix.png", "checkpoint.pt",
                 "profile/report.md", "profile/trace.json", "profile/step_phases.png"):
        assert (fitted / name).is_file(), name
    report = (fitted / "profile" / "report.md").read_text()
    assert "DataLoaderBottleneck" in report and "| forward |" in report


def test_evaluate_matches_training_test_metrics(cli: Any, fitted: Path,
                                                tiny_manifest: Path) -> None:
    out = fitted / "eval.json"
    cli("train", "evaluate", fitted, "--manifest", tiny_manifest, "--split", "test",
        "--out", out)
    result = json.loads(out.read_text())
    metrics = json.loads((fitted / "metrics.json").read_text())["test"]
    # The serving transform (PIL) and the training cache give the same predictions.
    assert result["confusion_matrix"] == metrics["confusion_matrix"]
    assert result["accuracy"] == pytest.approx(metrics["accuracy"])
    assert set(result) >= {"rmse", "per_class_accuracy", "off_by_one_accuracy"}
    assert out.with_suffix(".confusion.png").is_file()
    assert out.with_suffix(".pr.png").is_file()
    quality = result["audit_quality"]
    # Each test image judged once with its true count and once with a wrong one.
    assert quality["bins"] == 2 * result["n"] and quality["wrong_manifests"] == result["n"]
    assert set(quality) >= {"false_alarm_rate", "recall", "mismatch_precision", "auroc",
                            "average_precision", "review_budgets", "coverage",
                            "recall_by_kind", "recall_by_size"}
    assert result["calibration"]["temperature"] == load_artifact(fitted)[1].calibration.temperature


def test_calibrate_fits_an_old_artifact(cli: Any, fitted: Path, tiny_manifest: Path,
                                        tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(fitted, old, ignore=shutil.ignore_patterns("*.pt", "profile"))
    shutil.copy(fitted / "model.pt", old / "model.pt")
    raw = json.loads((old / "model.json").read_text())
    for key in ("calibration", "decision"):
        raw.pop(key)
    (old / "model.json").write_text(json.dumps(raw))
    assert load_artifact(old)[1].decision.chosen_on is None  # the documented defaults
    output = cli("train", "calibrate", old, "--manifest", tiny_manifest, "--split", "val")
    card = load_artifact(old)[1]
    assert "temperature" in output
    assert card.calibration.fitted_on == card.decision.chosen_on == "val"
    assert card.decision.target_false_alarm_rate == 0.05
    # The tiny validation split cannot promise 5 %: the thresholds decide nothing.
    assert (card.decision.match_min_p, card.decision.mismatch_min_score) == (1.0, 1.0)


def test_resume_continues_with_the_same_optimizer_state(
        cli: Any, tiny_manifest: Path, tiny_flags: list[str], tmp_path: Path) -> None:
    common = ["--manifest", tiny_manifest, "--batch-size", "8", "--lr", "0.01",
              "--freeze", "2", "--seed", "3", *tiny_flags]
    cli("train", "fit", "--epochs", "1", "--out", tmp_path / "a", *common)
    first = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert first["epoch"] == 1
    # Only --epochs is given again: everything else comes from the checkpoint's config.
    cli("train", "fit", "--epochs", "2", "--resume", tmp_path / "a" / "checkpoint.pt",
        "--no-progress")
    resumed = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    cli("train", "fit", "--epochs", "2", "--out", tmp_path / "b", *common)
    straight = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)

    assert resumed["epoch"] == straight["epoch"] == 2
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    steps_per_epoch = 4  # 30 train images / batch 8
    for state in (resumed, straight):
        steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
        assert steps == {2.0 * steps_per_epoch}
    for key, s in straight["optimizer"]["state"].items():
        r = resumed["optimizer"]["state"][key]
        torch.testing.assert_close(r["exp_avg"], s["exp_avg"])
        torch.testing.assert_close(r["exp_avg_sq"], s["exp_avg_sq"])
    for name, tensor in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, msg=name)
    assert resumed["history"][1]["val_loss"] == pytest.approx(straight["history"][1]["val_loss"])
    assert read_card(tmp_path / "a").version == first["config"]["version"]
    assert read_card(tmp_path / "a").hyperparameters["freeze"] == "2"


def test_torchrun_two_ranks_agree(tiny_manifest: Path, tiny_flags: list[str],
                                  tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node",
           "2", "-m", "binaudit", "train", "fit", "--manifest", str(tiny_manifest), "--epochs", "2",
           "--batch-size", "8", "--lr", "0.01", "--out", str(out), "--debug-rank-metrics",
           *tiny_flags]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0 = json.loads((out / "rank_metrics" / "rank0.json").read_text())
    rank1 = json.loads((out / "rank_metrics" / "rank1.json").read_text())
    assert len(rank0) == 2 and rank0 == rank1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 5  # every test image counted once across the two shards
    assert [h["val_loss"] for h in metrics["history"]] == [h["val_loss"] for h in rank0]
    load_artifact(out)


def test_tune_three_trials_writes_hp_json(cli: Any, tiny_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    cli("train", "tune", "--manifest", tiny_manifest, "--out", out, "--trials", "3",
        "--epochs-min", "1", "--epochs-max", "2", "--batch-sizes", "8,16", "--image-size", "32",
        "--weights", "none", "--lr-min", "0.001", "--lr-max", "0.05")
    hp = json.loads((out / "hp.json").read_text())
    assert set(hp) == {"batch-size", "epochs", "lr"}
    assert hp["batch-size"] in (8, 16) and 1 <= hp["epochs"] <= 2
    trials = (out / "trials.csv").read_text().splitlines()
    assert len(trials) == 4
    assert all(",COMPLETE," in t or ",PRUNED," in t for t in trials[1:])
    assert (out / "optimisation_history.png").is_file()
    assert (out / "trials.md").is_file()
    _, card = load_artifact(out / "best")
    assert card.hyperparameters["batch-size"] == hp["batch-size"]
    assert "test_accuracy" in card.metrics


@pytest.mark.services
def test_model_register_is_idempotent(cli: Any, fitted: Path, db_engine: Engine) -> None:
    version = read_card(fitted).version
    try:
        assert "registered" in cli("model", "register", fitted)
        assert "already registered" in cli("model", "register", fitted)
        with db_engine.connect() as conn:
            row = conn.execute(select(model_versions).where(
                model_versions.c.version == version)).one()
        assert row.architecture == "efficientnet_lite0"
        assert row.artifact_uri == fitted.resolve().as_uri()
        assert row.card["version"] == version
    finally:
        with db_engine.begin() as conn:
            conn.execute(delete(model_versions).where(model_versions.c.version == version))

"""Runs on a borrowed accelerator (``python -m trainer.whole_run``) under a deadline, and
`train whole-import`, which scores such a run here and makes an artifact of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from core.model.artifact import load_artifact


def _whole_run(pixels: Path, out: Path, *extra: str) -> str:
    args = [sys.executable, "-m", "trainer.whole_run", "--pixels", str(pixels), "--out",
            str(out), "--run-dir", str(out.parent / "runs"), "--device", "cpu", "--threads", "1",
            "--size", "32", "--epochs", "2", "--batch-size", "4", "--warmup-steps", "2",
            "--val-fraction", "0.25", *extra]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_run_file_imports_as_a_scored_row_and_an_artifact(pixels: Path, tmp_path: Path,
                                                          cli: Any) -> None:
    _whole_run(pixels, tmp_path / "out", "--plan", "lite1:3", "--deadline-s", "3600")
    saved = torch.load(tmp_path / "out" / "lite1-s3.pt", weights_only=True)
    run = saved["run"]
    assert run["config"]["seed"] == 3 and run["config"]["batched_augment"] is True
    assert run["split"] == {"seed": 0, "val_fraction": 0.25, "fit": 18, "val": 6}
    assert len(run["history"]) == 2 and 1 <= run["best_epoch"] <= 2
    assert all(v.dtype == torch.float16 for v in saved["ema_state"].values()
               if v.is_floating_point())
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["lite1-s3"] and not summary["skipped"]

    results = tmp_path / "results"
    cli("train", "whole-import", "--run", tmp_path / "out" / "lite1-s3.pt", "--pixels", pixels,
        "--results-dir", results, "--results-md", results / "RESULTS.md",
        "--out", tmp_path / "model")
    row = json.loads((results / "compare-whole-gpu-lite1-s3.json").read_text())
    assert row["images"] == {"fit": 18, "val": 6} and row["best_epoch"] == run["best_epoch"]
    assert row["chosen_variant"] in ("ema", "ema+flip") and set(row["variants"]) == {
        "ema", "ema+flip"}
    assert 0 <= row["metrics"]["accuracy_1_5"] <= 1 and row["trained_on"] == run["device"]
    model, card = load_artifact(tmp_path / "model")
    assert card.hyperparameters["whole"]["seed"] == 3 and card.input_size == 32
    assert card.architecture == "efficientnet_lite1"  # the run's, not the default Lite0
    assert card.tta == ("hflip" if row["chosen_variant"] == "ema+flip" else "none")
    x = torch.zeros(1, 3, 32, 32)
    assert model(x).shape == (1, 11)


def test_import_refuses_a_cache_with_other_rows(pixels: Path, sample_dir: Path,
                                               tmp_path: Path, cli: Any) -> None:
    """A run scored on another cache would be judged on other validation bins."""
    _whole_run(pixels, tmp_path / "out", "--plan", "lite0:0", "--epochs", "1",
               "--deadline-s", "3600")
    other = tmp_path / "px32-16"
    cli("train", "pixels", "--source-dir", sample_dir, "--out", other, "--image-size", "32",
        "--limit", "16", "--workers", "0")
    with pytest.raises(AssertionError, match=r"is\s+not\s+the\s+cache"):
        cli("train", "whole-import", "--run", tmp_path / "out" / "lite0-s0.pt", "--pixels",
            other, "--results-dir", tmp_path / "r", "--results-md", tmp_path / "r" / "R.md")


def test_a_run_past_the_deadline_is_abandoned_and_says_so(pixels: Path, tmp_path: Path) -> None:
    log = _whole_run(pixels, tmp_path / "out", "--plan", "lite0:0", "--deadline-s", "0")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["runs"] == [] and summary["skipped"][0]["run"] == "lite0:0"
    assert "deadline passed after epoch 1" in summary["skipped"][0]["reason"]
    assert not (tmp_path / "out" / "lite0-s0.pt").exists() and "abandoned" in log

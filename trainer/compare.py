"""Recipes scored on one validation split of the pixel cache, and the comparison table.

Every row of the table is a results file ``trainer/results/compare-<name>.json`` written by
``binaudit train whole`` or ``binaudit train score``; the table in ``trainer/RESULTS.md`` is
rebuilt from all of them (between markers) each time one is written.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.model.calibration import (
    calibrate,
    calibrated_probabilities,
    expected_calibration_error,
)
from trainer import cv

MARK_START, MARK_END = "<!-- compare-table:start -->", "<!-- compare-table:end -->"
BUSY_LOAD = 1.5  # on 2 cores: above this a timing or training result is not used


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__}


def load_average() -> float:
    return float(os.getloadavg()[0])


def is_busy(row: dict[str, Any]) -> bool:
    """Was anything else running? The start is taken before the run (commands that run one
    after another wait for a quiet machine first: ``scripts/wait-quiet.sh``); the end is taken
    while the run's own torch threads still count in the one-minute load, so they are allowed
    for."""
    own = float(row.get("machine", {}).get("torch_threads", 0))
    return row["load_start"] > BUSY_LOAD or row["load_end"] - own > BUSY_LOAD


def score(logits: np.ndarray, counts: np.ndarray, *, class_counts: list[int], decoding: str,
          target: float, calibrate_mask: np.ndarray | None = None) -> dict[str, Any]:
    """Temperature and thresholds fitted on these validation bins (or ``calibrate_mask`` of
    them), then every metric of the comparison on all of them."""
    last = class_counts[-1]
    inside = counts <= last
    if calibrate_mask is not None:
        inside &= calibrate_mask
    calibration, decision = calibrate(logits[inside], counts[inside], class_counts=class_counts,
                                      target=target, decoding=decoding)
    probs = calibrated_probabilities(logits, calibration.temperature)
    metrics = cv.distribution_metrics(probs, counts, decoding=decoding)
    metrics |= cv.audit_metrics(probs, counts)
    metrics["ece_uncalibrated"] = expected_calibration_error(
        calibrated_probabilities(logits)[counts <= last], counts[counts <= last])
    metrics["nll"] = float(-np.log(np.maximum(
        probs[np.flatnonzero(inside), counts[inside]], 1e-12)).mean())
    return {"metrics": metrics, "calibration": calibration.model_dump(),
            "decision": decision.model_dump()}


def write_row(path: Path, row: dict[str, Any], markdown: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=1, default=float) + "\n")
    render(path.parent, markdown)


def render(results_dir: Path, markdown: Path) -> None:
    """The table of every ``compare-*.json`` in ``results_dir``, between the markers."""
    rows = [json.loads(p.read_text()) for p in sorted(results_dir.glob("compare-*.json"))]
    cv.write_between_markers(markdown, MARK_START, MARK_END, markdown_table(rows))


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| recipe | accuracy 1-5 | RMSE 1-5 | off-by-one 1-5 | AUROC off-by-one | "
             "recall at 5 % FA | top 5 % precision / recall | coverage | ECE | "
             "train img/s | infer img/s | load start/end |",
             "|" + "---|" * 12]
    for row in sorted(rows, key=lambda r: r.get("order", 0)):
        busy = " (busy: not used)" if is_busy(row) else ""
        label = f"**{row['description']}**{busy}"
        if row.get("chosen_variant"):
            label += f" — {row['chosen_variant']}"
        lines.append(_line(label, row, row.get("train_images_per_s")))
        # The other variants of the same run (raw/EMA weights, with/without flip TTA).
        for name, variant in row.get("variants", {}).items():
            if name != row.get("chosen_variant"):
                lines.append(_line(f"same run — {name}", row | variant, None))
    return "\n".join(lines)


def _speed(images_per_s: float | None) -> str:
    return f"{images_per_s:.1f}" if images_per_s else "–"


def _line(label: str, row: dict[str, Any], train: float | None) -> str:
    m = row["metrics"]
    return (f"| {label} | {_pct(m['accuracy_1_5'])} | {m['rmse_1_5']:.3f} | "
            f"{_pct(m['off_by_one_1_5'])} | {m['auroc_off_by_one_1_5']:.3f} | "
            f"{_pct(m['recall_at_fa'])} | {_pct(m['top_5pct_precision'])} / "
            f"{_pct(m['top_5pct_recall'])} | {_pct(m['coverage'])} | {m['ece']:.3f} | "
            f"{_speed(train)} | {_speed(row['infer_images_per_s'])} | "
            f"{row['load_start']:.2f} / {row['load_end']:.2f} |")

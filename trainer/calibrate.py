"""After fitting: the validation split's logits -> temperature + decision thresholds for the
model card (the maths is in ``core.model.calibration``; this only collects the logits)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from core.model.calibration import calibrate
from core.model.card import Calibration, DecisionPolicy
from trainer import distributed as d
from trainer.engine import Preprocess

log = logging.getLogger(__name__)


@torch.inference_mode()
def collect_logits(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   preprocess: Preprocess) -> tuple[list[list[float]], list[int]]:
    """Float32 logits and true class indices of every image of the loader (this rank)."""
    model.eval()
    logits: list[list[float]] = []
    labels: list[int] = []
    for images, y in loader:
        logits.extend(model(preprocess(images)).float().cpu().tolist())
        labels.extend(y.tolist())
    return logits, labels


def calibrate_on_validation(model: nn.Module, loader: Any, preprocess: Preprocess, *,
                            class_counts: Sequence[int],
                            target: float) -> tuple[Calibration, DecisionPolicy]:
    """Temperature and thresholds fitted on the whole validation split (all ranks gathered)."""
    logits, labels = collect_logits(model, loader, preprocess)
    logits, labels = d.all_gather_lists(logits), d.all_gather_lists(labels)
    z = np.asarray(logits, dtype=np.float64).reshape(-1, len(class_counts))
    calibration, policy = calibrate(z, np.asarray(labels, dtype=np.int64),
                                    class_counts=class_counts, target=target)
    log.info("calibration on %d validation images: temperature %.3f, ECE %s -> %s; "
             "match when P >= %.4f, mismatch when 1 - P >= %.4f (%s)", len(labels),
             calibration.temperature, calibration.ece_before, calibration.ece_after,
             policy.match_min_p, policy.mismatch_min_score, policy.measured)
    return calibration, policy

"""The named recipes that ``train cv`` compares and ``train counter`` ships, and the export of
a cache-trained counter as an ordinary artifact (the worker cannot tell the difference)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.model.artifact import save_artifact
from core.model.card import Calibration, DecisionPolicy, ModelCard
from core.model.preprocess import IMAGENET_MEAN, IMAGENET_STD
from core.scoring import p_of_count
from trainer.tail import TailConfig

RECIPES: dict[str, TailConfig] = {
    # Always the most frequent training count (the class prior).
    "majority": TailConfig(mode="prior", first_count=0, classes=11),
    # The reference SageMaker job: frozen backbone, counts 1-5 only, Resize 224, horizontal
    # flip, cross-entropy, the reference's Dropout(0.5) + Linear head.
    "reference": TailConfig(mode="head", loss="ce", first_count=1, classes=5, restrict=True,
                            rotate=False, tta=False, epochs=10, lr=1e-3, dropout=0.5),
    # Ours: counts 0-10, the last 5 MBConv blocks + head conv fine-tuned on cached maps with
    # discriminative learning rates, count-preserving flips/turns, CE + ordinal EMD term.
    "count": TailConfig(mode="tail", loss="ce_emd", first_count=0, classes=11, epochs=6,
                        lr=1e-3, backbone_lr_mult=0.1, tta=False),
}

DESCRIPTIONS = {
    "majority": "majority baseline (most frequent count)",
    "reference": "reference: frozen backbone, 5 classes (1-5), hflip, CE",
    "count": "binaudit: counts 0-10, tail fine-tune, flips/turns, CE+EMD",
}


def choose_decision(probs: np.ndarray, true_counts: np.ndarray, *,
                    target_false_alarm_rate: float = 0.05) -> DecisionPolicy:
    """Thresholds from validation distributions (counts 0..K-1) for correct manifests.

    ``mismatch_min_score``: the smallest discrepancy score that flags at most the target share
    of correct manifests; ``match_min_p``: the smallest P(manifest) that at most the same share
    of manifests off by one item reach (so a ``match`` is rarely a missed discrepancy).
    """
    correct_scores = np.sort(1 - p_of_count(probs, true_counts))
    wrong_p = np.concatenate([p_of_count(probs, true_counts + 1),
                              p_of_count(probs[true_counts >= 1],
                                         true_counts[true_counts >= 1] - 1)])
    mismatch_min = float(np.quantile(correct_scores, 1 - target_false_alarm_rate)) + 1e-6
    match_min = float(np.quantile(wrong_p, 1 - target_false_alarm_rate)) + 1e-6
    flagged_correct = float((correct_scores >= mismatch_min).mean())
    wrong_scores = 1 - wrong_p
    return DecisionPolicy(
        match_min_p=min(max(match_min, 0.0), 1.0),
        mismatch_min_score=min(max(mismatch_min, 0.0), 1.0),
        target_false_alarm_rate=target_false_alarm_rate,
        measured={"false_alarm_rate": flagged_correct,
                  "off_by_one_recall": float((wrong_scores >= mismatch_min).mean()),
                  "false_match_rate": float((wrong_p >= match_min).mean()),
                  "n_validation": float(len(true_counts))},
        chosen_on="validation")


def export_counter(full: nn.Module, cfg: TailConfig, out: Path, *, version: str,
                   input_size: int, decode: str, calibration: Calibration,
                   decision: DecisionPolicy, metrics: dict[str, float],
                   data_fingerprint: str | None, code_version: str, half: bool) -> Path:
    """Write the full Lite0 (frozen front + trained tail) as a standard artifact.

    ``half`` stores the state dict in float16 (a few MB, small enough to ship in the
    repository); the loader copies it into float32 parameters.
    """
    card = ModelCard(
        version=version, architecture="efficientnet_lite0", class_counts=cfg.class_counts(),
        input_size=input_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        decode="draft" if decode == "draft" else "full", calibration=calibration,
        decision=decision, metrics=metrics, data_fingerprint=data_fingerprint,
        hyperparameters={"recipe": cfg.model_dump()}, created_at=datetime.now(UTC),
        code_version=code_version)
    if half:
        full = _half_copy(full)
    return save_artifact(out, full, card)


def _half_copy(model: nn.Module) -> nn.Module:
    # BatchNorm running stats and weights both survive fp16 at the 1e-3 level the parity check
    # in the tests allows; integer buffers (num_batches_tracked) stay integers.
    import copy

    clone = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in [*clone.parameters(), *clone.buffers()]:
            if tensor.is_floating_point():
                tensor.data = tensor.data.half()
    return clone

"""The named recipes that ``train cv`` compares and ``train counter`` ships, and the export of
a cache-trained counter as an ordinary artifact (the worker cannot tell the difference)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.model.artifact import save_artifact
from core.model.card import Calibration, DecisionPolicy, ModelCard
from core.model.preprocess import IMAGENET_MEAN, IMAGENET_STD
from trainer.tail import TailConfig

RECIPES: dict[str, TailConfig] = {
    # Always the most frequent training count (the class prior).
    "majority": TailConfig(mode="prior", first_count=0, classes=11),
    # The reference SageMaker job: frozen backbone, counts 1-5 only, Resize 224, horizontal
    # flip, cross-entropy, the reference's Dropout(0.5) + Linear head.
    "reference": TailConfig(mode="head", loss="ce", first_count=1, classes=5, restrict=True,
                            rotate=False, tta=False, epochs=10, lr=1e-3, dropout=0.5),
    # Ours (chosen on validation, trainer/RESULTS.md): counts 0-10 (more than 10 trains as
    # 10), the frozen front cached up to the cut (16: all MBConv blocks), the head conv + BN +
    # classifier fine-tuned with discriminative learning rates, Gaussian soft labels over
    # neighbouring counts (ordinal), median decoding. No test-time augmentation: the worker
    # runs one forward pass per image.
    "count": TailConfig(mode="tail", loss="soft", sigma=0.6, first_count=0, classes=11,
                        epochs=3, lr=2e-3, backbone_lr_mult=0.25, dropout=0.2, tta=False,
                        decoding="median"),
}

DESCRIPTIONS = {
    "majority": "majority baseline (most frequent count)",
    "reference": "reference: frozen backbone, 5 classes (1-5), hflip, CE",
    "count": "binaudit: counts 0-10, head conv fine-tuned, soft labels, median",
}


def export_counter(full: nn.Module, out: Path, *, class_counts: list[int], decoding: str,
                   hyperparameters: dict[str, Any], version: str, input_size: int, decode: str,
                   calibration: Calibration, decision: DecisionPolicy,
                   metrics: dict[str, float], data_fingerprint: str | None, code_version: str,
                   half: bool, tta: str = "none",
                   architecture: str = "efficientnet_lite0") -> Path:
    """Write a trained Lite counter (a cache-trained tail or a whole-network run) as a
    standard artifact.

    ``half`` stores the state dict in float16 (a few MB, small enough to ship in the
    repository); the loader copies it into float32 parameters.
    """
    card = ModelCard(
        version=version, architecture=architecture, class_counts=class_counts,
        input_size=input_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        decode="draft" if decode == "draft" else "full",
        count_decoding="median" if decoding == "median" else "argmax",
        tta="hflip" if tta == "hflip" else "none", calibration=calibration,
        decision=decision, metrics=metrics, data_fingerprint=data_fingerprint,
        hyperparameters=hyperparameters, created_at=datetime.now(UTC),
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

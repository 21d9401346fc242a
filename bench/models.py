"""Counters for the benchmarks: the real one (random-init artifact) and a null one.

Random initialisation is fine: speed does not depend on the weights' values. Artifacts are
written in the trainer's format and loaded with the one shared loader, so the benchmark runs
exactly the worker's model path.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from core.model.architectures import build_model
from core.model.artifact import save_artifact
from core.model.card import ModelCard
from core.model.preprocess import IMAGENET_MEAN, IMAGENET_STD
from inference.compare import Prediction, prediction_from_probs
from inference.counter import BinCounter, resolve_device

CLASS_COUNTS = [1, 2, 3, 4, 5]


def bench_card(architecture: str, input_size: int, *, tag: str) -> ModelCard:
    """A card with a unique version: every run writes new rows (no ON CONFLICT no-ops)."""
    return ModelCard(version=f"bench-{tag}-{architecture}-{uuid.uuid4().hex[:8]}",
                     architecture=architecture, class_counts=CLASS_COUNTS,
                     input_size=input_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                     created_at=datetime.now(UTC), code_version="bench")


def write_artifact(root: Path, architecture: str = "efficientnet_b4", input_size: int = 224,
                   *, tag: str = "e2e", seed: int = 0) -> Path:
    """A random-init artifact under ``root`` (the worker loads it like a trained one)."""
    card = bench_card(architecture, input_size, tag=tag)
    torch.manual_seed(seed)
    model = build_model(architecture, len(CLASS_COUNTS), weights=None)
    return save_artifact(root / card.version, model, card)


def load_counter(path: Path, device: str, *, channels_last: bool | None = None) -> BinCounter:
    return BinCounter.from_artifact(path, device,  # type: ignore[arg-type]
                                 channels_last=channels_last)


class NullCounter(BinCounter):
    """No forward pass: a fixed prediction per row, instantly (the I/O ceiling's model)."""

    def __init__(self, input_size: int = 224, device: str = "cpu") -> None:
        card = bench_card("efficientnet_lite0", input_size, tag="null")
        super().__init__(nn.Identity(), card, resolve_device(device),  # type: ignore[arg-type]
                         channels_last=False)
        probs = [0.0] * len(CLASS_COUNTS)
        probs[0] = 1.0
        self._fixed: Prediction = prediction_from_probs(probs, probs, CLASS_COUNTS)

    def infer(self, batch: torch.Tensor) -> list[Prediction]:
        return [self._fixed] * int(batch.shape[0])

"""The counter: load → preprocess → inference → postprocess (TorchServe's handler split).

Shared by the worker, replay and the HTTP endpoint; batching lives outside (inference/batching.py).
Preprocessing is safe on untrusted bytes: the pixel and byte limits are checked from the header
before any pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from core.model.artifact import load_artifact
from core.model.card import ModelCard
from inference.compare import Prediction, prediction_from_logits

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


def resolve_device(requested: Device) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda requested but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


class BinCounter:
    """An artifact loaded for inference on one device."""

    def __init__(self, model: torch.nn.Module, card: ModelCard, device: torch.device,
                 *, channels_last: bool | None = None) -> None:
        self.card = card
        self.device = device
        self.is_cuda = device.type == "cuda"
        # channels_last won on both devices in bench/ (CPU: 1.27x fp32 NCHW for B4 at batch 16).
        self.channels_last = True if channels_last is None else channels_last
        model = model.to(device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model

    @classmethod
    def from_artifact(cls, path: Path, device: Device = "auto",
                      *, channels_last: bool | None = None) -> BinCounter:
        """Load with the one shared loader; ArtifactError explains a missing/mismatched one."""
        dev = resolve_device(device)
        model, card = load_artifact(path, map_location="cpu")
        log.info("loaded model %s (%s, classes %s, input %d) on %s", card.version,
                 card.architecture, card.class_counts, card.input_size, dev)
        return cls(model, card, dev, channels_last=channels_last)

    @property
    def version(self) -> str:
        return self.card.version

    def warm_up(self, batch_sizes: Sequence[int] = (1, 8)) -> float:
        """Run a few dummy batches so the first real batch pays no allocation/tuning cost."""
        started = time.perf_counter()
        side = self.card.input_size
        for size in batch_sizes:
            self.infer(torch.zeros(size, 3, side, side))
        return time.perf_counter() - started

    def infer(self, batch: torch.Tensor) -> list[Prediction]:
        """Forward one stacked batch; one Prediction per row, in order."""
        with torch.inference_mode():
            if self.is_cuda:
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                enabled=self.is_cuda):
                logits = self.model(batch)
            rows = logits.float().cpu().tolist()
        # Calibration lives in one pure function of (logits row, card), shared by every backend.
        return [prediction_from_logits(row, self.card) for row in rows]

"""The counter: load → inference → postprocess (TorchServe's handler split).

Shared by the worker, replay, serve and `train evaluate`; preprocessing is
core/model/preprocess.py, batching lives outside (inference/batching.py), and the backends that
run the forward pass are in inference/backends/.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from core.model.artifact import load_artifact
from core.model.card import ModelCard
from inference.backends import Backend
from inference.backends.torch_backends import EagerBackend
from inference.batching import BatchPlan
from inference.compare import Prediction, prediction_from_logits

if TYPE_CHECKING:
    from inference.autotune import TuneResult

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


def resolve_device(requested: Device) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda requested but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


class BinCounter:
    """An artifact loaded for inference on one device, through one backend.

    ``model`` is an ``nn.Module`` (run eagerly: the reference backend) or a ready
    :class:`~inference.backends.Backend`; ``plan`` is the batch size and deadline chosen for
    it by autotuning (inference/autotune.py), or None when nothing was tuned.
    """

    def __init__(self, model: nn.Module | Backend, card: ModelCard,
                 device: torch.device | None = None, *, channels_last: bool | None = None,
                 plan: BatchPlan | None = None, tuning: TuneResult | None = None) -> None:
        self.card = card
        if isinstance(model, nn.Module):
            model = EagerBackend(model, device or torch.device("cpu"),
                                 channels_last=channels_last)
        self.backend: Backend = model
        self.device = model.device
        self.is_cuda = self.device.type == "cuda"
        self.plan = plan
        self.tuning = tuning  # what autotuning measured, for the logs and metrics

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

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def warm_up(self, batch_sizes: Sequence[int] | None = None) -> float:
        """Run a few dummy batches so the first real batch pays no allocation/tuning cost
        (default: batch 1 and the planned batch size, else 8)."""
        if batch_sizes is None:
            batch_sizes = (1, self.plan.max_batch_size if self.plan else 8)
        started = time.perf_counter()
        side = self.card.input_size
        for size in batch_sizes:
            self.infer(torch.zeros(size, 3, side, side))
        return time.perf_counter() - started

    def infer(self, batch: torch.Tensor) -> list[Prediction]:
        """Forward one stacked batch; one Prediction per row, in order."""
        with torch.inference_mode():
            logits = self.backend.logits(batch)
            rows = logits.float().cpu().tolist()
        # Calibration lives in one pure function of (logits row, card), shared by every backend.
        return [prediction_from_logits(row, self.card) for row in rows]

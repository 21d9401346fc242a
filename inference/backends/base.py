"""What every inference backend is: a batch of normalised images in, logits out.

``BinCounter`` (inference/counter.py) stays the pipeline's model stage; it owns one backend
and keeps turning logits into Predictions. A backend that cannot run here (package missing,
no GPU, export failed) raises :class:`BackendUnavailable` with the reason, and the caller
moves on to the next candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from core.model.card import ModelCard


class BackendUnavailable(RuntimeError):
    """This backend cannot run on this machine/device; the message says why."""


class Backend(Protocol):
    """One way to run the model. ``logits`` takes a CPU float32 NCHW batch."""

    name: str
    device: torch.device
    # True when ``logits`` may run from several threads at once (inference streams, see
    # inference/autotune.py); a backend that is not is only ever run as one stream.
    concurrent: bool

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw scores, one row per image (any device; the counter moves them to the host)."""
        ...


@dataclass(frozen=True)
class LoadContext:
    """What a backend may need to build itself: the artifact, its model and where to cache."""

    artifact: Path
    card: ModelCard
    device: torch.device
    # Builds the eager model on demand: ONNX/OpenVINO backends only need it to export.
    load_model: Callable[[], nn.Module]
    # Per-artifact cache folder (exports missing from the artifact, compile caches).
    cache_dir: Path
    # The largest batch the backend will see: fixed-shape engines pad up to it.
    max_batch_size: int
    # Threads of each inference stream; ``streams`` threads call ``logits`` at once.
    threads: int
    streams: int = 1


def fixed_shape_logits(run: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
                       size: int) -> torch.Tensor:
    """Run a fixed-batch engine on any batch: split into ``size`` chunks, pad the last one.

    Padding keeps one compiled shape (a recompile costs minutes on CPU); the padded rows are
    zeros and are dropped from the output.
    """
    outputs = []
    for start in range(0, batch.shape[0], size):
        chunk = batch[start:start + size]
        n = chunk.shape[0]
        if n < size:
            pad = chunk.new_zeros((size - n, *chunk.shape[1:]))
            chunk = torch.cat([chunk, pad])
        outputs.append(run(chunk)[:n])
    return torch.cat(outputs)

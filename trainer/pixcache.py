"""Decoded-pixel cache for whole-network fine-tuning on a CPU.

``<dir>/pixels.npy`` uint8 (N, 3, S, S): every labelled image decoded once through the serving
path (:mod:`core.model.preprocess`, the card's size and decode policy);
``<dir>/meta.json``  ids (as ABID keys them), counts, size, decode policy.

Why: on a 2-core machine JPEG decoding in DataLoader workers takes cores from the training
threads every epoch; decoded once, an epoch only augments uint8 tensors in the training process,
and the order of random draws is the process's own (exact resume, see ``trainer.whole``).
11,428 images at 224 px are 1.7 GB, memory-mapped.
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

from trainer.datasets import CountingImages, Decode, make_loader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PixelCache:
    """A loaded cache: uint8 pixels (N, 3, S, S) memory-mapped, true counts and ids."""

    pixels: np.ndarray
    counts: np.ndarray
    ids: list[str]
    meta: dict[str, Any]


def build_pixels(paths: Sequence[str], counts: Sequence[int], ids: Sequence[str], out: Path, *,
                 decode: Decode, workers: int = 1, batch: int = 64) -> Path:
    """Decode ``paths`` into ``out``/pixels.npy and write meta.json (progress in the log)."""
    out.mkdir(parents=True, exist_ok=True)
    shape = (len(paths), 3, decode.size, decode.size)
    pixels = np.lib.format.open_memmap(out / "pixels.npy", mode="w+", dtype=np.uint8,
                                       shape=shape)
    loader = make_loader(CountingImages([(p, 0) for p in paths], decode), batch_size=batch,
                         workers=workers, pin_memory=False)
    started, done = time.perf_counter(), 0
    for images, _ in loader:
        pixels[done:done + len(images)] = images.numpy()
        done += len(images)
        if done % (batch * 20) < batch or done == len(paths):
            rate = done / max(time.perf_counter() - started, 1e-9)
            log.info("pixels: %d/%d images, %.0f img/s", done, len(paths), rate)
    pixels.flush()
    meta = {"ids": list(ids), "counts": [int(c) for c in counts], "size": decode.size,
            "draft": decode.policy == "draft", "seconds": time.perf_counter() - started}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def load_pixels(directory: Path) -> PixelCache:
    meta = json.loads((directory / "meta.json").read_text())
    pixels = np.load(directory / "pixels.npy", mmap_mode="r")
    return PixelCache(pixels, np.asarray(meta["counts"], dtype=np.int64),
                      [str(i) for i in meta["ids"]], meta)

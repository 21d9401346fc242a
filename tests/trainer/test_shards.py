"""Packing a pixel cache to travel to a borrowed GPU (``trainer.shards``) and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.pixcache import load_pixels
from trainer.shards import half_weights, pack, unpack


def test_pack_then_unpack_gives_the_cache_back_within_webp_loss(pixels: Path,
                                                                 tmp_path: Path) -> None:
    pack(pixels, tmp_path / "a", 0, 10)
    pack(pixels, tmp_path / "b", 10, 24)
    assert unpack([tmp_path / "a", tmp_path / "b"], tmp_path / "out", workers=2) == 24
    before, after = load_pixels(pixels), load_pixels(tmp_path / "out")
    assert after.ids == before.ids and np.array_equal(after.counts, before.counts)
    assert after.pixels.shape == before.pixels.shape
    error = np.abs(after.pixels.astype(int) - before.pixels.astype(int))
    assert error.mean() < 6  # lossy, but the same images in the same rows
    shuffled = np.abs(after.pixels[::-1].astype(int) - before.pixels.astype(int)).mean()
    assert shuffled > 3 * error.mean()


def test_unpack_refuses_a_missing_shard(pixels: Path, tmp_path: Path) -> None:
    pack(pixels, tmp_path / "a", 0, 10)
    with pytest.raises(SystemExit, match="not 0-24"):
        unpack([tmp_path / "a"], tmp_path / "out", workers=1)


def test_half_weights_keep_every_tensor(tmp_path: Path) -> None:
    [path] = half_weights(["efficientnet_lite0"], tmp_path)
    state = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert "_conv_stem.weight" in state and len(state) > 100

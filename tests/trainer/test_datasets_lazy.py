"""CountingImages decodes in DataLoader workers only: the parent holds paths, never pixels.

(How memory behaves at 1,000 vs 10,000 images is measured in bench/data_scaling.py.)
"""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer import datasets
from trainer.datasets import CountingImages, Decode, make_loader

N_IMAGES = 24
SIZE = 64


def _items(sample_dir: Path) -> list[tuple[str, int]]:
    with open(sample_dir / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:N_IMAGES]
    return [(str(sample_dir / r["image"]), int(r["expected_quantity"])) for r in rows]


def _holds_tensors(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, dict):
        return any(_holds_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple, set)):
        return any(_holds_tensors(v) for v in value)
    return False


def test_dataset_holds_only_paths_and_labels(sample_dir: Path) -> None:
    dataset = CountingImages(_items(sample_dir), Decode(SIZE), augment="count")
    assert all(isinstance(p, str) and isinstance(y, int) for p, y in dataset.items)
    assert not _holds_tensors(vars(dataset))
    # What each worker receives: a path and a label per item, no pixels.
    assert len(pickle.dumps(dataset)) < 300 * len(dataset) + 20_000


def test_workers_decode_and_the_parent_never_does(sample_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    parent, real = os.getpid(), datasets.decode_rgb

    def decode_outside_the_parent(*args: Any, **kwargs: Any) -> Any:
        if os.getpid() == parent:
            raise AssertionError("an image was decoded in the parent process")
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "decode_rgb", decode_outside_the_parent)
    items = _items(sample_dir)
    dataset = CountingImages(items, Decode(SIZE))
    loader = make_loader(dataset, batch_size=8, workers=2, pin_memory=False)
    labels: list[int] = []
    for _ in range(2):  # persistent workers serve a second epoch too
        for images, batch_labels in loader:
            assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (3, SIZE, SIZE)
            labels += batch_labels.tolist()
    assert labels == [y for _, y in items] * 2
    assert not _holds_tensors(vars(dataset))  # nothing cached by the pass
    del loader

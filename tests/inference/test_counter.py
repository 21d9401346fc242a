"""Preprocess and inference on real sample JPEGs and hostile bytes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.model.preprocess import ImageLimits, Preprocessor
from inference.counter import BinCounter
from schemas.records import ErrorKind, EventError
from tests.hostile_images import png_header_bomb

LIMITS = ImageLimits(max_bytes=8 * 1024 * 1024, max_pixels=40_000_000)


@pytest.fixture(scope="module")
def counter(model_artifact: Path) -> BinCounter:
    return BinCounter.from_artifact(model_artifact, "cpu")


@pytest.fixture(scope="module")
def pre(counter: BinCounter) -> Preprocessor:
    return Preprocessor(counter.card, LIMITS)


def sample_jpeg(sample_dir: Path, n: int = 0) -> bytes:
    return sorted((sample_dir / "images").glob("*.jpg"))[n].read_bytes()


def test_real_jpeg_becomes_normalised_tensor(pre: Preprocessor, sample_dir: Path) -> None:
    t = pre(sample_jpeg(sample_dir))
    assert t.shape == (3, pre.card.input_size, pre.card.input_size)
    assert t.dtype == torch.float32
    assert -3 < float(t.mean()) < 3


def test_batch_inference_gives_one_prediction_per_image_in_order(
        counter: BinCounter, pre: Preprocessor, sample_dir: Path) -> None:
    tensors = [pre(sample_jpeg(sample_dir, i)) for i in range(4)]
    batched = counter.infer(torch.stack(tensors))
    single = [counter.infer(t.unsqueeze(0))[0] for t in tensors]
    assert [p.count for p in batched] == [p.count for p in single]
    for b, s in zip(batched, single, strict=True):
        assert b.count in counter.card.class_counts
        assert abs(sum(b.probabilities.values()) - 1) < 1e-3
        assert b.confidence == pytest.approx(s.confidence, abs=1e-4)


@pytest.mark.parametrize(("make", "kind"), [
    (lambda s: b"", ErrorKind.EMPTY_OBJECT),
    (lambda s: b"hello, I am not a picture", ErrorKind.NOT_AN_IMAGE),
    (lambda s: s[: len(s) // 2], ErrorKind.TRUNCATED_IMAGE),
    (lambda s: png_header_bomb(30_000, 30_000), ErrorKind.IMAGE_TOO_MANY_PIXELS),
    (lambda s: s + b"\0" * (9 * 1024 * 1024), ErrorKind.OBJECT_TOO_LARGE),
])
def test_hostile_bytes_raise_specific_error(pre: Preprocessor, sample_dir: Path, make: object,
                                            kind: ErrorKind) -> None:
    data = make(sample_jpeg(sample_dir))  # type: ignore[operator]
    with pytest.raises(EventError) as info:
        pre(data)
    assert info.value.kind is kind


def test_png_input_is_accepted(pre: Preprocessor) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 200, 30)).save(buf, format="PNG")
    assert pre(buf.getvalue()).shape[0] == 3

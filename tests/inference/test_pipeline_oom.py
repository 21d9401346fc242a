"""A forward pass out of memory, against the real model on CPU: the batch is split in halves
(the test hook ``oom_above_batch`` makes passes above a size raise torch's OutOfMemoryError),
an image the model fails on alone is one internal_error, and a model that fails on every
image stays a model fault (no event errors)."""

from __future__ import annotations

import io
import queue
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.model.preprocess import ImageLimits, Preprocessor
from core.settings import Settings
from inference.compare import Prediction
from inference.counter import BinCounter
from inference.pipeline import InferencePipeline, Outcome, PipelineConfig, WorkItem
from schemas.records import ErrorKind

BATCH = 8


def _images(sample_dir: Path, n: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted((sample_dir / "images").glob("*.jpg"))[:n]]


def _gray_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (200, 200), (128, 128, 128)).save(out, format="JPEG")
    return out.getvalue()


class PoisonedCounter(BinCounter):
    """The real counter, except that any pass holding a uniform image (the poison) raises
    out of memory, as a real model can for one pathological input."""

    def infer(self, batch: torch.Tensor) -> list[Prediction]:
        if bool((batch.flatten(2).std(dim=2).amax(dim=1) < 1e-2).any()):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (poison image in the batch)")
        return super().infer(batch)


def _run(counter: BinCounter, settings: Settings, images: list[bytes],
         wait_s: float = 60) -> tuple[list[Outcome], InferencePipeline]:
    """Submit ``images`` as one batch; the outcomes in submission order."""
    outcomes: queue.Queue[Outcome] = queue.Queue()
    pre = Preprocessor(counter.card, ImageLimits.from_settings(settings.inference))
    with InferencePipeline(counter, pre, _config(settings), outcomes.put) as pipeline:
        for i, image in enumerate(images):
            pipeline.submit(WorkItem(None, None, image=image, context=i))
        got = [outcomes.get(timeout=wait_s) for _ in images]
    return sorted(got, key=lambda o: o.item.context), pipeline


def _config(settings: Settings) -> PipelineConfig:
    return PipelineConfig.from_settings(settings.inference)


@pytest.fixture
def oom_settings(settings_factory: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**inference: object) -> Settings:
        return settings_factory(
            inference={"max_batch_size": BATCH, "max_wait_ms": 2000,
                       "retry_backoff_initial_s": 0.1, "retry_backoff_max_s": 0.2, **inference})
    return make


@pytest.mark.services
def test_out_of_memory_halves_the_batch_and_every_image_gets_its_prediction(
        model_artifact: Path, sample_dir: Path, oom_settings: Callable[..., Settings]) -> None:
    counter = BinCounter.from_artifact(model_artifact, "cpu")
    images = _images(sample_dir, BATCH)
    got, pipeline = _run(counter, oom_settings(oom_above_batch=2), images)

    assert all(o.error is None and o.prediction is not None for o in got)
    reference, _ = _run(counter, oom_settings(), images)
    for split, whole in zip(got, reference, strict=True):
        assert split.prediction is not None and whole.prediction is not None
        assert split.prediction.count == whole.prediction.count
        assert split.prediction.scores == pytest.approx(whole.prediction.scores, abs=1e-4)
    assert pipeline.faults.active() == {} and "model" not in pipeline.faults.retries()
    assert pipeline._forwarder.cap == 2  # later batches go straight to a size that fits


@pytest.mark.services
def test_an_image_the_model_fails_on_alone_is_one_internal_error(
        model_artifact: Path, sample_dir: Path, oom_settings: Callable[..., Settings]) -> None:
    counter = PoisonedCounter.from_artifact(model_artifact, "cpu")
    images = _images(sample_dir, BATCH - 1)
    images.insert(3, _gray_jpeg())
    got, pipeline = _run(counter, oom_settings(), images)

    poison = got[3]
    assert poison.prediction is None and poison.error is not None and not poison.retryable
    assert poison.error.kind is ErrorKind.INTERNAL_ERROR
    assert "OutOfMemoryError" in poison.error.message
    others = got[:3] + got[4:]
    assert all(o.error is None and o.prediction is not None for o in others)
    assert pipeline.faults.active() == {}


@pytest.mark.services
def test_a_model_out_of_memory_on_every_image_stays_a_model_fault(
        model_artifact: Path, sample_dir: Path, oom_settings: Callable[..., Settings]) -> None:
    counter = BinCounter.from_artifact(model_artifact, "cpu")
    settings = oom_settings(oom_above_batch=0)
    outcomes: queue.Queue[Outcome] = queue.Queue()
    pre = Preprocessor(counter.card, ImageLimits.from_settings(settings.inference))
    with InferencePipeline(counter, pre, _config(settings), outcomes.put) as pipeline:
        for image in _images(sample_dir, 4):
            pipeline.submit(WorkItem(None, None, image=image))
        deadline = time.monotonic() + 30
        while pipeline.faults.retries().get("model", 0) < 3:
            assert time.monotonic() < deadline, "the model fault was not retried"
            time.sleep(0.05)
        assert outcomes.empty(), "a model failing on every image must not end the events"
        assert "OutOfMemoryError" in pipeline.faults.active()["model"].cause
    got = [outcomes.get(timeout=10) for _ in range(4)]
    # Stopping leaves them uncommitted (retryable), never dead letters.
    assert all(o.retryable and o.error is not None
               and o.error.kind is ErrorKind.SHUTTING_DOWN for o in got)

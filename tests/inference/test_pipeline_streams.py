"""Inference streams: the pipeline runs one infer thread per stream of the current model's
plan, the threads take whole batches side by side, and a swap to a model with fewer streams
ends the extra threads (the real model on CPU, real threads)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from core.model.preprocess import ImageLimits, Preprocessor
from core.settings import InferenceSettings
from inference.batching import BatchPlan
from inference.compare import Prediction
from inference.counter import BinCounter
from inference.pipeline import InferencePipeline, Outcome, PipelineConfig, WorkItem
from inference.switcher import ModelSet

BATCH = 2
IMAGES = 8


class WatchedCounter(BinCounter):
    """The real counter, holding each pass a little and recording how many ran at once and
    on which threads."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lock = threading.Lock()
        self.active = self.most_at_once = 0
        self.threads: set[str] = set()

    def infer(self, batch: torch.Tensor) -> list[Prediction]:
        with self.lock:
            self.active += 1
            self.most_at_once = max(self.most_at_once, self.active)
            self.threads.add(threading.current_thread().name)
        try:
            time.sleep(0.2)  # long enough that a second stream's pass overlaps this one
            return super().infer(batch)
        finally:
            with self.lock:
                self.active -= 1


def _counter(artifact: Path, streams: int) -> WatchedCounter:
    base = BinCounter.from_artifact(artifact, "cpu")
    return WatchedCounter(base.backend, base.card, plan=BatchPlan(BATCH, 20, streams))


def _images(sample_dir: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((sample_dir / "images").glob("*.jpg"))[:IMAGES]]


def _pipeline(counter: BinCounter, outcomes: queue.Queue[Outcome]) -> InferencePipeline:
    pre = Preprocessor(counter.card, ImageLimits(8 << 20, 40_000_000))
    config = PipelineConfig(max_batch_size=BATCH, max_wait_s=0.02, decode_workers=2)
    return InferencePipeline(counter, pre, config, outcomes.put)


def _run(pipeline: InferencePipeline, images: list[bytes],
         outcomes: queue.Queue[Outcome]) -> list[Outcome]:
    for i, image in enumerate(images):
        pipeline.submit(WorkItem(None, None, image=image, context=i))
    return [outcomes.get(timeout=60) for _ in images]


def _infer_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("infer-")}


def test_two_streams_run_batches_side_by_side(model_artifact: Path, sample_dir: Path) -> None:
    counter = _counter(model_artifact, streams=2)
    outcomes: queue.Queue[Outcome] = queue.Queue()
    with _pipeline(counter, outcomes) as pipeline:
        got = _run(pipeline, _images(sample_dir), outcomes)
    assert all(o.error is None and o.prediction is not None for o in got)
    assert sorted(o.item.context for o in got) == list(range(IMAGES))  # each exactly once
    assert counter.most_at_once == 2 and counter.threads == {"infer-0", "infer-1"}


def test_one_stream_runs_one_batch_at_a_time(model_artifact: Path, sample_dir: Path) -> None:
    counter = _counter(model_artifact, streams=1)
    outcomes: queue.Queue[Outcome] = queue.Queue()
    with _pipeline(counter, outcomes) as pipeline:
        _run(pipeline, _images(sample_dir), outcomes)
    assert counter.most_at_once == 1 and counter.threads == {"infer-0"}


def test_a_swap_to_fewer_streams_ends_the_extra_thread(
        model_artifact: Path, sample_dir: Path,
        model_artifact_factory: Callable[..., Path]) -> None:
    two = _counter(model_artifact, streams=2)
    one = _counter(model_artifact_factory("streams-b", seed=1), streams=1)
    outcomes: queue.Queue[Outcome] = queue.Queue()
    with _pipeline(two, outcomes) as pipeline:
        _run(pipeline, _images(sample_dir), outcomes)
        assert _infer_threads() >= {"infer-0", "infer-1"}
        models = ModelSet.pinned(one, deployment="d", inference=InferenceSettings(device="cpu"))
        assert pipeline.swap(models, timeout=30)
        deadline = time.monotonic() + 5
        while "infer-1" in _infer_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "infer-1" not in _infer_threads()
        got = _run(pipeline, _images(sample_dir), outcomes)
    assert {o.model_version for o in got} == {one.version}
    assert one.most_at_once == 1 and one.threads == {"infer-0"}

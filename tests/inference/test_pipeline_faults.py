"""Infrastructure faults in the shared pipeline, against the real model and moto S3: retried
with backoff and reported on the FaultBoard, never turned into an event error; an error
nobody classified ends in one fetch_failed after the per-event budget."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.model.preprocess import ImageLimits, Preprocessor
from core.settings import Settings
from inference.counter import BinCounter
from inference.images import ImageFetcher
from inference.pipeline import InferencePipeline, Outcome, PipelineConfig, WorkItem
from schemas.records import ErrorKind, EventError
from tests.reliability.probes import FaultProxy

pytestmark = pytest.mark.services


def _jpeg(sample_dir: Path) -> bytes:
    return sorted((sample_dir / "images").glob("*.jpg"))[0].read_bytes()


def test_a_failing_model_is_retried_until_it_works_no_event_errors(
        model_artifact: Path, sample_dir: Path, tmp_path: Path,
        settings_factory: Callable[..., Settings]) -> None:
    flag = tmp_path / "fault"
    flag.touch()
    settings = settings_factory(inference={"model_fault_flag": flag,
                                           "retry_backoff_initial_s": 0.1,
                                           "retry_backoff_max_s": 0.2})
    counter = BinCounter.from_artifact(model_artifact, "cpu")
    outcomes: queue.Queue[Outcome] = queue.Queue()
    pre = Preprocessor(counter.card, ImageLimits.from_settings(settings.inference))
    config = PipelineConfig.from_settings(settings.inference)
    with InferencePipeline(counter, pre, config, outcomes.put) as pipeline:
        for _ in range(3):
            pipeline.submit(WorkItem(None, None, image=_jpeg(sample_dir)))
        time.sleep(1.5)
        assert outcomes.empty(), "a model failure must not end the events"
        assert "injected model fault" in pipeline.faults.active()["model"].cause
        flag.unlink()
        got = [outcomes.get(timeout=30) for _ in range(3)]
    assert all(o.prediction is not None and o.error is None for o in got)
    assert pipeline.faults.active() == {}
    assert pipeline.faults.retries()["model"] >= 2


def test_a_missing_bucket_is_waited_out_not_a_missing_object(
        settings_factory: Callable[..., Settings], s3_client: Any, sample_dir: Path) -> None:
    bucket = f"later-{time.monotonic_ns()}"
    settings = settings_factory(s3={"allowed_buckets": (bucket,)},
                                inference={"retry_backoff_initial_s": 0.1,
                                           "retry_backoff_max_s": 0.3})
    with ImageFetcher.from_settings(settings) as fetcher:
        future = fetcher.fetch(f"s3://{bucket}/bin-images/1.jpg")
        deadline = time.monotonic() + 30
        while "s3" not in fetcher.faults.active() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # a few more retries
        assert not future.done(), future.exception() if future.done() else None
        assert "NoSuchBucket" in fetcher.faults.active()["s3"].cause
        s3_client.create_bucket(Bucket=bucket)
        s3_client.put_object(Bucket=bucket, Key="bin-images/1.jpg", Body=_jpeg(sample_dir))
        assert future.result(timeout=30) == _jpeg(sample_dir)
        assert fetcher.faults.active() == {}


def test_an_unclassified_error_for_one_key_ends_in_one_fetch_failed(
        settings_factory: Callable[..., Settings], services: Settings,
        bucket_factory: Callable[..., str], s3_client: Any, sample_dir: Path) -> None:
    bucket = bucket_factory("poison")
    for key in ("bad.jpg", "good.jpg"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=_jpeg(sample_dir))
    proxy = FaultProxy(services.services.s3_port)
    proxy.poisoned.add("bad.jpg")
    settings = settings_factory(
        s3={"allowed_buckets": (bucket,), "endpoint_url": f"http://127.0.0.1:{proxy.port}",
            "max_attempts": 1, "fetch_attempts": 3},
        inference={"retry_backoff_initial_s": 0.05, "retry_backoff_max_s": 0.1})
    try:
        with ImageFetcher.from_settings(settings) as fetcher:
            bad = fetcher.fetch(f"s3://{bucket}/bad.jpg")
            good = fetcher.fetch(f"s3://{bucket}/good.jpg")
            assert good.result(timeout=30) == _jpeg(sample_dir)
            with pytest.raises(EventError) as caught:
                bad.result(timeout=30)
    finally:
        proxy.stop()
    assert caught.value.kind is ErrorKind.FETCH_FAILED
    assert "InternalError" in caught.value.message and "3 attempts" in caught.value.message
    assert proxy.failed_gets == 3 * 2  # botocore's max_attempts counts retries: 2 GETs a round
    assert fetcher.faults.active() == {}  # one key's problem is not an outage
    assert fetcher.faults.retries() == {"s3": 3}

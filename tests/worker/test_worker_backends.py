"""The worker's one start-up call picks its inference backend: a GPU backend pinned on a
machine without a GPU is skipped with its reason and the worker runs on eager PyTorch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine, text

from core.settings import Settings
from robots.publisher import EventPlan, PublishOptions, publish
from worker.app import Worker

pytestmark = [pytest.mark.services,
              pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without GPU")]


@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime-cuda"])
def test_gpu_backend_without_gpu_falls_back_to_eager_and_processes_events(
        backend: str, settings_factory: Callable[..., Settings],
        topic_factory: Callable[..., str], model_artifact: Path, sample_dir: Path,
        clean_db: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    topic = topic_factory(partitions=1)
    settings = settings_factory(
        kafka={"topic": topic, "group_id": f"g-{topic}"},
        inference={"model": str(model_artifact), "device": "cpu", "backend": backend,
                   "max_batch_size": 4, "inference_cache_dir": tmp_path, "tune_seconds": 0.1},
        worker={"exit_when_idle_s": 3.0, "metrics_port": None})
    plan = EventPlan(bucket=settings.s3.bucket, count=12)
    publish(settings, PublishOptions(source=sample_dir, topic=topic, plan=plan,
                                     create_topic=False, progress=False))
    worker = Worker(settings)
    with caplog.at_level(logging.INFO):
        stats = worker.run()

    assert stats.events == 12
    assert worker.counter.backend_name == "eager"
    assert f"backend {backend} not used: {backend} needs a CUDA GPU" in caplog.text
    with clean_db.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM audit_results WHERE topic = :t"),
                         {"t": topic}).scalar_one()
    assert n == 12

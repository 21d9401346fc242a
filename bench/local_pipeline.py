"""The in-process pipeline fed from memory: no Kafka, no S3, no Postgres.

``InferencePipeline`` (decode pool → micro-batcher → inference thread) gets ``WorkItem``s that
already carry image bytes, with at most ``max_in_flight`` outstanding (the worker's bound).
Compared with the model alone on the same device and with the per-event pattern in process
(decode one → forward batch 1 → next), this isolates what the pipeline's stages cost.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry

from bench.env import CpuMeter, RssSampler
from bench.stagestats import mean_batch, stage_seconds
from core.model.preprocess import Preprocessor
from inference.counter import BinCounter
from inference.metrics import PipelineMetrics
from inference.pipeline import InferencePipeline, Outcome, PipelineConfig, WorkItem


def run_pipeline(counter: BinCounter, preprocessor: Preprocessor, images: list[bytes], *,
                 events: int, config: PipelineConfig, max_in_flight: int) -> dict[str, Any]:
    """Push ``events`` items through the pipeline as fast as it takes them."""
    slots = threading.BoundedSemaphore(max_in_flight)
    errors: list[str] = []
    registry = CollectorRegistry()

    def on_outcome(outcome: Outcome) -> None:
        if outcome.error is not None:
            errors.append(f"{outcome.error.kind}: {outcome.error}")
        slots.release()

    with RssSampler() as rss, CpuMeter() as cpu, InferencePipeline(
            counter, preprocessor, config, on_outcome, metrics=PipelineMetrics(registry)) as pipe:
        started = time.perf_counter()
        for i in range(events):
            slots.acquire()
            pipe.submit(WorkItem(None, None, image=images[i % len(images)]))
        pipe.drain()
        window = time.perf_counter() - started
    stages = stage_seconds(registry)
    return {"events": events, "errors": len(errors), "first_error": errors[0] if errors else None,
            "window_s": round(window, 3), "events_per_s": round(events / window, 2),
            "batch_size": config.max_batch_size, "decode_workers": config.decode_workers,
            "mean_batch_size": mean_batch(registry), "stages": stages,
            "busy": {"infer_thread": round(stages["infer"]["sum_s"] / window, 3),
                     "decode_pool": round(stages["decode"]["sum_s"]
                                          / (window * config.decode_workers), 3)},
            **rss.as_dict(), **cpu.as_dict()}


def run_per_event(counter: BinCounter, preprocessor: Preprocessor, images: list[bytes], *,
                  events: int) -> dict[str, Any]:
    """Decode one image, forward it alone (batch 1), then the next: nothing overlaps."""
    started = time.perf_counter()
    for i in range(events):
        counter.infer(preprocessor(images[i % len(images)]).unsqueeze(0))
    window = time.perf_counter() - started
    return {"events": events, "window_s": round(window, 3),
            "events_per_s": round(events / window, 2)}

"""The reference deployment's per-event pattern, done honestly with the worker's clients.

One event → one S3 GET → one decode → one forward pass (batch 1) → one INSERT transaction →
one offset commit, strictly in sequence, nothing overlapped. Same Kafka consumer adapter,
same ``ImageFetcher``, ``Preprocessor``, ``BinCounter.infer``, ``verdict_records`` and
``ResultSink.write`` as the worker; only the orchestration differs.
"""

from __future__ import annotations

import time
from typing import Any

from bench.components import fetch_policy
from core.model.preprocess import Preprocessor
from core.settings import Settings
from inference.counter import BinCounter
from inference.images import ImageFetcher
from inference.outcomes import verdict_records
from inference.positions import TopicPartitionKey
from schemas.events import decode_event
from worker.io.kafka_source import EventSource
from worker.io.pg_sink import ResultSink, WriteBatch

STAGES = ("fetch", "decode", "infer", "write", "commit")


def run_per_event(settings: Settings, counter: BinCounter, preprocessor: Preprocessor, *,
                  max_events: int, max_seconds: float) -> dict[str, Any]:
    """Process up to ``max_events`` (or for ``max_seconds``) one at a time."""
    clocks = dict.fromkeys(STAGES, 0.0)
    done = 0
    version = f"{counter.version}-per-event"  # its own rows: never an ON CONFLICT no-op
    started: float | None = None
    with ResultSink(settings.db) as sink, \
            ImageFetcher(settings.s3, fetch_policy(settings)) as fetcher, \
            EventSource(settings.kafka, on_revoke=lambda _: {}, on_assign=lambda _: None) as src:
        join_deadline = time.monotonic() + 60
        while done < max_events:
            if started is not None and time.perf_counter() - started >= max_seconds:
                break
            if started is None and time.monotonic() > join_deadline:
                raise RuntimeError("per-event baseline got no record within 60 s")
            for record in src.poll(timeout_ms=100, max_records=1):
                if started is None:
                    started = time.perf_counter()
                t0 = time.perf_counter()
                event = decode_event(record.value, max_bytes=settings.kafka.max_message_bytes)
                data = fetcher.fetch(event.image_uri).result()
                t1 = time.perf_counter()
                tensor = preprocessor(data)
                t2 = time.perf_counter()
                prediction = counter.infer(tensor.unsqueeze(0))[0]
                t3 = time.perf_counter()
                verdict, discrepancy = verdict_records(
                    event=event, topic=record.topic, partition=record.partition,
                    offset=record.offset, prediction=prediction, model_version=version,
                    supported_counts=counter.card.class_counts,
                    policy=counter.card.decision)
                sink.write(WriteBatch(verdicts=[verdict], discrepancies=[
                    discrepancy] if discrepancy is not None else []))
                t4 = time.perf_counter()
                src.commit({TopicPartitionKey(record.topic, record.partition): record.offset + 1})
                t5 = time.perf_counter()
                for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
                                          strict=True):
                    clocks[stage] += seconds
                done += 1
    assert started is not None
    window = time.perf_counter() - started
    return {"events": done, "window_s": round(window, 2),
            "events_per_s": round(done / window, 3) if window else 0.0,
            "mean_ms": {s: round(1000 * clocks[s] / max(done, 1), 2) for s in STAGES}}

"""Each I/O component of the worker alone, with the worker's own clients and settings.

* S3 GET rate: ``ImageFetcher`` with the worker's ``max_concurrency``, all GETs scheduled at
  once (the semaphore keeps ``max_concurrency`` in flight, as in the worker);
* decode rate: ``Preprocessor`` in a pool of ``decode_workers`` threads (the worker's pool);
* Kafka consume rate: a consumer-group member polling ``poll_max_records`` at a time and
  parsing each record (``decode_event``), i.e. the worker's main-thread work per record;
* Postgres write rate: ``ResultSink.write`` of verdict rows, per transaction size (1 row per
  transaction is the per-event pattern; the worker writes what finished since its last loop).
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from typing import Any

from kafka import KafkaConsumer
from sqlalchemy import create_engine

from bench.env import Rate
from core.model.card import DecisionPolicy
from core.model.preprocess import ImageLimits, Preprocessor
from core.settings import Settings
from inference.compare import Prediction
from inference.images import FetchPolicy, ImageFetcher
from inference.outcomes import verdict_records
from schemas.events import BinEvent, decode_event
from schemas.records import AuditVerdict
from worker.io.pg_sink import ResultSink, WriteBatch


def fetch_policy(settings: Settings) -> FetchPolicy:
    return FetchPolicy.from_settings(settings)


def s3_get_rate(settings: Settings, uris: list[str], *, repeats: int) -> Rate:
    rate = Rate()
    with ImageFetcher(settings.s3, fetch_policy(settings)) as fetcher:
        fetcher.fetch(uris[0]).result()  # connection pool warm
        for _ in range(repeats):
            started = time.perf_counter()
            futures = [fetcher.fetch(u) for u in uris]
            for f in futures:
                f.result()
            rate.samples.append(len(uris) / (time.perf_counter() - started))
    return rate


def decode_pool_rate(settings: Settings, images: list[bytes], preprocessor: Preprocessor, *,
                     repeats: int) -> Rate:
    rate = Rate()
    with concurrent.futures.ThreadPoolExecutor(settings.inference.decode_workers) as pool:
        for _ in range(repeats):
            started = time.perf_counter()
            list(pool.map(preprocessor, images))
            rate.samples.append(len(images) / (time.perf_counter() - started))
    return rate


def kafka_consume_rate(settings: Settings, topic: str, count: int, *, repeats: int) -> Rate:
    """Each repeat is a fresh group reading ``count`` records from the beginning."""
    rate = Rate()
    kcfg = settings.kafka
    for _ in range(repeats):
        consumer = KafkaConsumer(
            topic, **kcfg.client_kwargs(), group_id=f"bench-consume-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=max(kcfg.max_message_bytes * 2, 1_048_576))
        try:
            seen = 0
            started: float | None = None
            deadline = time.monotonic() + 120
            while seen < count and time.monotonic() < deadline:
                batches = consumer.poll(timeout_ms=200,
                                        max_records=settings.worker.poll_max_records)
                for records in batches.values():
                    if started is None:
                        started = time.perf_counter()  # group join is not consumption
                    for record in records:
                        decode_event(record.value, max_bytes=kcfg.max_message_bytes)
                    seen += len(records)
            if started is not None and seen:
                rate.samples.append(seen / (time.perf_counter() - started))
        finally:
            consumer.close(autocommit=False)
    return rate


def verdict_rows(events: list[BinEvent], prediction: Prediction, *, topic: str,
                 model_version: str) -> list[tuple[AuditVerdict, Any]]:
    return [verdict_records(event=e, topic=topic, partition=0, offset=i, prediction=prediction,
                            model_version=model_version, supported_counts=[1, 2, 3, 4, 5],
                            policy=DecisionPolicy())
            for i, e in enumerate(events)]


class BatchedResultSink(ResultSink):
    """What-if: the same sink on an engine with psycopg2 ``executemany_mode=
    "values_plus_batch"``. SQLAlchemy 2.1 does not use "insertmanyvalues" for an INSERT with
    ON CONFLICT (sqlalchemy#13130), so the worker's sink sends one statement per row."""

    def __enter__(self) -> BatchedResultSink:
        self._engine = create_engine(
            self.cfg.url.get_secret_value(), pool_pre_ping=True, pool_size=self.cfg.pool_size,
            connect_args={**self.cfg.connect_args(), "connect_timeout": 5},
            executemany_mode="values_plus_batch")
        return self


def pg_write_rate(settings: Settings, events: list[BinEvent], prediction: Prediction, *,
                  rows_per_transaction: int, repeats: int, batched: bool = False) -> Rate:
    """Rows/s writing ``events`` as verdicts (+ their discrepancies) in transactions of
    ``rows_per_transaction`` rows; a fresh model version per repeat, so every row is new."""
    rate = Rate()
    with (BatchedResultSink if batched else ResultSink)(settings.db) as sink:
        for _ in range(repeats):
            version = f"bench-pg-{uuid.uuid4().hex[:8]}"
            pairs = verdict_rows(events, prediction, topic="bench-pg", model_version=version)
            batches = []
            for i in range(0, len(pairs), rows_per_transaction):
                chunk = pairs[i:i + rows_per_transaction]
                batches.append(WriteBatch(verdicts=[v for v, _ in chunk],
                                          discrepancies=[d for _, d in chunk if d is not None]))
            started = time.perf_counter()
            for batch in batches:
                sink.write(batch)
            rate.samples.append(len(pairs) / (time.perf_counter() - started))
    return rate


def measure_all(settings: Settings, *, topic: str, events: list[BinEvent], images: list[bytes],
                preprocessor: Preprocessor, prediction: Prediction, repeats: int,
                pg_transaction_sizes: list[int], pg_rows: int = 1000) -> dict[str, Any]:
    """Every component alone, back to back (same process, same run)."""
    n = len(events)
    uris = [e.image_uri for e in events]
    pool_images = (images * (-(-n // len(images))))[:n]
    out: dict[str, Any] = {
        "events": n,
        "s3_get": {"concurrency": settings.s3.max_concurrency,
                   "per_s": s3_get_rate(settings, uris, repeats=repeats).as_dict()},
        "decode": {"workers": settings.inference.decode_workers,
                   "per_s": decode_pool_rate(settings, pool_images, preprocessor,
                                             repeats=repeats).as_dict()},
        "kafka_consume": {"max_records": settings.worker.poll_max_records,
                          "per_s": kafka_consume_rate(settings, topic, n,
                                                      repeats=repeats).as_dict()},
        "postgres_write": {
            str(size): pg_write_rate(settings, events[:pg_rows], prediction,
                                     rows_per_transaction=size, repeats=repeats).as_dict()
            for size in pg_transaction_sizes},
        "postgres_write_values_plus_batch": {
            str(size): pg_write_rate(settings, events[:pg_rows], prediction,
                                     rows_per_transaction=size, repeats=repeats,
                                     batched=True).as_dict()
            for size in pg_transaction_sizes if size > 1},
    }
    return out


def limits_of(settings: Settings) -> ImageLimits:
    return ImageLimits.from_settings(settings.inference)


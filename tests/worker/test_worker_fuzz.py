"""Fuzzed records through real Kafka to a real `binaudit worker` child process.

A few hundred hostile records (deep nesting, huge and non-finite numbers, dates that overflow
in UTC, lone surrogates, wrong types, oversized fields, raw bytes, odd keys), mixed with valid
events whose images are in the (moto) bucket: the worker must stay up, turn every record into
exactly one verdict or dead letter, and commit the group's offsets up to the end of every
partition. Before the fix the first overflowing captured_at killed the worker (OverflowError),
and a restart died on the same offset.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import Engine, text

import worker.app as worker_app
from core.producer import EventProducer
from core.settings import Settings
from worker.app import Worker

pytestmark = pytest.mark.services

SEED = 21
OVERFLOWS = ("9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00")
# Values a field may be replaced by: each one broke, or could break, some decoder once.
NASTY: list[Any] = [
    None, True, 0, -1, 2 ** 63, -(2 ** 64), 1.5, "", " ", "\x00", "\u202e", "\U0001f4e6" * 64,
    "x" * 129, "x" * 5000, [], {}, [[[[[]]]]], {"a": {"b": {"c": {}}}}, "s3://", "s3://b/../k",
    "s3://binaudit-images/", "s3://127.0.0.1/k.jpg", "http://x/y.jpg", *OVERFLOWS,
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2026-01-01T00:00:00",
    "2026-02-30T00:00:00Z", "10000-01-01T00:00:00Z", -62135596801, 253402300800000,
]
# Raw fragments json.dumps cannot write: spliced in as the text of a field's value.
RAW_VALUES = [b"NaN", b"-Infinity", b"1e999", b"9" * 5000, b'"\\ud800"', b'"\\udfff\\ud800"',
              b"[" * 50_000, b"[" * 40 + b"]" * 40, b'{"a":' * 900 + b"1" + b"}" * 900]


def valid_event(i: int, bucket: str, image_id: str, expected: int, *,
                captured_at: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {"schema_version": 1, "event_id": f"fuzz-{i:05d}", "bin_id": f"fuzz-bin-{i:05d}",
            "captured_at": captured_at, "image_uri": f"s3://{bucket}/bin-images/{image_id}.jpg",
            "expected_quantity": expected, "robot_id": "fuzz-robot"}


def fuzzed(rng: random.Random, base: dict[str, Any]) -> bytes:
    """One hostile variant of ``base`` (seeded: the same records on every run)."""
    how = rng.choice(["field", "field", "raw_field", "bytes", "truncate", "drop", "extra"])
    event = dict(base)
    if how == "field":
        # Not event_id: two valid records under one id is another defect (duplicate_event_id,
        # tested with the worker's dedup), not a malformed input.
        event[rng.choice(sorted(set(event) - {"event_id"}))] = rng.choice(NASTY)
    elif how == "drop":
        event.pop(rng.choice(sorted(event)))
    elif how == "extra":
        event["manifest"] = {"EXPECTED_QUANTITY": event["expected_quantity"],
                             "BIN_FCSKU_DATA": {}, rng.choice(["x", "\u00e9"]): rng.choice(NASTY)}
    raw = json.dumps(event).encode()
    if how == "raw_field":
        key = rng.choice(sorted(event)).encode()
        raw = raw[:-1] + b', "' + key + b'": ' + rng.choice(RAW_VALUES) + b"}"
    elif how == "bytes":
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
    elif how == "truncate":
        raw = raw[: rng.randrange(len(raw))]
    return raw


def records(bucket: str, images: list[tuple[str, int]]) -> Iterator[tuple[str, bytes]]:
    """(key, value) of every record: valid events (some at the edges of the date range),
    the two overflowing dates, and seeded fuzz."""
    rng = random.Random(SEED)
    edges = ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "1969-12-31T23:59:59Z"]
    for i in range(300):
        image_id, expected = images[i % len(images)]
        base = valid_event(i, bucket, image_id, expected)
        if i % 10 == 0:
            at = edges[(i // 10) % len(edges)]
            yield base["bin_id"], json.dumps({**base, "captured_at": at}).encode()
        elif i in (1, 2):
            yield base["bin_id"], json.dumps({**base, "captured_at": OVERFLOWS[i - 1]}).encode()
        else:
            yield rng.choice([base["bin_id"], "", "\x00key"]), fuzzed(rng, base)


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def committed_and_end(settings: Settings, topic: str, group: str
                      ) -> tuple[dict[int, int | None], dict[int, int]]:
    consumer = KafkaConsumer(**settings.kafka.consumer_kwargs(group_id=group))
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        end = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
        return {tp.partition: consumer.committed(tp) for tp in tps}, end
    finally:
        consumer.close(autocommit=False)


def test_fuzzed_records_each_end_as_one_verdict_or_dead_letter(
        settings_factory: Callable[..., Settings], topic_factory: Callable[..., str],
        model_artifact: Path, sample_dir: Path, s3_client: Any, clean_db: Engine,
        bucket_factory: Callable[..., str], worker_process_factory: Callable[..., Any]) -> None:
    topic = topic_factory(partitions=3)
    group = f"g-{topic}"
    settings = settings_factory(kafka={"topic": topic, "group_id": group})
    bucket = bucket_factory("fuzz")
    images = [(p.stem, 1 + n % 5) for n, p in
              enumerate(sorted((sample_dir / "images").glob("*.jpg"))[:12])]
    for image_id, _ in images:
        s3_client.put_object(Bucket=bucket, Key=f"bin-images/{image_id}.jpg",
                             Body=(sample_dir / "images" / f"{image_id}.jpg").read_bytes())
    sent = 0
    with EventProducer(settings.kafka) as producer:
        for key, value in records(bucket, images):
            producer.send(topic, key=key, value=value)
            sent += 1
    assert sent == 300

    wp = worker_process_factory(
        "fuzz", kafka={"topic": topic, "group_id": group},
        s3={"bucket": bucket, "allowed_buckets": json.dumps([bucket])},
        inference={"model": model_artifact, "device": "cpu", "backend": "eager",
                   "max_batch_size": 8},
        worker={"exit_when_idle_s": 3.0})
    assert wp.wait(timeout=300) == 0, wp.log()[-4000:]

    verdicts = rows(clean_db, 'SELECT "partition", "offset", event_id FROM audit_results '
                              "WHERE topic = :t", t=topic)
    letters = rows(clean_db, 'SELECT "partition", "offset", error_kind, message '
                             "FROM dead_letters WHERE topic = :t", t=topic)
    positions = [(r.partition, r.offset) for r in [*verdicts, *letters]]
    assert len(positions) == len(set(positions)) == sent, (len(verdicts), len(letters))
    assert len(verdicts) >= 30  # the valid events (edge dates included) got verdicts
    edge_ids = {f"fuzz-{i:05d}" for i in range(0, 300, 10)}
    assert edge_ids <= {r.event_id for r in verdicts}
    overflow = [r for r in letters if "outside the representable range" in r.message]
    assert len(overflow) == 2 and {r.error_kind for r in overflow} == {"schema_violation"}
    assert "internal_error" not in {r.error_kind for r in letters}, letters

    committed, end = committed_and_end(settings, topic, group)
    assert committed == end, (committed, end)
    assert "Traceback" not in wp.log(), wp.log()[-4000:]


def test_an_unexpected_exception_for_one_record_is_its_dead_letter(
        settings_factory: Callable[..., Settings], topic_factory: Callable[..., str],
        model_artifact: Path, sample_dir: Path, s3_client: Any, clean_db: Engine,
        bucket_factory: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug nobody has found yet, simulated: the decoder (or the verdict builder) raises
    something that is not an EventError for one record. That record becomes an
    internal_error dead letter naming the exception class; the others flow; the worker ends
    normally (it used to die, and die again on the same offset after a restart)."""
    topic = topic_factory(partitions=1)
    bucket = bucket_factory("fuzz-bug")
    image = next((sample_dir / "images").glob("*.jpg"))
    s3_client.put_object(Bucket=bucket, Key=f"bin-images/{image.stem}.jpg",
                         Body=image.read_bytes())
    settings = settings_factory(
        kafka={"topic": topic, "group_id": f"g-{topic}"},
        s3={"bucket": bucket, "allowed_buckets": (bucket,)},
        inference={"model": str(model_artifact), "device": "cpu", "backend": "eager",
                   "max_batch_size": 4},
        worker={"exit_when_idle_s": 2.0, "metrics_port": None})
    real_decode, real_verdicts = worker_app.decode_event, worker_app.verdict_records

    def decode(raw: bytes, **kw: Any) -> Any:
        if b"poison-decode" in raw:
            raise RuntimeError("a decoder bug")
        return real_decode(raw, **kw)

    def verdicts(**kw: Any) -> Any:
        if kw["event"].bin_id == "poison-verdict":
            raise ZeroDivisionError("a verdict bug")
        return real_verdicts(**kw)

    monkeypatch.setattr(worker_app, "decode_event", decode)
    monkeypatch.setattr(worker_app, "verdict_records", verdicts)
    with EventProducer(settings.kafka) as producer:
        for i, bin_id in enumerate(["ok-1", "poison-decode", "poison-verdict", "ok-2"]):
            event = valid_event(i, bucket, image.stem, 1) | {"bin_id": bin_id}
            producer.send(topic, key=bin_id, value=json.dumps(event).encode())

    stats = Worker(settings).run()

    letters = rows(clean_db, 'SELECT "offset", error_kind, message FROM dead_letters '
                             "WHERE topic = :t ORDER BY 1", t=topic)
    assert [(r.offset, r.error_kind) for r in letters] == [(1, "internal_error"),
                                                          (2, "internal_error")]
    assert letters[0].message.startswith("RuntimeError: a decoder bug")
    assert letters[1].message.startswith("ZeroDivisionError: a verdict bug")
    verdict_offsets = rows(clean_db, 'SELECT "offset" FROM audit_results WHERE topic = :t '
                                     "ORDER BY 1", t=topic)
    assert [r.offset for r in verdict_offsets] == [0, 3]
    assert stats.events == 4 and stats.dead_letters == {"internal_error": 2}
    committed, end = committed_and_end(settings, topic, f"g-{topic}")
    assert committed == end == {0: 4}

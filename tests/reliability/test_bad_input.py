"""A corpus of bad input, sent through Kafka and S3 the way an attacker or a broken robot would.

Every bad record must end as exactly one ``dead_letters`` row with its specific error kind; the
worker must stay up, keep processing good events sent after the corpus, and its memory must
stay bounded while it refuses decompression bombs and oversized objects.
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from tests.hostile_images import jpeg_claiming, png_compressible, png_header_bomb

pytestmark = [pytest.mark.reliability, pytest.mark.services, pytest.mark.slow]

BUCKET = "binaudit-images"
OTHER_BUCKET = "corpus-other-bucket"
MAX_IMAGE_BYTES = 4 * 1024 * 1024  # the corpus worker's limit; one object is 4x over it
HUGE_MESSAGE_BYTES = 2 * 1024 * 1024  # over max_message_bytes (1 MiB), under the broker's 10 MB
# Peak worker RSS during the corpus may exceed its RSS before the corpus by at most this much:
# every bomb and oversized object must be refused from its header or ContentLength.
RSS_GROWTH_BOUND_MB = 150.0
SQL = "'; DROP TABLE audit_results; --"


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    value: bytes
    key: bytes | None = None
    objects: tuple[tuple[str, str, bytes], ...] = ()  # (bucket, key, body) to upload first




def event(name: str, i: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": 1, "bin_id": f"corpus-{name}",
        "captured_at": (datetime(2026, 6, 1, tzinfo=UTC) + timedelta(seconds=i)).isoformat(),
        "image_uri": f"s3://{BUCKET}/bin-images/00001.jpg", "expected_quantity": 3,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def corpus(sample_jpeg: bytes) -> list[Case]:
    def ev(name: str, kind: str, *, objects: tuple[tuple[str, str, bytes], ...] = (),
           key: bytes | None = None, **fields: Any) -> Case:
        value = json.dumps(event(name, len(cases), **fields)).encode()
        return Case(name, kind, value, key, objects)

    def img(name: str, kind: str, body: bytes) -> Case:
        obj_key = f"corpus/{name}.img"
        return ev(name, kind, image_uri=f"s3://{BUCKET}/{obj_key}",
                  objects=((BUCKET, obj_key, body),))

    good = json.dumps(event("truncated-json", 0)).encode()
    cases: list[Case] = []
    for case in (
        Case("not JSON", "invalid_json", b"this is not json at all"),
        Case("invalid UTF-8", "invalid_json", b"\xff\xfe\x00garbage\x80"),
        Case("JSON array", "invalid_json", b"[1, 2, 3]"),
        Case("NaN constant", "invalid_json", b'{"expected_quantity": NaN}'),
        Case("truncated JSON", "invalid_json", good[: len(good) // 2]),
        Case("NUL byte in the Kafka key", "invalid_json", b"not json", key=b"evil\x00key"),
        Case("JSON nested 100,000 deep", "invalid_json", b"[" * 100_000 + b"]" * 100_000),
    ):
        cases.append(case)
    cases += [
        ev("quantity-as-string", "schema_violation", expected_quantity="3"),
        ev("bin-id-as-int", "schema_violation", bin_id=12345),
        ev("missing-image-uri", "schema_violation", image_uri=...),
        Case("empty object", "schema_violation", b"{}"),
        ev("unknown-field", "schema_violation", admin=True),
        ev("schema-version-2", "unsupported_schema_version", schema_version=2),
        ev("schema-version-string", "unsupported_schema_version", schema_version="1"),
        ev("huge-message", "message_too_large", padding="x" * HUGE_MESSAGE_BYTES),
        ev("other-bucket", "bucket_not_allowed", image_uri=f"s3://{OTHER_BUCKET}/secret.jpg",
           objects=((OTHER_BUCKET, "secret.jpg", sample_jpeg),)),
        ev("dot-dot", "invalid_image_uri", image_uri=f"s3://{BUCKET}/../secret.jpg"),
        ev("nested-dot-dot", "invalid_image_uri",
           image_uri=f"s3://{BUCKET}/bin-images/../../secret.jpg"),
        ev("double-slash", "invalid_image_uri", image_uri=f"s3://{BUCKET}//etc/passwd"),
        ev("leading-slash", "invalid_image_uri", image_uri=f"s3:///{BUCKET}/x.jpg"),
        ev("backslash-dot-dot", "invalid_image_uri", image_uri=f"s3://{BUCKET}/a\\..\\b.jpg"),
        ev("control-char-in-key", "invalid_image_uri",
           image_uri=f"s3://{BUCKET}/bin-images/\x07\x1b[2J.jpg"),
        # Keys are literal: an encoded "%2e%2e" is a key of its own, which does not exist.
        ev("percent-encoded-dot-dot", "missing_object",
           image_uri=f"s3://{BUCKET}/%2e%2e/secret.jpg"),
        ev("missing-object", "missing_object", image_uri=f"s3://{BUCKET}/corpus/never.jpg"),
        img("zero-byte", "empty_object", b""),
        img("not-an-image", "not_an_image", b"#!/bin/sh\nrm -rf /\n" * 100),
        img("truncated-jpeg", "truncated_image", sample_jpeg[: len(sample_jpeg) // 2]),
        img("png-header-30000x30000", "image_too_many_pixels", png_header_bomb(30_000, 30_000)),
        img("png-real-12000x12000", "image_too_many_pixels", png_compressible(12_000)),
        img("jpeg-claims-65500x65500", "image_too_many_pixels", jpeg_claiming(65_500, 65_500)),
        img("jpeg-claims-9000x5000", "image_too_many_pixels", jpeg_claiming(9_000, 5_000)),
        img("object-4x-over-byte-limit", "object_too_large",
            random.Random(0).randbytes(4 * MAX_IMAGE_BYTES)),
        ev("quantity-negative", "schema_violation", expected_quantity=-5),
        ev("quantity-absurd", "schema_violation", expected_quantity=10**12),
        ev("manifest-disagrees", "schema_violation",
           manifest={"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 7}),
        ev("sql-as-quantity", "schema_violation", expected_quantity=SQL),
        ev("nul-in-bin-id", "schema_violation", bin_id="bin\x00id"),
        ev("sql-and-escape-in-robot-id", "schema_violation", robot_id=SQL + "\x1b[31m"),
        # JSON text escaping a lone surrogate is not Unicode: refused by the JSON reader.
        ev("lone-surrogate", "invalid_json", station_id="\ud800"),
        # Valid ISO 8601 that overflows once converted to UTC (used to stop every worker).
        ev("captured-at-overflows-utc", "schema_violation",
           captured_at="9999-12-31T23:00:00-05:00"),
        ev("captured-at-underflows-utc", "schema_violation",
           captured_at="0001-01-01T00:00:00+01:00"),
    ]
    return cases


class RssSampler(threading.Thread):
    def __init__(self, worker: Any, interval_s: float = 0.5) -> None:
        super().__init__(name="rss", daemon=True)
        self.worker, self.interval = worker, interval_s
        self.samples: list[float] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            if (rss := self.worker.rss_mb()) is not None:
                self.samples.append(rss)

    def stop(self) -> list[float]:
        self._halt.set()
        self.join(timeout=10)
        return self.samples


def test_bad_input_corpus(harness: Any, stack_s3: Any, sample_dir: Path, scenario_log: Any,
                          offset_watch: Any, waiter: Any) -> None:
    h = harness
    sample_jpeg = (sample_dir / "images" / "00001.jpg").read_bytes()
    cases = corpus(sample_jpeg)
    topic = h.topic(partitions=3)
    group = f"g-{topic}"
    before = h.publish(topic, sample_dir, 40)
    # The images the corpus' valid-looking events point at (publish created the bucket).
    for image_id in ("00001", "00002"):
        stack_s3.put_object(Bucket=BUCKET, Key=f"bin-images/{image_id}.jpg",
                            Body=(sample_dir / "images" / f"{image_id}.jpg").read_bytes())
    for case in cases:
        for bucket, key, body in case.objects:
            if bucket not in {b["Name"] for b in stack_s3.list_buckets()["Buckets"]}:
                stack_s3.create_bucket(Bucket=bucket)
            stack_s3.put_object(Bucket=bucket, Key=key, Body=body)
    s3_log = h.settings.services.root / "s3.log"
    s3_log_start = s3_log.stat().st_size

    with offset_watch(topic, group) as watch:
        wp = h.worker("corpus", topic=topic, group=group, max_image_bytes=MAX_IMAGE_BYTES,
                      max_batch_size=8)
        waiter(lambda: h.written(topic) >= before.published, 180, "the good events",
               workers=(wp,))
        baseline = wp.rss_mb() or 0.0
        sampler = RssSampler(wp)
        sampler.start()
        positions = send_raw(h.settings, topic, cases)
        hostile = hostile_but_valid_event(h.settings, topic)
        waiter(lambda: h.written(topic) >= before.published + len(cases) + 1, 180,
               "a row per corpus record", workers=(wp,))
        after = h.publish(topic, sample_dir, 40)
        waiter(lambda: h.verdicts(topic) >= before.valid + after.valid + 1, 180,
               "the good events sent after the corpus", workers=(wp,))
        alive = wp.alive()
        rss = sampler.stop()
        code = wp.stop()

    letters = {(r.partition, r.offset): r for r in h.rows(
        'SELECT "partition", "offset", error_kind, key, payload_truncated, message '
        "FROM dead_letters WHERE topic=:t", t=topic)}
    problems = []
    for case, pos in zip(cases, positions, strict=True):
        row = letters.get(pos)
        if row is None or row.error_kind != case.kind:
            problems.append(f"{case.name}: expected {case.kind}, got "
                            f"{row.error_kind if row else 'no dead letter'}")
    huge = letters.get(positions[[c.name for c in cases].index("huge-message")])
    if huge is not None and not huge.payload_truncated:
        problems.append("the huge message's stored payload was not truncated to 64 KiB")
    good_ids = before.event_ids + after.event_ids + [hostile["event_id"]]
    audit = h.audit(topic, good_ids)
    if audit["lost"] or audit["duplicated"] or audit["unexpected"]:
        problems.append(f"rows: {audit}")
    if audit["dead_letters"] != len(cases):
        problems.append(f"{audit['dead_letters']} dead letters for {len(cases)} bad records")
    stored = h.rows("SELECT bin_id, robot_id, station_id FROM audit_results WHERE event_id=:e",
                    e=hostile["event_id"])
    if [tuple(r) for r in stored] != [(hostile["bin_id"], hostile["robot_id"],
                                       hostile["station_id"])]:
        problems.append(f"hostile-but-valid strings did not round-trip: {stored}")
    if h.scalar("SELECT to_regclass('audit_results') IS NOT NULL") is not True:
        problems.append("audit_results is gone")
    peak = max(rss, default=0.0)
    if not alive or code != 0:
        problems.append(f"worker alive after the corpus: {alive}, exit code {code}")
    if peak - baseline > RSS_GROWTH_BOUND_MB:
        problems.append(f"RSS grew {peak - baseline:.0f} MB during the corpus "
                        f"(bound {RSS_GROWTH_BOUND_MB:.0f} MB)")
    other_gets = [line for line in read_from(s3_log, s3_log_start).splitlines()
                  if f"/{OTHER_BUCKET}/" in line and '"GET ' in line]
    if other_gets:
        problems.append(f"the worker read a bucket outside the allow-list: {other_gets[:2]}")
    problems += [f"offset watch: {v}" for v in watch.violations[:5]]
    kinds = sorted({c.kind for c in cases})
    scenario_log.add(
        name="bad-input corpus (Kafka + S3)", sent=before.published + len(cases) + 1 +
        after.published, good=len(good_ids), rows=audit["rows"], lost=audit["lost"],
        duplicated=audit["duplicated"], dead_letters=audit["dead_letters"], recovery_s=None,
        recovered_by="nothing to recover: each bad record is a dead letter, the stream goes on",
        passed=not problems,
        notes=f"{len(cases)} bad records, each asserted to its own error kind ({len(kinds)} "
              f"kinds: {', '.join(kinds)}). Cases: "
              + "; ".join(f"{c.name} → `{c.kind}`" for c in cases)
              + f". Plus one hostile but valid event (bin_id `{SQL}`, unicode robot id, "
              "RTL-override station id): one verdict row, strings stored verbatim.",
        extra={"worker RSS before the corpus / peak during it (MB)":
               f"{baseline:.0f} / {peak:.0f} (bound: +{RSS_GROWTH_BOUND_MB:.0f} MB)",
               "GETs on the non-allow-listed bucket (moto request log)": str(len(other_gets)),
               "offset checks (ok / violations)": f"{watch.checks} / {len(watch.violations)}",
               "worker alive after the corpus": str(alive)})
    assert not problems, problems


def send_raw(settings: Any, topic: str, cases: list[Case]) -> list[tuple[int, int]]:
    """Send each case as a raw record; return its (partition, offset)."""
    producer = KafkaProducer(**settings.kafka.client_kwargs(), acks="all",
                             max_request_size=HUGE_MESSAGE_BYTES + 1024 * 1024)
    try:
        futures = [producer.send(topic, key=c.key if c.key is not None else c.name.encode(),
                                 value=c.value) for c in cases]
        producer.flush(timeout=60)
        return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
    finally:
        producer.close(timeout=10)


def hostile_but_valid_event(settings: Any, topic: str) -> dict[str, Any]:
    """SQL, unicode and an RTL override in identifiers: valid, so it must get a verdict."""
    from schemas.events import make_event_id

    captured = datetime(2026, 7, 1, tzinfo=UTC)
    fields = {"schema_version": 1, "bin_id": SQL, "captured_at": captured.isoformat(),
              "robot_id": "ロボット-🤖-ünïcode", "station_id": "\u202estation-evil",
              "image_uri": f"s3://{BUCKET}/bin-images/00002.jpg", "expected_quantity": 2}
    producer = KafkaProducer(**settings.kafka.client_kwargs(), acks="all")
    try:
        producer.send(topic, key=b"hostile", value=json.dumps(fields).encode()).get(timeout=30)
    finally:
        producer.close(timeout=10)
    return {**fields, "event_id": make_event_id(SQL, captured)}


def read_from(path: Path, offset: int) -> str:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")

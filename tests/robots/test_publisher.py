"""`binaudit publish` (the robot simulator) against the real Kafka and S3."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import ConfigResource, ConfigResourceType
from PIL import Image

from core.settings import Settings
from core.truth import WRONG_MANIFEST_KINDS, read_truth
from robots.manifests import ManifestPerturber, WrongManifests
from robots.publisher import (
    FAULT_KEYS,
    FAULT_NAMES,
    EventPlan,
    FaultInjector,
    PublishOptions,
    PublishReport,
    build_events,
    publish,
)
from schemas.events import BinEvent, decode_event, make_event_id
from schemas.export import load_schema
from schemas.records import ErrorKind, EventError

pytestmark = pytest.mark.services


@pytest.fixture
def topic(topic_factory: Callable[..., str], services: Settings) -> str:
    name = topic_factory(partitions=3)
    # Records carry captured_at (2026-01-01 by default) as their timestamp; with the broker's
    # default 7-day retention they would be deleted at its next retention check.
    admin = KafkaAdminClient(**services.kafka.client_kwargs())
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name,
                                        configs={"retention.ms": "-1"})])
    admin.close()
    return name


@pytest.fixture
def pub_settings(settings_factory: Callable[..., Settings],
                 bucket_factory: Callable[..., str]) -> Settings:
    bucket = bucket_factory("pub")
    return settings_factory(s3={"bucket": bucket, "allowed_buckets": (bucket,)})


def run(settings: Settings, sample_dir: Path, topic: str, **kw: Any) -> PublishReport:
    plan_keys = set(EventPlan.__dataclass_fields__) - {"bucket"}
    plan = EventPlan(bucket="", **{k: v for k, v in kw.items() if k in plan_keys})
    rest = {k: v for k, v in kw.items() if k not in plan_keys}
    return publish(settings, PublishOptions(source=sample_dir, topic=topic, plan=plan,
                                            create_topic=False, progress=False, **rest))


def consume(settings: Settings, topic: str, expected: int) -> list[Any]:
    consumer = KafkaConsumer(topic, **settings.kafka.client_kwargs(), group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    try:
        records = []
        for record in consumer:
            records.append(record)
            if len(records) >= expected + 10:
                break
        return records
    finally:
        consumer.close()


def test_publish_the_whole_sample(pub_settings: Settings, sample_dir: Path, topic: str,
                                  s3_client: Any) -> None:
    report = run(pub_settings, sample_dir, topic)
    assert (report.published, report.valid, report.fault_count) == (350, 350, 0)
    assert report.uploaded == 350

    records = consume(pub_settings, topic, 350)
    assert len(records) == 350
    validator = jsonschema.Draft202012Validator(load_schema(BinEvent))
    labels = {p.stem for p in (sample_dir / "metadata").glob("*.json")}
    bucket = pub_settings.s3.bucket
    for record in records:
        validator.validate(json.loads(record.value))
        event = decode_event(record.value)
        assert record.key.decode() == event.bin_id and event.bin_id in labels
        assert record.timestamp == int(event.captured_at.timestamp() * 1000)
        assert event.manifest is not None
        assert event.expected_quantity == event.manifest.EXPECTED_QUANTITY
        ev_bucket, key = event.image_location
        assert ev_bucket == bucket and key == f"bin-images/{event.bin_id}.jpg"
        head = s3_client.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == (sample_dir / "images" / f"{event.bin_id}.jpg"
                                         ).stat().st_size
    assert {r.key.decode() for r in records} == labels
    assert sorted(decode_event(r.value).event_id for r in records) == sorted(report.event_ids)

    again = run(pub_settings, sample_dir, topic)
    assert again.event_ids == report.event_ids and again.uploaded == 0
    assert again.upload_skipped == 350


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_faults_produce_the_named_bad_inputs(pub_settings: Settings, sample_dir: Path,
                                             topic: str, s3_client: Any) -> None:
    report = run(pub_settings, sample_dir, topic, count=60, faults=FAULT_NAMES,
                 fault_rate=0.5, seed=7)
    assert report.valid == 60 and set(report.faults) == set(FAULT_NAMES)
    assert report.published == 60 + report.fault_count
    records = {(r.partition, r.offset): r for r in consume(pub_settings, topic,
                                                           report.published)}
    assert len(records) == report.published
    bucket = pub_settings.s3.bucket
    expected_decode = {"malformed_json": ErrorKind.INVALID_JSON,
                       "schema_violation": ErrorKind.SCHEMA_VIOLATION}
    for name, published in report.faults.items():
        for rec in published:
            raw = records[(rec.partition, rec.offset)].value
            if name in expected_decode:
                with pytest.raises(EventError) as info:
                    decode_event(raw)
                assert info.value.kind is expected_decode[name]
                continue
            event = decode_event(raw)  # image faults are valid events with bad objects
            assert event.event_id == rec.event_id
            _, key = event.image_location
            if name == "missing_image":
                with pytest.raises(s3_client.exceptions.ClientError):
                    s3_client.head_object(Bucket=bucket, Key=key)
            else:
                assert key == FAULT_KEYS[name]
    assert_fault_objects(s3_client, bucket, sample_dir)

    again = run(pub_settings, sample_dir, topic, count=60, faults=FAULT_NAMES,
                fault_rate=0.5, seed=7)
    assert {n: [r.event_id for r in v] for n, v in again.faults.items()} == \
        {n: [r.event_id for r in v] for n, v in report.faults.items()}


def assert_fault_objects(s3_client: Any, bucket: str, sample_dir: Path) -> None:
    import io

    def body(key: str) -> bytes:
        data: bytes = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return data

    jpeg = body(FAULT_KEYS["corrupt_jpeg"])
    assert jpeg[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(jpeg)) as img, pytest.raises(OSError, match="truncated"):
        img.load()
    png = body(FAULT_KEYS["oversized_image"])
    assert len(png) < 1_000_000
    with Image.open(io.BytesIO(png)) as img:
        assert img.width * img.height > 40_000_000
    text = body(FAULT_KEYS["not_an_image"])
    with pytest.raises(OSError):
        Image.open(io.BytesIO(text))


def test_build_events_is_deterministic_without_kafka(sample_dir: Path) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = build_events(sample_dir, bucket="b-images", count=5, interval_s=2.5)
    assert [e.captured_at for e in events] == [start + timedelta(seconds=2.5 * i)
                                               for i in range(5)]
    assert [e.event_id for e in events] == [make_event_id(e.bin_id, e.captured_at)
                                            for e in events]
    assert events == build_events(sample_dir, bucket="b-images", count=5, interval_s=2.5)
    shuffled = build_events(sample_dir, bucket="b-images", shuffle=True, seed=3)
    assert sorted(e.bin_id for e in shuffled) == sorted(e.bin_id for e in build_events(
        sample_dir, bucket="b-images"))
    assert [e.bin_id for e in shuffled][:20] != [e.bin_id for e in events][:20]
    looped = build_events(sample_dir, bucket="b-images", loop=True, count=360)
    assert len(looped) == 360 and len({e.event_id for e in looped}) == 360
    assert looped[350].bin_id == looped[0].bin_id


def test_fault_draws_are_seeded() -> None:
    def draws(seed: int) -> list[str | None]:
        injector = FaultInjector(FAULT_NAMES, 0.3, seed)
        return [injector.draw() for _ in range(200)]

    assert draws(1) == draws(1) != draws(2)
    assert 30 < sum(d is not None for d in draws(1)) < 90
    with pytest.raises(ValueError, match="unknown fault"):
        FaultInjector(("nope",), 0.1, 0)


def test_cli_publish(pub_settings: Settings, sample_dir: Path, topic: str,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from binaudit.cli import app

    args = ["publish", "--source", str(sample_dir), "--topic", topic, "--bucket",
            pub_settings.s3.bucket, "--count", "5", "--shuffle", "--seed", "4", "--rate", "50",
            "--start-time", "2026-03-01T12:00:00+02:00", "--interval-s", "0.5",
            "--faults", "not_an_image", "--fault-rate", "1", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "published 10 records" in result.output and "not_an_image: 5" in result.output
    events = [decode_event(r.value) for r in consume(pub_settings, topic, 10)]
    assert min(e.captured_at for e in events) == datetime(2026, 3, 1, 10, tzinfo=UTC)
    bad = CliRunner().invoke(app, [*args[:-5], "--faults", "bogus", "--no-progress"])
    assert bad.exit_code == 1 and "unknown fault" in bad.output


def test_wrong_manifests_are_seeded_and_the_truth_stays_outside_the_event(
        pub_settings: Settings, sample_dir: Path, topic: str, tmp_path: Path) -> None:
    truth_path = tmp_path / "truth.csv"
    wrong = WrongManifests(rate=0.1, truth_path=truth_path)
    report = run(pub_settings, sample_dir, topic, seed=7, wrong_manifests=wrong)
    truth = read_truth(truth_path)
    assert len(truth) == report.valid == 350
    perturbed = {e: t for e, t in truth.items() if t.perturbation is not None}
    assert sum(report.wrong_manifests.values()) == len(perturbed)
    assert 20 <= len(perturbed) <= 50  # ~10 % of 350
    assert set(report.wrong_manifests) == set(WRONG_MANIFEST_KINDS)
    samples = {p.stem: json.loads(p.read_text())["EXPECTED_QUANTITY"]
               for p in (sample_dir / "metadata").glob("*.json")}
    for record in consume(pub_settings, topic, 350):
        raw = json.loads(record.value)
        assert "perturbation" not in raw and "true_count" not in raw
        event = decode_event(record.value)
        t = truth[event.event_id]
        assert t.true_count == samples[event.bin_id]  # the truth is the sample's own count
        assert event.expected_quantity == t.manifest_count
        assert event.manifest is not None and t.manifest_count == event.manifest.EXPECTED_QUANTITY
        delta = {"missing_item": 1, "extra_item": -1}.get(t.perturbation or "")
        if t.perturbation is None:
            assert t.manifest_count == t.true_count
        elif delta is not None:
            assert t.manifest_count - t.true_count == delta
        else:
            assert t.manifest_count != t.true_count and t.manifest_count in samples.values()
    # Same seed, same wrong manifests (event ids are stable too); another seed, others.
    events = build_events(sample_dir, bucket="b-images")

    def draws(seed: int) -> list[Any]:
        perturber = ManifestPerturber(wrong, seed, [e.expected_quantity for e in events])
        return [perturber.apply(e)[1] for e in events]

    assert draws(7) == draws(7) == list(truth.values()) != draws(8)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rate": 1.5}, "within"), ({"kinds": ("lost_bin",)}, "unknown wrong-manifest"),
    ({"kinds": ()}, "unknown wrong-manifest"),
])
def test_wrong_manifest_options_are_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WrongManifests(**kwargs)


def test_extra_item_never_goes_below_zero(sample_dir: Path) -> None:
    events = [e for e in build_events(sample_dir, bucket="b-images") if e.expected_quantity == 0]
    perturber = ManifestPerturber(WrongManifests(rate=1.0, kinds=("extra_item",)), 0, [0, 1])
    for event in events:
        published, entry = perturber.apply(event)
        assert entry.perturbation is None and published.expected_quantity == 0

"""`binaudit dlq redrive` against real Kafka, Postgres and moto S3: a missing object's dead
letter becomes a verdict once the object is restored, and a second re-drive sends nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from binaudit.cli import app
from core.settings import Settings
from robots.publisher import EventPlan, PublishOptions, image_key, load_samples, publish
from tests.conftest import read_topic
from worker.app import Worker

pytestmark = pytest.mark.services


@pytest.fixture
def own_bucket_settings(settings_factory: Callable[..., Settings],
                        topic_factory: Callable[..., str], bucket_factory: Callable[..., str],
                        model_artifact: Path) -> Settings:
    topic, bucket = topic_factory(partitions=2), bucket_factory("redrive")
    return settings_factory(
        kafka={"topic": topic, "group_id": f"g-{topic}"},
        s3={"bucket": bucket, "allowed_buckets": (bucket,)},
        inference={"model": str(model_artifact), "device": "cpu"},
        worker={"exit_when_idle_s": 1.0, "metrics_port": None})


def _cli(settings: Settings, *args: str) -> Any:
    env = {"BINAUDIT_DB__URL": settings.db.url.get_secret_value(),
           "BINAUDIT_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers}
    return CliRunner().invoke(app, ["dlq", "redrive", *args], env=env)


def _scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def test_redrive_after_restoring_the_object_gives_a_verdict_once(
        own_bucket_settings: Settings, sample_dir: Path, clean_db: Engine,
        s3_client: Any) -> None:
    settings = own_bucket_settings
    topic, bucket = settings.kafka.topic, settings.s3.bucket
    report = publish(settings, PublishOptions(
        source=sample_dir, topic=topic, plan=EventPlan(bucket=bucket, count=6),
        create_topic=False, progress=False))
    assert report.valid == 6
    gone = load_samples(sample_dir)[0]
    assert gone.image_path is not None
    s3_client.delete_object(Bucket=bucket, Key=image_key(gone.id))

    Worker(settings).run()
    assert _scalar(clean_db, "SELECT count(*) FROM audit_results WHERE topic=:t", t=topic) == 5
    letter_event = _scalar(clean_db, "SELECT event_id FROM dead_letters WHERE topic=:t "
                                     "AND error_kind='missing_object'", t=topic)
    assert letter_event is not None

    s3_client.put_object(Bucket=bucket, Key=image_key(gone.id),
                         Body=gone.image_path.read_bytes())
    for window in (["--until", "2000-01-01"], ["--since", "2999-01-01T00:00:00+00:00"],
                   ["--kind", "fetch_failed"]):
        none = _cli(settings, *window, "--source-topic", topic, "--dry-run")
        assert none.exit_code == 0 and "would re-drive 0 dead letters" in none.output, window
    dry = _cli(settings, "--kind", "missing_object", "--source-topic", topic, "--dry-run",
               "--since", "2000-01-01")
    assert dry.exit_code == 0, dry.output
    assert "would re-drive 1 dead letters" in dry.output
    assert _scalar(clean_db, "SELECT count(*) FROM dead_letters WHERE redriven_at IS NOT NULL") == 0

    sent = _cli(settings, "--kind", "missing_object", "--source-topic", topic)
    assert sent.exit_code == 0, sent.output
    assert "re-drove 1 dead letters" in sent.output
    assert _scalar(clean_db, "SELECT redriven_to FROM dead_letters WHERE topic=:t",
                   t=topic) == topic

    again = _cli(settings, "--source-topic", topic)
    assert again.exit_code == 0 and "re-drove 0 dead letters" in again.output, again.output

    Worker(settings).run()
    verdicts = _scalar(clean_db, "SELECT count(*) FROM audit_results WHERE event_id=:e",
                       e=letter_event)
    assert verdicts == 1
    assert _scalar(clean_db, "SELECT count(*) FROM audit_results WHERE topic=:t", t=topic) == 6
    assert _scalar(clean_db, "SELECT count(*) FROM dead_letters WHERE topic=:t", t=topic) == 1


def test_redrive_refuses_an_unknown_kind(own_bucket_settings: Settings) -> None:
    result = _cli(own_bucket_settings, "--kind", "no_such_kind")
    assert result.exit_code == 2
    assert "invalid option" in result.output


def _letter(engine: Engine, topic: str, offset: int, kind: str, *, count: int = 0,
            payload: bytes | None = b'{"not": "checked here"}') -> None:
    with engine.begin() as conn:
        conn.execute(text(
            'INSERT INTO dead_letters (topic, "partition", "offset", key, payload, error_kind, '
            "message, redrive_count) VALUES (:t, 0, :o, :k, :p, :kind, 'test', :c)"),
            {"t": topic, "o": offset, "k": f"bin-{offset}", "p": payload, "kind": kind,
             "c": count})


def test_redrive_defaults_to_retryable_kinds_counts_limits_and_batches(
        own_bucket_settings: Settings, clean_db: Engine,
        topic_factory: Callable[..., str]) -> None:
    settings, source, target = own_bucket_settings, "gone-topic", topic_factory(partitions=1)
    for offset in range(3):
        _letter(clean_db, source, offset, "fetch_failed")
    _letter(clean_db, source, 3, "access_denied", count=3)  # re-driven 3 times already
    _letter(clean_db, source, 4, "invalid_json")  # about the event: would fail again
    _letter(clean_db, source, 5, "fetch_failed", payload=None)

    dry = _cli(settings, "--source-topic", source, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "would re-drive 3 dead letters {'fetch_failed': 3}" in dry.output
    sent = _cli(settings, "--source-topic", source, "--topic", target, "--batch-size", "2")
    assert sent.exit_code == 0, sent.output
    said = " ".join(sent.output.split())  # the console wraps long lines
    assert "re-drove 3 dead letters {'fetch_failed': 3} in 2 batches" in said
    assert "1 without a complete payload" in said
    assert "1 re-driven 3 times already skipped" in said
    records = read_topic(settings, target, 3)
    assert sorted(r.key for r in records) == [b"bin-0", b"bin-1", b"bin-2"]
    assert all(dict(r.headers)["binaudit-redrive-count"] == b"1" for r in records)
    counts = {r.offset: (r.redrive_count, r.redriven_to) for r in _all(clean_db, source)}
    assert counts == {0: (1, target), 1: (1, target), 2: (1, target), 3: (3, None),
                      4: (0, None), 5: (0, None)}

    # --kind names any kind; --max-redrives lifts the limit.
    named = _cli(settings, "--source-topic", source, "--topic", target, "--kind",
                 "invalid_json", "--kind", "access_denied", "--max-redrives", "4")
    assert named.exit_code == 0 and "re-drove 2 dead letters" in named.output, named.output
    again = read_topic(settings, target, 5)[3:]
    assert {r.key: dict(r.headers)["binaudit-redrive-count"] for r in again} == {
        b"bin-3": b"4", b"bin-4": b"1"}


def _all(engine: Engine, topic: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(
            'SELECT "offset", redrive_count, redriven_to FROM dead_letters WHERE topic=:t'),
            {"t": topic}).all())

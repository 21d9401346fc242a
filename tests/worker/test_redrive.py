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
        worker={"model_path": model_artifact, "exit_when_idle_s": 1.0, "metrics_port": None,
                "device": "cpu"})


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

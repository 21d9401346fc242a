"""Security properties of the worker against the real local services.

* Credentials come only from Settings (SecretStr) and never reach a log, even at DEBUG.
* Image URIs outside the bucket allow-list are dead letters and no request reaches that bucket.
* Kafka SASL/SSL and Postgres TLS options travel from Settings into the clients the worker
  builds (tests/binaudit/test_settings.py covers Settings → kwargs; this covers kwargs →
  clients, and a real libpq refusal).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from pydantic import SecretStr

from core import db as binaudit_db
from core import producer, s3
from core.settings import DatabaseSettings, KafkaSettings, S3Settings, Settings
from devstack.services import LocalServices
from robots.publisher import EventPlan, PublishOptions, publish
from worker.app import Worker
from worker.io import kafka_source
from worker.io.pg_sink import ResultSink, SinkUnavailable, WriteBatch

pytestmark = pytest.mark.services


def _publish(settings: Settings, sample_dir: Path, topic: str, count: int,
             faults: tuple[str, ...] = ()) -> Any:
    # Own capture times, so the event ids (derived from them) are not shared with other tests
    # writing to the same database: (event id, model version) is unique.
    start = datetime(2019, 1, 1, tzinfo=UTC) + timedelta(minutes=uuid.uuid4().int % 10**6)
    plan = EventPlan(bucket=settings.s3.bucket, count=count, start_time=start)
    return publish(settings, PublishOptions(
        source=sample_dir, topic=topic, plan=plan,
        faults=faults, fault_rate=0.3, create_topic=False, progress=False))


def _send_event(settings: Settings, topic: str, **fields: Any) -> None:
    body = {"schema_version": 1, "captured_at": "2026-05-01T00:00:00Z", "expected_quantity": 1,
            **fields}
    client = KafkaProducer(**settings.kafka.client_kwargs(), acks="all")
    try:
        client.send(topic, key=b"sec", value=json.dumps(body).encode()).get(timeout=30)
    finally:
        client.close(timeout=10)


def _s3_log(settings: Settings) -> Path:
    return next(s.log for s in LocalServices(settings).status() if s.name == "s3")


@pytest.fixture
def debug_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """worker_process_factory copies os.environ, and log_level is a top-level setting."""
    monkeypatch.setenv("BINAUDIT_LOG_LEVEL", "DEBUG")


def test_secrets_never_reach_a_debug_log(
        debug_log_level: None, services: Settings, topic_factory: Callable[..., str],
        sample_dir: Path, model_artifact: Path,
        worker_process_factory: Callable[..., Any]) -> None:
    token = uuid.uuid4().hex[:12]
    secrets = {"s3_key_id": f"AKIAREL{token.upper()}", "s3_secret": f"s3-secret-{token}",
               "db_password": f"pg-secret-{token}", "sasl_password": f"sasl-secret-{token}"}
    topic = topic_factory(partitions=2)
    # Some good events and some faults, so the S3, decode, write and dead-letter paths all log.
    report = _publish(services, sample_dir, topic, 24,
                      faults=("malformed_json", "missing_image", "not_an_image"))
    db_url = services.db.url.get_secret_value().replace(
        "postgres@", f"postgres:{secrets['db_password']}@")  # trust auth: any password works
    assert secrets["db_password"] in db_url
    wp = worker_process_factory(
        "secrets",
        kafka={"topic": topic, "group_id": f"g-{topic}"},
        s3={"access_key_id": secrets["s3_key_id"],
            "secret_access_key": secrets["s3_secret"]},
        db={"url": db_url},
        inference={"model": model_artifact, "device": "cpu"},
        worker={"exit_when_idle_s": 3.0})
    assert wp.wait(timeout=240) == 0, wp.log()[-3000:]
    log = wp.log()
    assert " DEBUG " in log, "the worker did not log at DEBUG: the check below would be vacuous"
    assert report.published > report.valid > 0
    # Every record went through S3, the model and Postgres (the worker's own count; the shared
    # tables are not read, other sessions may truncate them meanwhile).
    assert f"worker stopped: {report.published} events" in log, log[-2000:]
    for name, value in secrets.items():
        assert value not in log, f"{name} appears in the worker's log"

    # The Kafka SASL password cannot be used against the PLAINTEXT broker, so it is checked
    # where it could leak without a connection: every rendering of the settings.
    settings = Settings(
        db=DatabaseSettings(url=SecretStr(db_url)),
        kafka=KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                            sasl_username="auditor",
                            sasl_password=SecretStr(secrets["sasl_password"])),
        s3=S3Settings(access_key_id=SecretStr(secrets["s3_key_id"]),
                      secret_access_key=SecretStr(secrets["s3_secret"])))
    renderings = (repr(settings), str(settings), settings.model_dump_json(),
                  str(settings.model_dump()), f"{settings.kafka!r}", f"{settings.db}")
    for name, value in secrets.items():
        for rendered in renderings:
            assert value not in rendered, f"{name} in a rendering of Settings"


def test_bucket_allow_list_refuses_without_a_request(
        settings_factory: Callable[..., Settings], topic_factory: Callable[..., str],
        bucket_factory: Callable[..., str], s3_client: Any, sample_dir: Path,
        model_artifact: Path) -> None:
    topic = topic_factory(partitions=1)
    settings = settings_factory(
        kafka={"topic": topic, "group_id": f"g-{topic}"},
        inference={"model": str(model_artifact), "device": "cpu"},
        worker={"exit_when_idle_s": 3.0, "metrics_port": None})
    other = bucket_factory("not-allowed")
    secret_key = f"secret-{uuid.uuid4().hex}.jpg"
    s3_client.put_object(Bucket=other, Key=secret_key,
                         Body=(sample_dir / "images" / "00001.jpg").read_bytes())
    allowed_key = f"bin-images/sec-{uuid.uuid4().hex}.jpg"
    s3_client.put_object(Bucket=settings.s3.bucket, Key=allowed_key,
                         Body=(sample_dir / "images" / "00002.jpg").read_bytes())
    log_path = _s3_log(settings)
    start = log_path.stat().st_size

    _send_event(settings, topic, bin_id=f"sec-{secret_key}",
                image_uri=f"s3://{other}/{secret_key}")
    _send_event(settings, topic, bin_id=f"sec-{allowed_key}",
                image_uri=f"s3://{settings.s3.bucket}/{allowed_key}")
    stats = Worker(settings).run()

    # Counted as written by the worker (not read back: other sessions share these tables).
    assert stats.dead_letters == {"bucket_not_allowed": 1}
    assert sum(stats.verdicts.values()) == 1
    with log_path.open("rb") as fh:
        fh.seek(start)
        requests = fh.read().decode(errors="replace")
    # moto's request log sees the allowed GET (so the check below is not vacuous) ...
    assert f"GET /{settings.s3.bucket}/{allowed_key}" in requests
    # ... and nothing at all for the other bucket's object after the test's own PUT.
    assert secret_key not in requests.split(f"PUT /{other}/{secret_key}")[-1]
    assert f"GET /{other}/" not in requests


class _Recorder:
    """Stands in for a client class; keeps the keyword arguments it was built with."""

    calls: list[dict[str, Any]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).calls.append(kwargs)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return lambda *a, **k: None


TLS_KAFKA = KafkaSettings(
    bootstrap_servers="kafka-1:9093,kafka-2:9093", security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-512", sasl_username="auditor", sasl_password=SecretStr("pw"),
    ssl_cafile=Path("/etc/binaudit/ca.pem"), ssl_certfile=Path("/etc/binaudit/client.pem"),
    ssl_keyfile=Path("/etc/binaudit/client.key"))
KAFKA_SECURITY = {
    "bootstrap_servers": ["kafka-1:9093", "kafka-2:9093"], "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "auditor",
    "sasl_plain_password": "pw", "ssl_cafile": "/etc/binaudit/ca.pem",
    "ssl_certfile": "/etc/binaudit/client.pem", "ssl_keyfile": "/etc/binaudit/client.key"}


def test_kafka_security_reaches_consumer_and_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = type("Consumer", (_Recorder,), {"calls": []})
    publisher = type("Producer", (_Recorder,), {"calls": []})
    monkeypatch.setattr(kafka_source, "KafkaConsumer", consumer)
    monkeypatch.setattr(producer, "KafkaProducer", publisher)

    with kafka_source.EventSource(TLS_KAFKA, on_revoke=lambda _: {}, on_assign=lambda _: None):
        pass
    with producer.EventProducer(TLS_KAFKA):
        pass

    for calls in (consumer.calls, publisher.calls):
        assert len(calls) == 1
        assert KAFKA_SECURITY.items() <= calls[0].items(), calls[0]
    assert consumer.calls[0]["enable_auto_commit"] is False


def test_postgres_tls_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    def fake_engine(url: str, **kwargs: Any) -> Any:
        seen.append({"url": url, **kwargs})
        return _Recorder()

    _Recorder.calls = []
    monkeypatch.setattr(binaudit_db, "create_engine", fake_engine)
    cfg = DatabaseSettings(url=SecretStr("postgresql+psycopg2://app:pw@db:5432/x"),
                           sslmode="verify-full", sslrootcert=Path("/etc/binaudit/root.crt"))
    with ResultSink(cfg):
        pass
    assert seen[0]["url"] == "postgresql+psycopg2://app:pw@db:5432/x"
    assert seen[0]["connect_args"]["sslmode"] == "verify-full"
    assert seen[0]["connect_args"]["sslrootcert"] == "/etc/binaudit/root.crt"


def test_postgres_sslmode_require_is_enforced_by_libpq(services: Settings) -> None:
    """The shared Postgres speaks no TLS: with sslmode=require libpq must refuse to connect,
    which proves the option reaches the real driver (and a refusal is 'unavailable')."""
    cfg = services.db.model_copy(update={"sslmode": "require"})
    with ResultSink(cfg) as sink, pytest.raises(SinkUnavailable, match="SSL"):
        sink.write(WriteBatch())


def test_s3_client_gets_settings_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    seen: list[dict[str, Any]] = []

    class Session:
        def create_client(self, service: str, **kwargs: Any) -> Any:
            seen.append({"service": service, **kwargs})

            class Ctx:
                async def __aenter__(self) -> str:
                    return "client"

                async def __aexit__(self, *exc: object) -> None:
                    return None

            return Ctx()

    monkeypatch.setattr(s3, "get_session", Session)
    cfg = S3Settings(endpoint_url="https://s3.example", access_key_id=SecretStr("AKIA-1"),
                     secret_access_key=SecretStr("sk-1"))

    async def run() -> None:
        async with AsyncExitStack() as stack:
            assert await s3.open_s3_client(stack, cfg) == "client"

    asyncio.run(run())
    assert seen[0]["aws_access_key_id"] == "AKIA-1"
    assert seen[0]["aws_secret_access_key"] == "sk-1"
    assert seen[0]["endpoint_url"] == "https://s3.example"


def test_nul_in_an_attacker_chosen_key_cannot_stop_the_worker() -> None:
    """Postgres text refuses NUL and psycopg2 raised ValueError for the whole batch, which
    stopped the worker on the same record at every restart. The dead letter keeps it escaped
    (end to end: tests/reliability/test_bad_input.py)."""
    from inference.outcomes import dead_letter_record
    from schemas.records import ErrorKind, EventError

    record = dead_letter_record(topic="t", partition=0, offset=7, key=b"evil\x00key\xff",
                                payload=b"\x00not json", event_id=None,
                                error=EventError(ErrorKind.INVALID_JSON, "bad \x00 message"))
    assert record.key == "evil\\x00key\ufffd"
    assert record.message == "bad \\x00 message"
    assert record.payload == b"\x00not json"  # bytea holds any byte

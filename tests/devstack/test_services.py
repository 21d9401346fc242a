"""The local-services supervisor, run as a second stack with its own root and ports.

The shared stack (default root and ports) that the rest of the suite uses is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from core.settings import DatabaseSettings, KafkaSettings, ServicesSettings, Settings
from devstack.services import LocalServices, ServiceError, port_open

pytestmark = [pytest.mark.services, pytest.mark.slow]

KAFKA_PORT, KAFKA_CONTROLLER_PORT, POSTGRES_PORT, S3_PORT = 19192, 19193, 15532, 15100
BINAUDIT = Path(sys.executable).parent / "binaudit"


def _services(root: Path) -> ServicesSettings:
    return ServicesSettings(root=root, kafka_port=KAFKA_PORT,
                            kafka_controller_port=KAFKA_CONTROLLER_PORT,
                            postgres_port=POSTGRES_PORT, s3_port=S3_PORT)


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are mode 0700 and Postgres runs as user postgres.
    folder = Path(tempfile.mkdtemp(prefix="binaudit-services-test-"))
    folder.chmod(0o755)
    yield folder / "services"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def settings(root: Path) -> Settings:
    return Settings(
        environment="test",
        services=_services(root),
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{KAFKA_PORT}"),
        db=DatabaseSettings(url=SecretStr(
            f"postgresql+psycopg2://postgres@127.0.0.1:{POSTGRES_PORT}/binaudit")),
    )


@pytest.fixture(scope="module")
def supervisor(settings: Settings) -> Iterator[LocalServices]:
    services = LocalServices(settings)
    yield services
    services.down()


def _cli_status(settings: Settings) -> subprocess.CompletedProcess[str]:
    cfg = settings.services
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINAUDIT_")}
    env.update({
        "BINAUDIT_SERVICES__ROOT": str(cfg.root),
        "BINAUDIT_SERVICES__KAFKA_PORT": str(cfg.kafka_port),
        "BINAUDIT_SERVICES__KAFKA_CONTROLLER_PORT": str(cfg.kafka_controller_port),
        "BINAUDIT_SERVICES__POSTGRES_PORT": str(cfg.postgres_port),
        "BINAUDIT_SERVICES__S3_PORT": str(cfg.s3_port),
    })
    return subprocess.run([str(BINAUDIT), "services", "status"], env=env, capture_output=True,
                          text=True, timeout=120)


def _pids(supervisor: LocalServices) -> dict[str, int | None]:
    return {s.name: s.pid for s in supervisor.status()}


def test_up_is_ready_and_idempotent(supervisor: LocalServices, settings: Settings) -> None:
    for port in (KAFKA_PORT, KAFKA_CONTROLLER_PORT, POSTGRES_PORT, S3_PORT):
        assert not port_open(port), f"port {port} must be free for this test"
    supervisor.up()
    states = supervisor.status()
    assert all(s.up for s in states), states
    first = _pids(supervisor)

    started = time.monotonic()
    supervisor.up()
    assert _pids(supervisor) == first, "a second `up` restarted something"
    assert time.monotonic() - started < 30

    result = _cli_status(settings)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kill_postgres_then_up_keeps_data(supervisor: LocalServices, settings: Settings) -> None:
    supervisor.up()
    engine = create_engine(settings.db.url.get_secret_value())
    marker = uuid.uuid4().hex
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS crash_probe (marker text)"))
        conn.execute(text("INSERT INTO crash_probe VALUES (:m)"), {"m": marker})
    engine.dispose()
    old_pid = _pids(supervisor)["postgres"]

    supervisor.kill("postgres")
    assert not next(s for s in supervisor.status() if s.name == "postgres").up
    supervisor.up()

    assert _pids(supervisor)["postgres"] != old_pid
    engine = create_engine(settings.db.url.get_secret_value())
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT marker FROM crash_probe")).scalars().all()
    engine.dispose()
    assert marker in rows
    # Postgres noticed the crash and replayed its WAL.
    log = next(s for s in supervisor.status() if s.name == "postgres").log
    assert "database system was interrupted" in log.read_text(errors="replace")


def test_kill_kafka_then_up_keeps_messages(supervisor: LocalServices,
                                           settings: Settings) -> None:
    supervisor.up()
    topic = f"crash-probe-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(**settings.kafka.client_kwargs(), acks="all")
    for i in range(20):
        producer.send(topic, key=b"k", value=f"m{i}".encode())
    producer.flush(timeout=30)
    producer.close()

    supervisor.kill("kafka")
    assert not next(s for s in supervisor.status() if s.name == "kafka").up
    supervisor.up()  # returns only when a message round-trips again

    consumer = KafkaConsumer(**settings.kafka.client_kwargs(), group_id=None,
                             enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(values) < 20 and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            values.extend(r.value for r in batch)
    consumer.close()
    assert sorted(values) == sorted(f"m{i}".encode() for i in range(20))


def test_down_stops_everything(supervisor: LocalServices, settings: Settings) -> None:
    supervisor.up()
    pids = [pid for pid in _pids(supervisor).values() if pid]
    supervisor.down()
    assert not any(s.up for s in supervisor.status())
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"pid {pid} still running"
    result = _cli_status(settings)
    assert result.returncode == 3, result.stdout + result.stderr
    supervisor.down()  # harmless when nothing runs


@pytest.mark.skipif(os.geteuid() != 0, reason="only root demotes Postgres to user postgres")
def test_unreachable_root_names_log(tmp_path: Path) -> None:
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    services = LocalServices(Settings(services=_services(hidden / "services")))
    with pytest.raises(ServiceError, match=r"postgres\.log"):
        services.up(only=("postgres",))


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] == "Z"
    except OSError:
        return True

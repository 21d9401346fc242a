"""Reliability suite fixtures: a dedicated Kafka/Postgres/moto stack and a scenario harness.

Faults are injected into *this* stack only (its own root under /tmp and its own ports); the
shared services on the default ports, which other tests use, are never touched. The stack is
started once per session, migrated, and torn down at the end. Every scenario appends one row to
a session table that is written to ``reliability/report.md`` when the session ends.

``reliability/`` is not an installed package, so its report module is loaded from its path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, text

from core.settings import (
    DatabaseSettings,
    InferenceSettings,
    KafkaSettings,
    S3Settings,
    ServicesSettings,
    Settings,
    WorkerSettings,
)
from devstack.services import LocalServices, port_open
from migrations.runner import upgrade

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_PORT, KAFKA_CONTROLLER_PORT, POSTGRES_PORT, S3_PORT = 19292, 19293, 15632, 15200
ROOT_PREFIX = "binaudit-reliability-"
# Short enough that a dead member leaves the group quickly (the broker's minimum is 6 s).
SESSION_TIMEOUT_MS, HEARTBEAT_MS = 6000, 2000
LOG_DIR = Path(tempfile.gettempdir()) / "binaudit-reliability-logs"
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)  # capture times of this suite's events start here (past:
# the broker refuses record timestamps more than a day ahead)
_PUBLISHES = itertools.count()


def _load_report_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("binaudit_reliability_report",
                                                  REPO_ROOT / "reliability" / "report.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


report = _load_report_module()


def stack_settings(root: Path, *, s3_port: int = S3_PORT) -> Settings:
    return Settings(
        environment="test",
        services=ServicesSettings(root=root, kafka_port=KAFKA_PORT,
                                  kafka_controller_port=KAFKA_CONTROLLER_PORT,
                                  postgres_port=POSTGRES_PORT, s3_port=S3_PORT),
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{KAFKA_PORT}"),
        db=DatabaseSettings(url=SecretStr(
            f"postgresql+psycopg2://postgres@127.0.0.1:{POSTGRES_PORT}/binaudit")),
        s3=S3Settings(endpoint_url=f"http://127.0.0.1:{s3_port}", region="us-east-1",
                      access_key_id=SecretStr("testing"),
                      secret_access_key=SecretStr("testing")),
    )


def _stop_stale_stacks() -> None:
    """A session that died without teardown leaves its stack running: stop it by pid file."""
    for old in Path(tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        if old == LOG_DIR:
            continue
        services = old / "services"
        if services.is_dir():
            LocalServices(stack_settings(services)).down()
        shutil.rmtree(old, ignore_errors=True)


@pytest.fixture(scope="session")
def rel_root() -> Iterator[Path]:
    """This session's folder. Not pytest's tmp_path: its parents are mode 0700 (Postgres runs
    as user postgres), and other sessions' pytest runs prune old basetemps while we run."""
    _stop_stale_stacks()
    folder = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{uuid.uuid4().hex[:8]}-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def log_dir() -> Path:
    """Worker logs, kept after the session (for a failed run) until the next one starts."""
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True)
    return LOG_DIR


@pytest.fixture(scope="session")
def stack(rel_root: Path) -> Iterator[Settings]:
    """The dedicated stack, up and migrated; stopped at the end of the session."""
    for port in (KAFKA_PORT, KAFKA_CONTROLLER_PORT, POSTGRES_PORT, S3_PORT):
        if port_open(port):
            pytest.fail(f"port {port} of the reliability stack is taken by something else")
    settings = stack_settings(rel_root / "services")
    supervisor = LocalServices(settings)
    try:
        supervisor.up()
        upgrade(settings, "head")
        yield settings
    finally:
        supervisor.down()


@pytest.fixture(scope="session")
def rel_model(rel_root: Path) -> Path:
    """A real (untrained, seeded) lite0 artifact, as tests/conftest.py's model_artifact, but in
    this session's folder so that it outlives pruning of pytest's temp folders."""
    from datetime import UTC, datetime

    import torch

    from core.model.architectures import build_model
    from core.model.artifact import save_artifact
    from core.model.card import ModelCard
    from core.model.preprocess import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    card = ModelCard(version="rel-lite0", architecture="efficientnet_lite0",
                     class_counts=[1, 2, 3, 4, 5], input_size=160, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, created_at=datetime.now(UTC), code_version="test")
    return save_artifact(rel_root / "artifacts" / card.version,
                         build_model(card.architecture, 5, weights=None), card)


@pytest.fixture(scope="session")
def supervisor(stack: Settings) -> LocalServices:
    return LocalServices(stack)


@pytest.fixture(scope="session")
def stack_engine(stack: Settings) -> Iterator[Engine]:
    engine = create_engine(stack.db.url.get_secret_value(), pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def stack_s3(stack: Settings) -> Any:
    cfg = stack.s3
    return boto3.client("s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


# ---- the session table ----------------------------------------------------------------------

DEFINITIONS = (
    "**sent**: records published to Kafka; **good**: valid events among them, each of which "
    "must end as exactly one `audit_results` row (one model version per run).",
    "**lost**: good events without a row; **duplicated**: rows beyond one per event plus "
    "Kafka offsets that hold both a verdict and a dead letter (the unique keys make a second "
    "row impossible, so this also guards the keys themselves).",
    "**recovery s**: seconds from the end of the fault (the service answering again, or the "
    "replacement worker being started) to the next row written (`processed_at`/`first_seen`); "
    "for several faults, the slowest.",
    "Offsets: during every scenario a watcher polls the group's committed offsets every ~2 s "
    "and checks that every offset below the committed one has a row or a dead letter "
    "(so committed ≤ 1 + max offset written, and no gap); any violation fails the scenario.",
)


class ScenarioLog:
    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.started = time.monotonic()

    def add(self, **fields: Any) -> Any:
        row = report.ScenarioRow(**fields)
        self.rows.append(row)
        return row


@pytest.fixture(scope="session")
def scenario_log() -> Iterator[ScenarioLog]:
    log = ScenarioLog()
    yield log
    if log.rows:
        report.write_report(log.rows, duration_s=time.monotonic() - log.started,
                            definitions=DEFINITIONS)


# ---- worker processes ---------------------------------------------------------------------

def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` from /proc (psutil is not installed)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class WorkerProc:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, name: str) -> None:
        self.proc, self.log_path, self.name = proc, log_path, name
        self.started_at = time.time()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float | None:
        return rss_mb(self.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 90) -> int:
        """SIGTERM (drain, commit, exit 0) and wait."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        try:
            return int(self.proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{self.name} did not exit in {timeout}s; log:\n"
                                 f"{self.log()[-4000:]}") from None


def _env(sections: dict[str, dict[str, Any]]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINAUDIT_")}
    # One intra-op thread per worker: several workers share 2 cores with other test runs.
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "BINAUDIT_ENVIRONMENT": "test",
                # the eager reference at batch 16, as in tests/conftest.py (no autotuning)
                "BINAUDIT_INFERENCE__BACKEND": "eager",
                "BINAUDIT_INFERENCE__MAX_BATCH_SIZE": "16"})
    for section, values in sections.items():
        for key, value in values.items():
            name = f"BINAUDIT_{section.upper()}__{key.upper()}" if section else \
                f"BINAUDIT_{key.upper()}"
            env[name] = str(value)
    return env


class GatedProxy:
    """A TCP relay in front of moto. Closing the gate drops every connection (an S3 outage as
    the worker sees it); it stays closed while moto restarts *and* is re-seeded, because a
    restarted moto is empty and would answer NoSuchBucket (a dead letter, not a retry)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._stopped = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="s3-gate", daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
            with self._lock:
                self._conns.discard(s)

    def close_gate(self) -> None:
        self._open.clear()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def open_gate(self) -> None:
        self._open.set()

    def stop(self) -> None:
        self._stopped.set()
        self.close_gate()
        self._server.close()


class OffsetWatch:
    """Polls the group's committed offsets and checks no offset passes an unwritten row."""

    def __init__(self, harness: Harness, topic: str, group: str, interval_s: float = 2.0) -> None:
        self.h, self.topic, self.group, self.interval = harness, topic, group, interval_s
        self.checks = 0
        self.failed_checks = 0  # the broker or Postgres was down at that moment
        self.last_error = ""
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="offset-watch", daemon=True)

    def __enter__(self) -> OffsetWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.check()  # once more, with everything settled

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def check(self) -> None:
        try:
            problems = self.h.offset_violations(self.topic, self.group)
        except Exception as exc:  # a service down during a fault: nothing to check right now
            self.failed_checks += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            return
        self.checks += 1
        self.violations.extend(problems)


class Harness:
    """Topics, publishing, worker processes and the row/offset checks of one test."""

    def __init__(self, settings: Settings, engine: Engine, model_path: Path,
                 log_dir: Path) -> None:
        self.settings, self.engine, self.model_path, self.log_dir = (
            settings, engine, model_path, log_dir)
        self.workers: list[WorkerProc] = []

    # -- kafka --
    def admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(**self.settings.kafka.client_kwargs(), request_timeout_ms=5000)

    def topic(self, partitions: int = 4, prefix: str = "rel") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        admin = self.admin()
        try:
            admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                          topic_configs={"retention.ms": "-1"})])
        finally:
            admin.close()
        return name

    def publish(self, topic: str, sample_dir: Path, count: int) -> Any:
        """``count`` sample events. Event ids derive from (bin, captured_at) and audit_results
        is unique per (event id, model version), so every publish of the session gets its own
        capture times: a repeated id would be (rightly) absorbed as a replay."""
        from robots.publisher import EventPlan, PublishOptions, publish

        start = EPOCH + timedelta(days=30 * next(_PUBLISHES))
        event_plan = EventPlan(bucket=self.settings.s3.bucket, count=count, loop=count > 350,
                               start_time=start)
        return publish(self.settings, PublishOptions(
            source=sample_dir, topic=topic, plan=event_plan, create_topic=False,
            progress=False))

    def committed(self, group: str) -> dict[int, int]:
        admin = self.admin()
        try:
            offsets = admin.list_group_offsets(group).get(group, {})
        finally:
            admin.close()
        return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    def offset_violations(self, topic: str, group: str) -> list[str]:
        """Committed offsets are read first, rows after: rows only grow, so a gap is real."""
        problems = []
        for partition, committed in self.committed(group).items():
            written = self.scalar(
                'SELECT count(DISTINCT o) FROM (SELECT "offset" AS o FROM audit_results '
                'WHERE topic=:t AND "partition"=:p AND "offset" < :c UNION ALL '
                'SELECT "offset" FROM dead_letters WHERE topic=:t AND "partition"=:p '
                'AND "offset" < :c) AS w', t=topic, p=partition, c=committed)
            if written != committed:
                problems.append(f"partition {partition}: committed {committed} but only "
                                f"{written} of offsets 0..{committed - 1} have a row")
        return problems

    # -- postgres --
    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    def written(self, topic: str) -> int:
        """Verdicts plus dead letters of ``topic``."""
        return int(self.scalar(
            "SELECT (SELECT count(*) FROM audit_results WHERE topic=:t) + "
            "(SELECT count(*) FROM dead_letters WHERE topic=:t)", t=topic))

    def verdicts(self, topic: str) -> int:
        return int(self.scalar("SELECT count(*) FROM audit_results WHERE topic=:t", t=topic))

    def first_row_after(self, topic: str, moment: float) -> float | None:
        """Seconds from ``moment`` (epoch) to the first row written after it."""
        first = self.scalar(
            "SELECT extract(epoch FROM min(ts)) FROM (SELECT processed_at AS ts FROM "
            "audit_results WHERE topic=:t UNION ALL SELECT first_seen FROM dead_letters "
            "WHERE topic=:t) AS w WHERE ts >= to_timestamp(:m)", t=topic, m=moment)
        return None if first is None else float(first) - moment

    def audit(self, topic: str, good_ids: list[str]) -> dict[str, Any]:
        found = {r.event_id: r.n for r in self.rows(
            "SELECT event_id, count(*) AS n FROM audit_results WHERE topic=:t GROUP BY 1",
            t=topic)}
        both = int(self.scalar(
            'SELECT count(*) FROM audit_results a JOIN dead_letters d ON a.topic=d.topic AND '
            'a."partition"=d."partition" AND a."offset"=d."offset" WHERE a.topic=:t', t=topic))
        good = set(good_ids)
        return {
            "rows": sum(found.values()),
            "lost": len(good - set(found)),
            "duplicated": sum(n - 1 for n in found.values()) + both,
            "unexpected": len(set(found) - good),
            "dead_letters": int(self.scalar(
                "SELECT count(*) FROM dead_letters WHERE topic=:t", t=topic)),
        }

    # -- workers --
    def worker(self, name: str, *, topic: str, group: str, kafka: dict[str, Any] | None = None,
               s3_endpoint: str | None = None, log_level: str = "INFO",
               s3: dict[str, Any] | None = None,
               **settings: Any) -> WorkerProc:
        """A ``binaudit worker`` child; each keyword setting goes to its own section
        (``max_batch_size`` to inference, ``max_in_flight`` to worker, ...)."""
        inference = {k: v for k, v in settings.items() if k in InferenceSettings.model_fields}
        worker = {k: v for k, v in settings.items() if k not in inference}
        unknown = set(worker) - set(WorkerSettings.model_fields)
        assert not unknown, f"no such inference or worker setting: {sorted(unknown)}"
        sections: dict[str, dict[str, Any]] = {
            "": {"log_level": log_level},
            "kafka": {"bootstrap_servers": self.settings.kafka.bootstrap_servers,
                      "topic": topic, "group_id": group,
                      "session_timeout_ms": SESSION_TIMEOUT_MS,
                      "heartbeat_interval_ms": HEARTBEAT_MS, **(kafka or {})},
            "db": {"url": self.settings.db.url.get_secret_value()},
            "s3": {"endpoint_url": s3_endpoint or self.settings.s3.endpoint_url,
                   "region": "us-east-1", "access_key_id": "testing",
                   "secret_access_key": "testing", **(s3 or {})},
            "inference": {"model": self.model_path, "device": "cpu",
                          "retry_backoff_max_s": 2.0, **inference},
            "worker": {"metrics_port": 0, "retry_backoff_max_s": 2.0, **worker},
        }
        log_path = self.log_dir / f"{name}-{len(self.workers)}.log"
        proc = subprocess.Popen([sys.executable, "-m", "binaudit", "worker"], env=_env(sections),
                                stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                                cwd=REPO_ROOT)
        wp = WorkerProc(proc, log_path, name)
        self.workers.append(wp)
        return wp

    def close(self) -> None:
        for wp in self.workers:
            if wp.alive():
                wp.proc.kill()
                wp.proc.wait(timeout=30)


@pytest.fixture
def harness(stack: Settings, stack_engine: Engine, rel_model: Path, log_dir: Path,
            request: pytest.FixtureRequest) -> Iterator[Harness]:
    folder = log_dir / request.node.name.replace("/", "_")
    folder.mkdir()
    h = Harness(stack, stack_engine, rel_model, folder)
    yield h
    h.close()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               *, workers: tuple[WorkerProc, ...] = (), interval: float = 0.5) -> None:
    """Poll until true; fail naming ``what`` (early, with its log, if a worker died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for wp in workers:
            if not wp.alive():
                raise AssertionError(f"{wp.name} exited ({wp.proc.returncode}) while waiting for "
                                     f"{what}; log:\n{wp.log()[-4000:]}")
        time.sleep(interval)
    tails = "".join(f"\n--- {wp.name}:\n{wp.log()[-2500:]}" for wp in workers)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{tails}")


@pytest.fixture
def waiter() -> Callable[..., None]:
    return wait_until


@pytest.fixture
def offset_watch(harness: Harness) -> Callable[..., OffsetWatch]:
    """``with offset_watch(topic, group) as watch: ...``; ``watch.violations`` afterwards."""
    return lambda topic, group: OffsetWatch(harness, topic, group)


@pytest.fixture(scope="session")
def report_module() -> ModuleType:
    return report


@pytest.fixture
def gated_s3(stack: Settings) -> Iterator[GatedProxy]:
    proxy = GatedProxy(stack.services.s3_port)
    yield proxy
    proxy.stop()

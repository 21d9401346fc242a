"""Start and stop the real local services binaudit runs against (no Docker here).

* Apache Kafka 4.x, single node, KRaft combined broker+controller; jars resolved from Maven
  Central through ``infra/kafka/pom.xml`` into a cache folder that survives between runs.
* PostgreSQL 15 from the Debian package: a throwaway cluster with trust auth on 127.0.0.1.
* S3: ``moto_server`` on 127.0.0.1.

``up`` is idempotent (a service whose pid is alive and whose port answers is left alone);
``down`` stops only what ``up`` started, by pid file. Logs go to ``<root>/<name>.log``.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from binaudit.settings import Settings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_POM = REPO_ROOT / "infra" / "kafka" / "pom.xml"
PG_BIN_CANDIDATES = (Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin"))


class ServiceError(RuntimeError):
    """A local service could not be started; the message names its log file."""


@dataclass(frozen=True)
class ServiceState:
    name: str
    pid: int | None
    port: int
    up: bool
    log: Path


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); read its state to be sure.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1]
    except OSError:
        return False
    return state != "Z"


def _wait_for(check: Callable[[], bool], timeout: float, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else "(no log)"
    raise ServiceError(f"{what} did not become ready in {timeout:.0f}s; log {log_path}:\n{tail}")


class LocalServices:
    """Pid-file based supervisor of the three services under ``settings.services.root``."""

    def __init__(self, settings: Settings) -> None:
        self.cfg = settings.services
        self.root = self.cfg.root.resolve()

    # ---- shared helpers -------------------------------------------------------------
    def _pidfile(self, name: str) -> Path:
        return self.root / f"{name}.pid"

    def _logfile(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def _read_pid(self, name: str) -> int | None:
        path = self._pidfile(name)
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _spawn(self, name: str, argv: list[str], *, user: str | None = None,
               env: dict[str, str] | None = None) -> int:
        log_fh = open(self._logfile(name), "ab")  # noqa: SIM115 - handed to the child
        preexec = _demote(user) if user else None
        proc = subprocess.Popen(
            argv, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, preexec_fn=preexec,
        )
        self._pidfile(name).write_text(str(proc.pid))
        return proc.pid

    def ports(self) -> dict[str, int]:
        return {"kafka": self.cfg.kafka_port, "postgres": self.cfg.postgres_port,
                "s3": self.cfg.s3_port}

    def status(self) -> list[ServiceState]:
        states = []
        for name, port in self.ports().items():
            pid = self._read_pid(name)
            up = _pid_alive(pid) and port_open(port)
            states.append(ServiceState(name, pid, port, up, self._logfile(name)))
        return states

    # ---- lifecycle ------------------------------------------------------------------
    def up(self, only: tuple[str, ...] = ("postgres", "s3", "kafka")) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        starters = {"postgres": self._start_postgres, "s3": self._start_s3,
                    "kafka": self._start_kafka}
        for name in only:
            state = next(s for s in self.status() if s.name == name)
            if state.up:
                log.info("%s already up (pid %s, port %d)", name, state.pid, state.port)
                continue
            if port_open(state.port):
                raise ServiceError(f"port {state.port} for {name} is taken by another process")
            starters[name]()

    def down(self, only: tuple[str, ...] = ("kafka", "s3", "postgres")) -> None:
        for name in only:
            pid = self._read_pid(name)
            if name == "postgres" and _pid_alive(pid):
                self._pg_ctl("stop", "-m", "fast")
            elif _pid_alive(pid):
                assert pid is not None
                _terminate(pid)
            self._pidfile(name).unlink(missing_ok=True)

    def kill(self, name: str) -> None:
        """SIGKILL a service (fault-injection tests); ``up`` restarts it."""
        pid = self._read_pid(name)
        if pid and _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            _wait_dead(pid, 10)

    # ---- postgres -------------------------------------------------------------------
    def _pg_bin(self, tool: str) -> str:
        for candidate in PG_BIN_CANDIDATES:
            if (candidate / tool).exists():
                return str(candidate / tool)
        found = shutil.which(tool)
        if not found:
            raise ServiceError(f"{tool} not found: install Debian's postgresql-15 package")
        return found

    def _pg_ctl(self, *args: str) -> None:
        data = self.root / "pgdata"
        subprocess.run([self._pg_bin("pg_ctl"), "-D", str(data), *args], check=False,
                       preexec_fn=_demote("postgres"), capture_output=True)

    def _start_postgres(self) -> None:
        data = self.root / "pgdata"
        logf = self._logfile("postgres")
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            _chown(data, "postgres")
            subprocess.run(
                [self._pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                 "-E", "UTF8", "--locale=C.UTF-8"],
                check=True, preexec_fn=_demote("postgres"), capture_output=True,
            )
        sockdir = self.root / "pgsock"
        sockdir.mkdir(exist_ok=True)
        _chown(sockdir, "postgres")
        logf.touch()
        _chown(logf, "postgres")
        self._spawn("postgres", [
            self._pg_bin("postgres"), "-D", str(data), "-p", str(self.cfg.postgres_port),
            "-h", "127.0.0.1", "-k", str(sockdir), "-c", "fsync=on",
            "-c", "max_connections=200",
        ], user="postgres")
        _wait_for(lambda: port_open(self.cfg.postgres_port), 30, "postgres", logf)
        # The application database; created once.
        psql = [self._pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.cfg.postgres_port),
                "-U", "postgres", "-tAc"]
        exists = subprocess.run([*psql, "SELECT 1 FROM pg_database WHERE datname='binaudit'"],
                                capture_output=True, text=True)
        if exists.stdout.strip() != "1":
            subprocess.run([*psql, "CREATE DATABASE binaudit"], check=True, capture_output=True)
        log.info("postgres up on 127.0.0.1:%d", self.cfg.postgres_port)

    # ---- moto S3 --------------------------------------------------------------------
    def _start_s3(self) -> None:
        moto = Path(sys.executable).parent / "moto_server"
        argv = [str(moto) if moto.exists() else "moto_server", "-H", "127.0.0.1",
                "-p", str(self.cfg.s3_port)]
        self._spawn("s3", argv)
        _wait_for(lambda: port_open(self.cfg.s3_port), 30, "moto_server", self._logfile("s3"))
        log.info("moto S3 up on 127.0.0.1:%d", self.cfg.s3_port)

    # ---- kafka ----------------------------------------------------------------------
    def resolve_kafka_jars(self) -> Path:
        jars = self.cfg.kafka_jars
        if jars.exists() and any(jars.glob("kafka_2.13-*.jar")):
            return jars
        jars.mkdir(parents=True, exist_ok=True)
        log.info("resolving Kafka jars from Maven Central into %s", jars)
        subprocess.run(
            ["mvn", "-q", "-B", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={jars}", "-DincludeScope=runtime"], check=True,
        )
        return jars

    def _kafka_config(self) -> Path:
        cfg = self.cfg
        logdir = self.root / "kafka-data"
        props = f"""
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{cfg.kafka_controller_port}
listeners=PLAINTEXT://127.0.0.1:{cfg.kafka_port},CONTROLLER://127.0.0.1:{cfg.kafka_controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{cfg.kafka_port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={logdir}
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
message.max.bytes=10485760
log.retention.hours=168
"""
        path = self.root / "kafka.properties"
        path.write_text(props.lstrip())
        return path

    def _start_kafka(self) -> None:
        jars = self.resolve_kafka_jars()
        config = self._kafka_config()
        java = shutil.which("java") or "java"
        classpath = f"{jars}/*"
        log4j = self.root / "kafka-log4j2.properties"
        log4j.write_text("rootLogger.level=WARN\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
                         "appender.stdout.type=Console\nappender.stdout.name=STDOUT\n"
                         "appender.stdout.layout.type=PatternLayout\n"
                         "appender.stdout.layout.pattern=[%d] %p %m (%c)%n\n"
                         "logger.kafka.name=kafka\nlogger.kafka.level=INFO\n")
        jvm = [java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC",
               f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]
        if not (self.root / "kafka-data" / "meta.properties").exists():
            subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", str(uuid.uuid4()),
                 "-c", str(config)],
                check=True, capture_output=True,
            )
        self._spawn("kafka", [*jvm, "kafka.Kafka", str(config)])
        _wait_for(lambda: port_open(self.cfg.kafka_port), 90, "kafka", self._logfile("kafka"))
        log.info("kafka up on 127.0.0.1:%d", self.cfg.kafka_port)

    def wipe(self) -> None:
        """Remove all service state (only when everything is down)."""
        if any(s.up for s in self.status()):
            raise ServiceError("services are up; run `binaudit services down` first")
        shutil.rmtree(self.root, ignore_errors=True)


def _demote(user: str) -> Callable[[], None] | None:
    if os.geteuid() != 0:
        return None
    pw = pwd.getpwnam(user)

    def set_ids() -> None:
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return set_ids


def _chown(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _terminate(pid: int, timeout: float = 20.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_dead(pid, timeout):
        os.killpg(pid, signal.SIGKILL)
        _wait_dead(pid, 5)


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return False

"""Start and stop the real local services binaudit runs against (no Docker here).

* Apache Kafka 4.x, single node, KRaft combined broker+controller; jars resolved from Maven
  Central through ``infra/kafka/pom.xml`` into a cache folder that survives between runs.
* PostgreSQL 15 from the Debian package: a throwaway cluster with trust auth on 127.0.0.1.
* S3: ``moto_server`` on 127.0.0.1.

``up`` is idempotent (a service whose pid is alive and whose port answers is left alone) and
returns only when every service is *ready*: Postgres accepts connections, moto answers HTTP, and
for Kafka a topic can be created and a message round-trips. ``down`` stops only what ``up``
started, by pid file (a pid now used by another program is left alone). ``kill`` SIGKILLs a
service for fault tests; the next ``up`` restarts it and Postgres/Kafka recover their data from
disk (moto S3 keeps its objects in memory, so they are lost). Logs go to ``<root>/<name>.log``
and every failure names that file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_POM = REPO_ROOT / "infra" / "kafka" / "pom.xml"
PG_BIN_CANDIDATES = (Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin"))
SERVICES = ("postgres", "s3", "kafka")
# Created by the readiness check: a topic can be made and a message round-trips through it.
READY_TOPIC = "_binaudit_ready"
READY_TIMEOUT_S = {"postgres": 90.0, "s3": 30.0, "kafka": 120.0}


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


def _cmdline(pid: int) -> list[str] | None:
    """The argv of ``pid``, or None where /proc cannot tell."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").rstrip("\0").split("\0")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Postgres children detach into their own sessions)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found.extend(children)
        todo.extend(children)
    return found


def _log_tail(log_path: Path, chars: int = 3000) -> str:
    return log_path.read_text(errors="replace")[-chars:] if log_path.exists() else "(no log yet)"


def _wait_for(check: Callable[[], bool], timeout: float, what: str, log_path: Path,
              *, pid: int | None = None) -> None:
    """Poll ``check`` until it is true; fail naming ``log_path`` (early if ``pid`` exits).

    A probe that raises counts as "not yet"; its last error is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # a probe failing is the normal "not ready yet" answer
            last_error = f" (last probe error: {type(exc).__name__}: {exc})"
        if pid is not None and not _pid_alive(pid):
            raise ServiceError(f"{what} exited (pid {pid}) before it was ready; log {log_path}:\n"
                               f"{_log_tail(log_path)}")
        time.sleep(0.5)
    raise ServiceError(f"{what} did not become ready in {timeout:.0f}s{last_error}; "
                       f"log {log_path}:\n{_log_tail(log_path)}")


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

    def _marker(self, name: str) -> str:
        """An argument only this root's process of ``name`` has (guards against pid reuse)."""
        return {"postgres": str(self.root / "pgdata"), "s3": str(self.cfg.s3_port),
                "kafka": str(self.root / "kafka.properties")}[name]

    def _running(self, name: str) -> int | None:
        """The pid from ``name``'s pid file if that process is alive and is ours."""
        pid = self._read_pid(name)
        if pid is None or not _pid_alive(pid):
            return None
        argv = _cmdline(pid)
        if argv is not None and self._marker(name) not in argv:
            return None  # the pid was reused by an unrelated process
        return pid

    def _spawn(self, name: str, argv: list[str], *, user: str | None = None,
               env: dict[str, str] | None = None) -> int:
        with open(self._logfile(name), "ab") as log_fh:  # the child keeps its own copy
            proc = subprocess.Popen(
                argv, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env, preexec_fn=_demote(user) if user else None,
            )
        self._pidfile(name).write_text(str(proc.pid))
        return proc.pid

    def _run(self, name: str, what: str, argv: list[str], *, user: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a helper command; on failure append its output to ``name``'s log and say so."""
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              preexec_fn=_demote(user) if user else None)
        if check and proc.returncode != 0:
            logf = self._logfile(name)
            with open(logf, "a") as fh:
                fh.write(f"\n--- {what}: {' '.join(argv)} (exit {proc.returncode})\n"
                         f"{proc.stdout}{proc.stderr}\n")
            raise ServiceError(f"{what} failed (exit {proc.returncode}); output in log {logf}:\n"
                               f"{(proc.stdout + proc.stderr)[-2000:]}")
        return proc

    def ports(self) -> dict[str, int]:
        return {"kafka": self.cfg.kafka_port, "postgres": self.cfg.postgres_port,
                "s3": self.cfg.s3_port}

    def status(self) -> list[ServiceState]:
        states = []
        for name, port in self.ports().items():
            up = self._running(name) is not None and port_open(port)
            states.append(ServiceState(name, self._read_pid(name), port, up, self._logfile(name)))
        return states

    # ---- lifecycle ------------------------------------------------------------------
    def up(self, only: tuple[str, ...] = SERVICES) -> None:
        """Start what is not running and return once every service in ``only`` is ready."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        starters = {"postgres": self._start_postgres, "s3": self._start_s3,
                    "kafka": self._start_kafka}
        probes: dict[str, Callable[[], bool]] = {
            "postgres": self._postgres_ready, "s3": self._s3_ready, "kafka": self._kafka_ready}
        for name in only:
            port = self.ports()[name]
            pid = self._running(name)
            if pid is not None:
                log.info("%s already running (pid %d, port %d)", name, pid, port)
            elif port_open(port) and not _port_frees(port, timeout=15):
                # (a just-killed service can hold its port for a moment while it is torn down)
                raise ServiceError(f"port {port} for {name} is taken by a process that "
                                   f"{self._pidfile(name)} does not name; "
                                   f"log {self._logfile(name)}")
            else:
                pid = starters[name]()
            _wait_for(probes[name], READY_TIMEOUT_S[name], name, self._logfile(name), pid=pid)
            if name == "postgres":
                self._ensure_database("binaudit")
            log.info("%s ready on 127.0.0.1:%d (pid %d)", name, port, pid)

    def down(self, only: tuple[str, ...] = ("kafka", "s3", "postgres")) -> None:
        """Stop what ``up`` started (by pid file); anything else is left alone."""
        for name in only:
            pid = self._running(name)
            if pid is not None:
                if name == "postgres":  # a clean checkpoint first; SIGTERM below is the fallback
                    self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
                    _wait_dead(pid, 5)
                _terminate(pid)
            self._pidfile(name).unlink(missing_ok=True)

    def kill(self, name: str) -> None:
        """SIGKILL a service and its children (fault-injection tests); ``up`` restarts it."""
        pid = self._running(name)
        if pid is None:
            return
        family = [pid, *_descendants(pid)]
        for member in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        for member in family:
            _wait_dead(member, 10)

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
        self._run("postgres", "pg_ctl", [self._pg_bin("pg_ctl"), "-D", str(data), *args],
                  user="postgres", check=False)

    def _start_postgres(self) -> int:
        data = self.root / "pgdata"
        logf = self._logfile("postgres")
        _check_reachable(self.root, "postgres", logf)
        logf.touch()
        _chown(logf, "postgres")
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            _chown(data, "postgres")
            self._run("postgres", "initdb", [
                self._pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--locale=C.UTF-8"], user="postgres")
        self._clear_stale_lock(data / "postmaster.pid", logf)
        sockdir = self.root / "pgsock"
        sockdir.mkdir(exist_ok=True)
        _chown(sockdir, "postgres")
        # After a SIGKILL, Postgres replays its WAL here before it accepts connections.
        return self._spawn("postgres", [
            self._pg_bin("postgres"), "-D", str(data), "-p", str(self.cfg.postgres_port),
            "-h", "127.0.0.1", "-k", str(sockdir), "-c", "fsync=on",
            "-c", "max_connections=200",
        ], user="postgres")

    def _clear_stale_lock(self, lock: Path, logf: Path) -> None:
        """Remove postmaster.pid left by a killed server, unless a server still holds it."""
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        argv = _cmdline(pid) if _pid_alive(pid) else None
        if argv is not None and str(lock.parent) in argv:
            raise ServiceError(f"a postgres (pid {pid}) not started by `up` is using {lock.parent};"
                               f" stop it first; log {logf}")
        lock.unlink(missing_ok=True)

    def _postgres_ready(self) -> bool:
        probe = [self._pg_bin("pg_isready"), "-q", "-h", "127.0.0.1",
                 "-p", str(self.cfg.postgres_port), "-U", "postgres", "-t", "2"]
        return subprocess.run(probe, check=False).returncode == 0

    def _ensure_database(self, dbname: str) -> None:
        psql = [self._pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.cfg.postgres_port),
                "-U", "postgres", "-d", "postgres", "-tAc"]
        exists = self._run("postgres", "psql", [
            *psql, f"SELECT 1 FROM pg_database WHERE datname='{dbname}'"])
        if exists.stdout.strip() != "1":
            self._run("postgres", "createdb", [*psql, f"CREATE DATABASE {dbname}"])

    # ---- moto S3 --------------------------------------------------------------------
    def _start_s3(self) -> int:
        moto = Path(sys.executable).parent / "moto_server"
        argv = [str(moto) if moto.exists() else "moto_server", "-H", "127.0.0.1",
                "-p", str(self.cfg.s3_port)]
        return self._spawn("s3", argv)

    def _s3_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.cfg.s3_port}/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # it answered HTTP: ready
        except OSError:
            return False

    # ---- kafka ----------------------------------------------------------------------
    def resolve_kafka_jars(self) -> Path:
        """Download the broker's jars with Maven once per version of the pom; later calls
        reuse the cache folder."""
        jars = self.cfg.kafka_jars
        stamp = jars / ".pom.sha256"
        digest = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()
        if stamp.exists() and stamp.read_text() == digest and any(jars.glob("kafka_2.13-*.jar")):
            return jars
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceError("mvn not found: install maven (and Java 17) to resolve Kafka")
        shutil.rmtree(jars, ignore_errors=True)  # a changed pom: no stale jars on the classpath
        jars.mkdir(parents=True, exist_ok=True)
        log.info("resolving Kafka jars from Maven Central into %s", jars)
        self.root.mkdir(parents=True, exist_ok=True)
        self._run("kafka", "mvn dependency:copy-dependencies", [
            mvn, "-q", "-B", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={jars}", "-DincludeScope=runtime"])
        stamp.write_text(digest)
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
# Local broker: keep everything. The simulator stamps events with fixed past capture
# times (deterministic ids) and retention is judged by record timestamps.
log.retention.ms=-1
"""
        path = self.root / "kafka.properties"
        path.write_text(props.lstrip())
        return path

    def _start_kafka(self) -> int:
        jars = self.resolve_kafka_jars()
        config = self._kafka_config()
        java = shutil.which("java")
        if java is None:
            raise ServiceError("java not found: install openjdk-17-jre-headless")
        log4j = self.root / "kafka-log4j2.properties"
        log4j.write_text("rootLogger.level=WARN\nrootLogger.appenderRef.stdout.ref=STDOUT\n"
                         "appender.stdout.type=Console\nappender.stdout.name=STDOUT\n"
                         "appender.stdout.layout.type=PatternLayout\n"
                         "appender.stdout.layout.pattern=[%d] %p %m (%c)%n\n"
                         "logger.kafka.name=kafka\nlogger.kafka.level=INFO\n"
                         # joins, rebalances and member expiry: what a stuck group needs
                         "logger.groups.name=org.apache.kafka.coordinator.group\n"
                         "logger.groups.level=INFO\n")
        jvm = [java, "-Xms256m", "-Xmx768m", "-XX:+UseG1GC",
               f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{jars}/*"]
        if not (self.root / "kafka-data" / "meta.properties").exists():
            self._run("kafka", "kafka storage format", [
                *jvm, "kafka.tools.StorageTool", "format", "-t", str(uuid.uuid4()),
                "-c", str(config)])
        # After a SIGKILL the broker recovers its logs from disk on this start.
        return self._spawn("kafka", [*jvm, "kafka.Kafka", str(config)])

    def _kafka_ready(self) -> bool:
        """Ready means a topic can be created and a message round-trips through it."""
        from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        if not port_open(self.cfg.kafka_port):
            return False
        common: dict[str, object] = {
            "bootstrap_servers": [f"127.0.0.1:{self.cfg.kafka_port}"],
            "client_id": "binaudit-ready", "request_timeout_ms": 10_000,
            "bootstrap_timeout_ms": 5_000,
        }
        admin = KafkaAdminClient(**common)
        try:
            if READY_TOPIC not in admin.list_topics():
                with contextlib.suppress(TopicAlreadyExistsError):
                    admin.create_topics([NewTopic(READY_TOPIC, 1, 1)], timeout_ms=10_000)
        finally:
            admin.close()
        token = uuid.uuid4().hex.encode()
        producer = KafkaProducer(**common, acks="all", max_block_ms=10_000)
        try:
            sent = producer.send(READY_TOPIC, value=token).get(timeout=15)
        finally:
            producer.close(timeout=5)
        consumer = KafkaConsumer(**common, group_id=None, enable_auto_commit=False)
        try:
            partition = TopicPartition(READY_TOPIC, sent.partition)
            consumer.assign([partition])
            consumer.seek(partition, sent.offset)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    if any(record.value == token for record in records):
                        return True
            return False
        finally:
            consumer.close()

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


def _check_reachable(root: Path, user: str, logf: Path) -> None:
    """Fail early if ``user`` (Postgres runs demoted) cannot enter ``root``."""
    if os.geteuid() != 0:
        return
    uid = pwd.getpwnam(user).pw_uid
    for folder in (root, *root.parents):
        st = folder.stat()
        if not st.st_mode & (stat.S_IXUSR if st.st_uid == uid else stat.S_IXOTH):
            raise ServiceError(f"user {user} cannot enter {folder} (mode {st.st_mode & 0o777:o}), "
                               f"so it cannot use {root}; pick a root under a folder others may "
                               f"enter; log {logf}")


def _terminate(pid: int, timeout: float = 30.0) -> None:
    if not _pid_alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_dead(pid, timeout):
        os.killpg(pid, signal.SIGKILL)
        _wait_dead(pid, 5)


def _port_frees(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_open(port):
            return True
        time.sleep(0.3)
    return False


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not _pid_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)

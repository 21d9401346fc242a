"""Shared fixtures: the real local services (Kafka, Postgres, moto S3) and factories.

Services are started through the project's own supervisor (``binaudit services up``) if they
are not already running, and migrated to head once per session. Each test gets its own topic,
consumer group and bucket names, so tests never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from sqlalchemy import Engine, create_engine, text

from core.settings import Settings
from devstack.clientenv import local_env, with_local_s3
from devstack.services import LocalServices
from migrations.runner import upgrade

# Pipeline tests run the eager reference backend at the old default batch (16), in this
# process and in the workers it starts: autotuning has its own tests
# (tests/inference/test_autotune.py) and would otherwise measure at every worker start.
# They also run the model they configure: the registry (shared by every test of the
# database) is followed only by the lifecycle tests, which say so (follow_registry=True).
PINNED_INFERENCE = {"BINAUDIT_INFERENCE__BACKEND": "eager",
                    "BINAUDIT_INFERENCE__MAX_BATCH_SIZE": "16",
                    "BINAUDIT_INFERENCE__FOLLOW_REGISTRY": "false"}
for _name, _value in PINNED_INFERENCE.items():
    os.environ.setdefault(_name, _value)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLE_DIR = SHARED_DATA / "abid-sample"
FILE_LIST = SHARED_DATA / "abid" / "file_list.json"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    if not (SAMPLE_DIR / "labels.csv").exists():
        pytest.fail(f"real ABID sample not found at {SAMPLE_DIR} (see ../shared/data/README.md)")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    # The product's S3 defaults are AWS's; the local stack sets its endpoint and keys.
    return with_local_s3(Settings(environment="test"))


@pytest.fixture(scope="session", autouse=True)
def local_s3_env(base_settings: Settings) -> Iterator[None]:
    """Child processes and CliRunner invocations build their own Settings from the
    environment: point them at the local S3 like `eval "$(binaudit services env)"` does."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in local_env(base_settings).items():
            mp.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def services(base_settings: Settings) -> Settings:
    """Start Kafka, Postgres and S3 if needed and migrate the database to head."""
    supervisor = LocalServices(base_settings)
    if not all(s.up for s in supervisor.status()):
        supervisor.up()
    upgrade(base_settings, "head")
    return base_settings


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def settings_factory(services: Settings) -> SettingsFactory:
    """Build a Settings whose nested sections are updated from keyword dicts.

    ``settings_factory(kafka={"topic": "t"}, inference={"max_batch_size": 4})``

    A name the section does not have fails here (``model_copy`` would store it unread, e.g. a
    setting that moved to another section).
    """

    def make(**sections: dict[str, Any]) -> Settings:
        update = {}
        for name, values in sections.items():
            section = getattr(services, name)
            unknown = set(values) - set(type(section).model_fields)
            assert not unknown, f"{name} has no setting {sorted(unknown)}"
            update[name] = section.model_copy(update=values)
        return services.model_copy(update=update)

    return make


@pytest.fixture(scope="session")
def db_engine(services: Settings) -> Iterator[Engine]:
    # pre_ping: tests restart Postgres, which leaves dead connections in the pool
    engine = create_engine(services.db.url.get_secret_value(), pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture
def clean_db(db_engine: Engine) -> Engine:
    """Empty the worker's tables (the schema stays at head)."""
    with db_engine.begin() as conn:
        tables = conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname='public' "
            "AND tablename <> 'alembic_version'"
        )).scalars().all()
        if tables:
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    return db_engine


@pytest.fixture
def topic_factory(services: Settings) -> Iterator[Callable[..., str]]:
    admin = KafkaAdminClient(**services.kafka.client_kwargs())

    def make(partitions: int = 3, prefix: str = "test-bin-events") -> str:
        name = unique(prefix)
        # Events carry past capture times as record timestamps: never expire them.
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                      topic_configs={"retention.ms": "-1"})])
        return name

    yield make
    admin.close()


@pytest.fixture
def s3_client(services: Settings) -> Any:
    cfg = services.s3
    assert cfg.access_key_id is not None and cfg.secret_access_key is not None
    return boto3.client(
        "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region,
        aws_access_key_id=cfg.access_key_id.get_secret_value(),
        aws_secret_access_key=cfg.secret_access_key.get_secret_value(),
    )


@pytest.fixture
def bucket_factory(s3_client: Any) -> Callable[..., str]:
    def make(prefix: str = "test-bucket") -> str:
        name = unique(prefix)
        s3_client.create_bucket(Bucket=name)
        return name

    return make


ArtifactFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def model_artifact_factory(tmp_path_factory: pytest.TempPathFactory) -> ArtifactFactory:
    """Write a real (untrained, seeded) model artifact in the trainer's format.

    Accuracy is irrelevant to pipeline tests; the artifact format, loader and forward pass
    are the real ones. ``version`` distinguishes model A from model B in replay tests.
    """
    from datetime import UTC, datetime

    import torch

    from core.model.architectures import build_model
    from core.model.artifact import save_artifact
    from core.model.card import ModelCard
    from core.model.preprocess import IMAGENET_MEAN, IMAGENET_STD

    def make(version: str = "test-lite0-a", *, input_size: int = 160, seed: int = 0,
             architecture: str = "efficientnet_lite0", decode: str = "full") -> Path:
        directory = tmp_path_factory.mktemp("artifacts") / version
        torch.manual_seed(seed)
        model = build_model(architecture, 5, weights=None)
        card = ModelCard(version=version, architecture=architecture,
                         class_counts=[1, 2, 3, 4, 5], input_size=input_size,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD, created_at=datetime.now(UTC),
                         code_version="test", decode=decode)
        return save_artifact(directory, model, card)

    return make


@pytest.fixture(scope="session")
def model_artifact(model_artifact_factory: ArtifactFactory) -> Path:
    return model_artifact_factory()


@pytest.fixture(scope="session")
def demo_model(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model ``make demo`` trains (``binaudit train quickstart``: ImageNet EfficientNet-Lite0,
    frozen backbone, the sample's 1..5-item bins, calibrated and thresholded on validation),
    at 128 px for 3 epochs so that it fits a CPU test run (minutes)."""
    from typer.testing import CliRunner

    from binaudit.cli import app

    out = tmp_path_factory.mktemp("demo-models")
    result = CliRunner().invoke(app, ["train", "quickstart", "--source-dir", str(sample_dir),
                                      "--out", str(out), "--epochs", "3",
                                      "--image-size", "128"])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return (out / "current").resolve()


def settings_env(**sections: dict[str, Any]) -> dict[str, str]:
    """Environment variables that set nested settings in a child process (a name the section
    does not have fails here: Settings would ignore it)."""
    env = {}
    for section, values in sections.items():
        fields = Settings.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
        unknown = set(values) - set(fields)
        assert not unknown, f"{section} has no setting {sorted(unknown)}"
        for key, value in values.items():
            env[f"BINAUDIT_{section.upper()}__{key.upper()}"] = str(value)
    return env


class WorkerProcess:
    """A `binaudit worker` child process with its own log file."""

    def __init__(self, proc: Any, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        import subprocess

        try:
            return int(self.proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            raise AssertionError(
                f"worker did not exit in {timeout}s; log:\n{self.log()[-4000:]}") from exc


@pytest.fixture
def worker_process_factory(services: Settings,
                           tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `python -m binaudit worker` children; all are killed at teardown."""
    import os
    import subprocess
    import sys

    started: list[WorkerProcess] = []

    def start(name: str = "worker", **sections: dict[str, Any]) -> WorkerProcess:
        sections.setdefault("worker", {})
        sections["worker"].setdefault("metrics_port", 0)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **settings_env(**sections)}
        log_path = tmp_path / f"{name}-{len(started)}.log"
        proc = subprocess.Popen([sys.executable, "-m", "binaudit", "worker"], env=env,
                                stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
                                cwd=REPO_ROOT)
        wp = WorkerProcess(proc, log_path)
        started.append(wp)
        return wp

    yield start
    for wp in started:
        if wp.proc.poll() is None:
            wp.proc.kill()
            wp.proc.wait(timeout=30)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.25) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_topic(settings: Settings, topic: str, n: int, *,
               timeout_ms: int = 15_000) -> list[Any]:
    """The first ``n`` records of ``topic`` (fewer if none arrives for ``timeout_ms``)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, **settings.kafka.client_kwargs(),
                             auto_offset_reset="earliest", consumer_timeout_ms=timeout_ms)
    try:
        out: list[Any] = []
        for record in consumer:
            out.append(record)
            if len(out) >= n:
                break
        return out
    finally:
        consumer.close()


@pytest.fixture
def wait_for() -> Callable[..., None]:
    """``wait_for(predicate, timeout, what)``: poll until true or fail naming ``what``."""
    return wait_until


@pytest.fixture
def count_rows(db_engine: Engine) -> Callable[..., int]:
    """``count_rows(table, **equals)``: rows of ``table`` whose columns equal the values."""

    def count(table: str, **equals: Any) -> int:
        where = " AND ".join(f'"{k}" = :{k}' for k in equals) or "TRUE"
        with db_engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table} WHERE {where}"),
                                    equals).scalar_one())

    return count


@pytest.fixture(scope="module")
def own_db(fresh_database: Callable[..., Any], request: pytest.FixtureRequest
           ) -> Iterator[Settings]:
    """A throwaway database at head for one test module (named after it): rows the module
    writes are nobody else's, and other modules' rows are not its."""
    with fresh_database(f"binaudit_{request.module.__name__.rsplit('.', 1)[-1]}") as settings:
        yield settings


@pytest.fixture(scope="module")
def own_engine(own_db: Settings) -> Iterator[Engine]:
    engine = create_engine(own_db.db.url.get_secret_value())
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def fresh_database(services: Settings) -> Callable[..., Any]:
    """``with fresh_database("prefix", migrate=True) as settings:`` — a throwaway database on
    the shared server (its own schema state, invisible to ``clean_db``), dropped afterwards."""
    from contextlib import contextmanager

    from pydantic import SecretStr
    from sqlalchemy.engine import make_url

    @contextmanager
    def make(prefix: str, *, migrate: bool = True) -> Iterator[Settings]:
        server = make_url(services.db.url.get_secret_value())
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = server.set(database=name).render_as_string(hide_password=False)
        settings = services.model_copy(update={"db": services.db.model_copy(
            update={"url": SecretStr(url)})})
        try:
            if migrate:
                upgrade(settings, "head")
            yield settings
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    return make

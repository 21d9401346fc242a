"""docker-compose.yml: the services it defines and that its BINAUDIT_* variables are real."""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from core.settings import Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    candidates = typing.get_args(annotation) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_settings_field(var: str) -> bool:
    """BINAUDIT_A__B names leaf field ``b`` of the model in field ``a`` of Settings."""
    *sections, leaf = var.removeprefix("BINAUDIT_").lower().split("__")
    model: type[BaseModel] = Settings
    for part in sections:
        field = model.model_fields.get(part)
        nested = _model_of(field.annotation) if field else None
        if nested is None:
            return False
        model = nested
    field = model.model_fields.get(leaf)
    return field is not None and _model_of(field.annotation) is None


def test_services_present(compose: dict[str, Any]) -> None:
    assert {"kafka", "postgres", "minio", "minio-init", "migrate", "worker",
            "serve"} <= set(compose["services"])


def test_kafka_is_kraft(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert "ZOOKEEPER" not in " ".join(env)
    assert "healthcheck" in kafka


def test_postgres_healthcheck(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:15")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_minio_and_bucket_one_shot(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["minio"]["image"].startswith("minio/minio")
    init = services["minio-init"]
    assert init["image"].startswith("minio/mc")
    assert "mc mb" in " ".join(init["command"]) and "binaudit-images" in " ".join(init["command"])
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"


def test_migrate_one_shot(compose: dict[str, Any]) -> None:
    migrate = compose["services"]["migrate"]
    assert migrate["build"]["context"] == "."
    assert migrate["command"] == ["db", "upgrade"]  # after the image's `binaudit` entry point
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_worker_gpu_and_dependencies(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "build" in worker
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    conditions = {name: dep["condition"] for name, dep in worker["depends_on"].items()}
    assert conditions["kafka"] == "service_healthy"
    assert conditions["postgres"] == "service_healthy"
    assert conditions["migrate"] == "service_completed_successfully"
    assert conditions["minio-init"] == "service_completed_successfully"


def test_serve_is_optional_on_8080(compose: dict[str, Any]) -> None:
    serve = compose["services"]["serve"]
    assert serve["profiles"] == ["serve"]
    assert any(str(port).split(":")[-1] == "8080" for port in serve["ports"])
    assert serve["command"][0] == "serve"


def test_app_env_points_at_compose_services(compose: dict[str, Any]) -> None:
    env = _env(compose["services"]["worker"])
    assert env["BINAUDIT_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["BINAUDIT_DB__URL"] == (
        "postgresql+psycopg2://binaudit:binaudit@postgres:5432/binaudit")
    assert env["BINAUDIT_S3__ENDPOINT_URL"] == "http://minio:9000"


def test_every_binaudit_var_is_a_settings_field(compose: dict[str, Any],
                                                monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the repository
    checked = 0
    for name, service in compose["services"].items():
        env = {k: v for k, v in _env(service).items() if k.startswith("BINAUDIT_")}
        unknown = [var for var in env if not _is_settings_field(var)]
        assert not unknown, f"{name}: not Settings fields: {unknown}"
        # The values must validate too.
        for var in [v for v in os.environ if v.startswith("BINAUDIT_")]:
            monkeypatch.delenv(var)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        Settings()
        checked += len(env)
    assert checked > 0


def test_field_walker() -> None:
    assert _is_settings_field("BINAUDIT_KAFKA__TOPIC")
    assert _is_settings_field("BINAUDIT_LOG_LEVEL")
    assert not _is_settings_field("BINAUDIT_KAFKA")  # a section, not a field
    assert not _is_settings_field("BINAUDIT_KAFKA__NO_SUCH")
    assert not _is_settings_field("BINAUDIT_KAFKA_TOPIC")
    assert not _is_settings_field("BINAUDIT_LOG_LEVEL__X")


def test_env_example_is_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """.env.example names only real fields, and loads as a .env file."""
    text = (REPO / ".env.example").read_text()
    names = [line.split("=", 1)[0] for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert names and not [n for n in names if not _is_settings_field(n)]
    for var in [v for v in os.environ if v.startswith("BINAUDIT_")]:
        monkeypatch.delenv(var)
    (tmp_path / ".env").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert Settings().kafka.topic == "bin-events"

"""The one Settings object: environment prefix and nesting, immutability, secrets, TLS/SASL,
and the inference section (with the former worker-section names it still accepts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from core.settings import (
    MOVED_TO_INFERENCE,
    DatabaseSettings,
    InferenceSettings,
    KafkaSettings,
    S3Settings,
    Settings,
    SettingsDeprecationWarning,
    WorkerSettings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BINAUDIT_* from the caller's shell and no .env from the repository."""
    for name in list(os.environ):
        if name.upper().startswith("BINAUDIT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_env_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BINAUDIT_KAFKA__TOPIC", "bin-events-eu")
    monkeypatch.setenv("BINAUDIT_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("BINAUDIT_INFERENCE__MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("BINAUDIT_ENVIRONMENT", "test")
    monkeypatch.setenv("KAFKA__TOPIC", "no-prefix-is-ignored")

    settings = Settings()

    assert settings.kafka.topic == "bin-events-eu"
    assert settings.kafka.client_kwargs()["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert settings.inference.max_batch_size == 32
    assert settings.environment == "test"
    # Sections not named in the environment keep their defaults.
    assert settings.kafka.group_id == KafkaSettings().group_id


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BINAUDIT_S3__BUCKET=from-dotenv\n")
    assert Settings().s3.bucket == "from-dotenv"


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BINAUDIT_INFERENCE__MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()


# ---- the inference section --------------------------------------------------------------------

def test_inference_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BINAUDIT_INFERENCE__MODEL", "s3://models/counter/v7/")
    monkeypatch.setenv("BINAUDIT_INFERENCE__MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("BINAUDIT_INFERENCE__DEVICE", "cpu")

    settings = Settings()

    assert settings.inference.model == "s3://models/counter/v7/"
    assert settings.inference.max_batch_size == 8
    assert settings.inference.device == "cpu"


def test_default_model_path_is_the_shipped_counter() -> None:
    inference = Settings().inference
    assert inference.model == "models/counter"
    assert inference.model_path == Path("models/counter")


def test_the_former_worker_name_still_works_for_one_release_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BINAUDIT_WORKER__MODEL_PATH", str(tmp_path / "old-name"))
    monkeypatch.setenv("BINAUDIT_WORKER__METRICS_PORT", "9200")  # stays in the worker's section

    with pytest.warns(SettingsDeprecationWarning, match="BINAUDIT_INFERENCE__MODEL") as caught:
        settings = Settings()

    assert settings.inference.model == str(tmp_path / "old-name")
    assert settings.inference.model_path == tmp_path / "old-name"
    assert settings.worker.metrics_port == 9200
    assert [str(w.message) for w in caught if issubclass(w.category,
                                                         SettingsDeprecationWarning)] == [
        "BINAUDIT_WORKER__MODEL_PATH is deprecated and will be removed in the next release: "
        "use BINAUDIT_INFERENCE__MODEL"]


def test_the_new_name_wins_over_the_former_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BINAUDIT_WORKER__MODEL_PATH", "models/old")
    monkeypatch.setenv("BINAUDIT_INFERENCE__MODEL", "models/new")
    monkeypatch.setenv("BINAUDIT_WORKER__MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("BINAUDIT_INFERENCE__MAX_BATCH_SIZE", "32")

    with pytest.warns(SettingsDeprecationWarning):
        settings = Settings()

    assert settings.inference.model == "models/new"
    assert settings.inference.max_batch_size == 32


def test_worker_settings_no_longer_hold_the_moved_fields() -> None:
    with pytest.raises(ValidationError, match="model_path"):
        WorkerSettings(model_path="models/counter")
    for old, new in MOVED_TO_INFERENCE.items():
        assert old not in WorkerSettings.model_fields
        assert new in InferenceSettings.model_fields


def test_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.environment = "production"
    with pytest.raises(ValidationError):
        settings.kafka.topic = "other"
    with pytest.raises(ValidationError):
        KafkaSettings(no_such_option=1)  # type: ignore[call-arg]


def test_secrets_not_in_repr_or_str() -> None:
    secrets = ("db-pa55word", "kafka-pa55word", "s3-secret-key", "s3-access-key")
    settings = Settings(
        db=DatabaseSettings(url=SecretStr(f"postgresql+psycopg2://app:{secrets[0]}@db:5432/x")),
        kafka=KafkaSettings(sasl_mechanism="PLAIN", sasl_username="app",
                            sasl_password=SecretStr(secrets[1])),
        s3=S3Settings(secret_access_key=SecretStr(secrets[2]),
                      access_key_id=SecretStr(secrets[3])),
    )
    for text in (repr(settings), str(settings), repr(settings.db), str(settings.kafka)):
        for secret in secrets:
            assert secret not in text
    assert settings.db.url.get_secret_value().endswith(f"app:{secrets[0]}@db:5432/x")


def test_kafka_sasl_ssl_reach_client_kwargs(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("BINAUDIT_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("BINAUDIT_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("BINAUDIT_KAFKA__SASL_USERNAME", "auditor")
    monkeypatch.setenv("BINAUDIT_KAFKA__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("BINAUDIT_KAFKA__SSL_CAFILE", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("BINAUDIT_KAFKA__SSL_CERTFILE", str(tmp_path / "client.pem"))
    monkeypatch.setenv("BINAUDIT_KAFKA__SSL_KEYFILE", str(tmp_path / "client.key"))

    kwargs = Settings().kafka.client_kwargs()

    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "auditor"
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert kwargs["ssl_cafile"] == str(tmp_path / "ca.pem")
    assert kwargs["ssl_certfile"] == str(tmp_path / "client.pem")
    assert kwargs["ssl_keyfile"] == str(tmp_path / "client.key")


def test_kafka_plaintext_default_has_no_security_extras() -> None:
    kwargs = KafkaSettings().client_kwargs()
    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert not {k for k in kwargs if k.startswith(("sasl_", "ssl_"))}


def test_postgres_tls_reaches_connect_args(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("BINAUDIT_DB__SSLMODE", "verify-full")
    monkeypatch.setenv("BINAUDIT_DB__SSLROOTCERT", str(tmp_path / "root.crt"))

    assert Settings().db.connect_args() == {
        "sslmode": "verify-full", "sslrootcert": str(tmp_path / "root.crt")}
    assert DatabaseSettings().connect_args() == {}

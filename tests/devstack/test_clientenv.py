"""The local stack sets its own S3 endpoint and keys; what is configured already is kept."""

from __future__ import annotations

import shlex

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from binaudit.cli import app
from core.settings import S3Settings, ServicesSettings, Settings
from devstack.clientenv import local_env, with_local_s3


def _bare(**kwargs: object) -> Settings:
    return Settings(_env_file=None, **kwargs)  # type: ignore[call-arg]


def test_local_s3_fills_the_moto_endpoint_and_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENDPOINT_URL", "REGION", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY"):
        monkeypatch.delenv(f"BINAUDIT_S3__{name}", raising=False)
    settings = with_local_s3(_bare(services=ServicesSettings(s3_port=15999)))
    assert settings.s3.endpoint_url == "http://127.0.0.1:15999"
    assert settings.s3.access_key_id == SecretStr("testing")
    assert settings.s3.region == "us-east-1"


def test_what_is_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ENDPOINT_URL", "REGION", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY"):
        monkeypatch.delenv(f"BINAUDIT_S3__{name}", raising=False)
    s3 = S3Settings(endpoint_url="http://minio:9000", access_key_id=SecretStr("k"),
                    secret_access_key=SecretStr("s"), region="eu-west-1")
    env = local_env(_bare(s3=s3))
    assert env == {"BINAUDIT_S3__ENDPOINT_URL": "http://minio:9000",
                   "BINAUDIT_S3__REGION": "eu-west-1", "BINAUDIT_S3__ACCESS_KEY_ID": "k",
                   "BINAUDIT_S3__SECRET_ACCESS_KEY": "s"}


def test_services_env_prints_shell_exports() -> None:
    result = CliRunner().invoke(app, ["services", "env"])
    assert result.exit_code == 0, result.output
    exports = dict(shlex.split(line)[1].split("=", 1) for line in result.output.splitlines())
    assert set(exports) == {"BINAUDIT_S3__ENDPOINT_URL", "BINAUDIT_S3__REGION",
                            "BINAUDIT_S3__ACCESS_KEY_ID", "BINAUDIT_S3__SECRET_ACCESS_KEY"}
    assert exports["BINAUDIT_S3__ENDPOINT_URL"].startswith("http://127.0.0.1:")

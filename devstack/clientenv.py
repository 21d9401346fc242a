"""How clients reach the local stack: its S3 endpoint and moto's placeholder keys.

The product's defaults are AWS's (no endpoint, botocore's credential chain); only the local
stack needs an endpoint and static keys, and it sets them here, explicitly: the test fixtures,
``make demo`` (``eval "$(binaudit services env)"``) and bench build their settings from this.
"""

from __future__ import annotations

from pydantic import SecretStr

from core.settings import S3Settings, Settings

# moto accepts any key pair while its IAM authentication is off (its default).
LOCAL_S3_KEY = "testing"
LOCAL_S3_REGION = "us-east-1"


def local_s3(settings: Settings) -> S3Settings:
    """``settings.s3`` with the local moto endpoint, keys and region filled in where unset."""
    s3 = settings.s3
    return s3.model_copy(update={
        "endpoint_url": s3.endpoint_url or f"http://127.0.0.1:{settings.services.s3_port}",
        "region": s3.region or LOCAL_S3_REGION,
        "access_key_id": s3.access_key_id or SecretStr(LOCAL_S3_KEY),
        "secret_access_key": s3.secret_access_key or SecretStr(LOCAL_S3_KEY),
    })


def with_local_s3(settings: Settings) -> Settings:
    """``settings`` pointed at the local stack's S3 (what is set already is kept)."""
    return settings.model_copy(update={"s3": local_s3(settings)})


def local_env(settings: Settings) -> dict[str, str]:
    """The environment variables that point every ``binaudit`` command at the local S3."""
    s3 = local_s3(settings)
    assert s3.access_key_id is not None and s3.secret_access_key is not None
    return {
        "BINAUDIT_S3__ENDPOINT_URL": str(s3.endpoint_url),
        "BINAUDIT_S3__REGION": str(s3.region),
        "BINAUDIT_S3__ACCESS_KEY_ID": s3.access_key_id.get_secret_value(),
        "BINAUDIT_S3__SECRET_ACCESS_KEY": s3.secret_access_key.get_secret_value(),
    }

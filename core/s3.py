"""One long-lived aiobotocore S3 client per process, built from settings.

Used by the worker's image fetcher, ``binaudit data fetch`` and ``binaudit publish``.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore import UNSIGNED
from pydantic import SecretStr

from core.settings import AbidSourceSettings, S3Settings


def _config(*, max_pool: int, connect_timeout: float, read_timeout: float, attempts: int,
            anonymous: bool) -> AioConfig:
    # "standard" retry mode backs off on throttling and 5xx; our own code never retries 4xx.
    kwargs: dict[str, Any] = {
        "max_pool_connections": max_pool,
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "retries": {"max_attempts": attempts, "mode": "standard"},
    }
    if anonymous:
        kwargs["signature_version"] = UNSIGNED
    return AioConfig(**kwargs)


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


async def _open(stack: AsyncExitStack, *, endpoint_url: str | None, region: str | None,
                key_id: SecretStr | None, secret: SecretStr | None, config: AioConfig,
                anonymous: bool) -> Any:
    # Keys left out (None) mean botocore's own credential chain: environment, profile,
    # web identity (IRSA), container or instance role.
    return await stack.enter_async_context(get_session().create_client(
        "s3", endpoint_url=endpoint_url, region_name=region,
        aws_access_key_id=None if anonymous else _secret(key_id),
        aws_secret_access_key=None if anonymous else _secret(secret),
        config=config,
    ))


async def open_s3_client(stack: AsyncExitStack, cfg: S3Settings) -> Any:
    """Enter a client for the project's image store into ``stack`` and return it."""
    return await _open(
        stack, endpoint_url=cfg.endpoint_url, region=cfg.region, key_id=cfg.access_key_id,
        secret=cfg.secret_access_key, anonymous=cfg.anonymous,
        config=_config(max_pool=cfg.max_concurrency, connect_timeout=cfg.connect_timeout_s,
                       read_timeout=cfg.read_timeout_s, attempts=cfg.max_attempts,
                       anonymous=cfg.anonymous))


async def open_abid_client(stack: AsyncExitStack, cfg: AbidSourceSettings) -> Any:
    """Enter a client for the public ABID bucket (anonymous by default) into ``stack``."""
    return await _open(
        stack, endpoint_url=cfg.endpoint_url, region=cfg.region, key_id=cfg.access_key_id,
        secret=cfg.secret_access_key, anonymous=cfg.anonymous,
        config=_config(max_pool=cfg.concurrency * 2, connect_timeout=10, read_timeout=60,
                       attempts=cfg.max_attempts, anonymous=cfg.anonymous))


async def ensure_bucket(client: Any, bucket: str) -> None:
    """Create ``bucket`` if it does not exist (local moto/MinIO only)."""
    existing = await client.list_buckets()
    if bucket not in {b["Name"] for b in existing.get("Buckets", [])}:
        await client.create_bucket(Bucket=bucket)

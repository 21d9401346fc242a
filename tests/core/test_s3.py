"""S3 through the worker's aiobotocore client against the local moto server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from core.s3 import open_s3_client
from core.settings import Settings

pytestmark = pytest.mark.services


async def _round_trip(settings: Settings, bucket: str, images: list[Path]) -> dict[str, bytes]:
    async with AsyncExitStack() as stack:
        client = await open_s3_client(stack, settings.s3)

        async def put(path: Path) -> None:
            await client.put_object(Bucket=bucket, Key=f"bin-images/{path.name}",
                                    Body=path.read_bytes(), ContentType="image/jpeg")

        async def get(path: Path) -> tuple[str, bytes]:
            response = await client.get_object(Bucket=bucket, Key=f"bin-images/{path.name}")
            # Read the body fully inside its context so the connection returns to the pool.
            async with response["Body"] as body:
                return path.name, await body.read()

        await asyncio.gather(*(put(p) for p in images))
        return dict(await asyncio.gather(*(get(p) for p in images)))


def test_put_get_real_images_byte_identical(services: Settings, sample_dir: Path,
                                            bucket_factory: Callable[..., str]) -> None:
    images = sorted((sample_dir / "images").glob("*.jpg"))[:50]
    assert len(images) == 50, f"expected at least 50 sample images in {sample_dir / 'images'}"
    bucket = bucket_factory()

    fetched = asyncio.run(_round_trip(services, bucket, images))

    assert set(fetched) == {p.name for p in images}
    for path in images:
        assert fetched[path.name] == path.read_bytes(), f"{path.name} changed in transit"


def test_defaults_are_aws_defaults() -> None:
    """No endpoint, no keys, no region: botocore's own chain and resolution decide."""
    from core.settings import S3Settings

    cfg = S3Settings()
    assert cfg.endpoint_url is None and cfg.region is None
    assert cfg.access_key_id is None and cfg.secret_access_key is None


_AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE",
             "AWS_SHARED_CREDENTIALS_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
             "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


def _signed_request(settings: Settings, bucket: str) -> tuple[str, list[str]]:
    """PUT and GET one object with the product's client; return the Authorization headers
    it sent and the object's body as text."""
    seen: list[str] = []

    async def run() -> str:
        async with AsyncExitStack() as stack:
            client = await open_s3_client(stack, settings.s3)
            client.meta.events.register(
                "before-send.s3.*",
                lambda request, **_: seen.append(str(request.headers.get("Authorization"))))
            await client.put_object(Bucket=bucket, Key="chain.txt", Body=b"through the chain")
            response = await client.get_object(Bucket=bucket, Key="chain.txt")
            async with response["Body"] as body:
                return (await body.read()).decode()

    return asyncio.run(run()), seen


@pytest.mark.parametrize("source", ["environment", "profile"])
def test_no_keys_configured_means_the_credential_chain(
        source: str, services: Settings, bucket_factory: Callable[..., str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With no keys in settings the client takes them where every AWS tool does (here the
    environment, or a named profile of a shared credentials file) and signs with them; the
    local stack's placeholder key appears nowhere in the requests."""
    bucket = bucket_factory()
    for name in _AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws of whoever runs the tests
    key_id = "AKIACHAINENV0001" if source == "environment" else "AKIACHAINPROFILE1"
    if source == "environment":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    else:
        (tmp_path / "credentials").write_text(
            f"[binaudit-test]\naws_access_key_id = {key_id}\n"
            "aws_secret_access_key = profile-secret\n")
        (tmp_path / "config").write_text("[profile binaudit-test]\nregion = eu-west-1\n")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
        monkeypatch.setenv("AWS_PROFILE", "binaudit-test")
    s3 = services.s3.model_copy(update={"access_key_id": None, "secret_access_key": None,
                                        "region": None})
    body, auth = _signed_request(services.model_copy(update={"s3": s3}), bucket)

    assert body == "through the chain"
    assert len(auth) == 2
    for header in auth:
        assert f"Credential={key_id}/" in header
        assert "/eu-west-1/s3/" in header  # the region came from the chain's config too
        assert "testing" not in header

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

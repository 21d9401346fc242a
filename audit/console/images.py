"""Bin images and manifests for the console, proxied from S3 with a bounded in-memory cache.

The browser never talks to S3: the console fetches the object the discrepancy names (only from
the allowed buckets), caches it, and serves it with a private cache lifetime. Anything that
cannot be shown (missing object, other bucket, not an image) becomes a placeholder, never an
error page. Manifests are the ABID metadata JSON next to the image
(``bin-images/<id>.jpg`` → ``metadata/<id>.json``)."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image, UnidentifiedImageError
from pydantic import SecretStr, ValidationError

from core.settings import Settings
from schemas.abid import AbidMetadata
from schemas.events import parse_s3_uri

log = logging.getLogger(__name__)

PLACEHOLDER_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="320" height="240" viewBox="0 0 320 240">'
    b'<rect width="320" height="240" fill="#eceff1"/><path d="M110 160l40-50 30 35 20-20 40 35z"'
    b' fill="#b0bec5"/><circle cx="205" cy="90" r="14" fill="#b0bec5"/>'
    b'<text x="160" y="210" font-family="sans-serif" font-size="15" text-anchor="middle" '
    b'fill="#546e7a">image unavailable</text></svg>')
MAX_OBJECT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Picture:
    body: bytes
    media_type: str
    found: bool


PLACEHOLDER = Picture(PLACEHOLDER_SVG, "image/svg+xml", False)


@dataclass(frozen=True)
class Manifest:
    skus: list[dict[str, Any]]  # name, asin, quantity
    expected_quantity: int
    sku_quantity_sum: int


class _LruBytes:
    """A thread-safe LRU of byte values, bounded by their total size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: str, value: Any, size: int) -> None:
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                self._total -= self._sizes[key]
            self._items[key], self._sizes[key] = value, size
            self._items.move_to_end(key)
            self._total += size
            while self._total > self.max_bytes and self._items:
                old, _ = self._items.popitem(last=False)
                self._total -= self._sizes.pop(old)


def metadata_key(image_key: str) -> str | None:
    """ABID layout: ``[prefix/]bin-images/<id>.jpg`` → ``[prefix/]metadata/<id>.json``."""
    path = PurePosixPath(image_key)
    if path.parent.name not in ("bin-images", "images"):
        return None
    return str(path.parent.parent / "metadata" / f"{path.stem}.json")


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


class ImageStore:
    def __init__(self, settings: Settings) -> None:
        cfg = settings.s3
        self.allowed = frozenset(cfg.allowed_buckets)
        self.thumb_px = settings.console.thumbnail_px
        self._client = boto3.client(
            "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region,
            # Unset keys (the default): botocore's credential chain, like every AWS tool.
            aws_access_key_id=_secret(None if cfg.anonymous else cfg.access_key_id),
            aws_secret_access_key=_secret(None if cfg.anonymous else cfg.secret_access_key),
            config=Config(connect_timeout=cfg.connect_timeout_s,
                          read_timeout=min(cfg.read_timeout_s, 10.0),
                          retries={"max_attempts": 2, "mode": "standard"},
                          max_pool_connections=16))
        self._cache = _LruBytes(settings.console.image_cache_mb * 1024 * 1024)
        self.presigned_ttl_s = settings.console.presigned_url_ttl_s
        self.endpoint_url = cfg.endpoint_url

    def _get(self, bucket: str, key: str) -> bytes | None:
        cache_key = f"obj:{bucket}/{key}"
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached or None  # b"": known missing
        try:
            response = self._client.get_object(Bucket=bucket, Key=key)
            if int(response.get("ContentLength") or 0) > MAX_OBJECT_BYTES:
                data = b""
            else:
                data = response["Body"].read()
        except ClientError as exc:
            log.info("s3://%s/%s unavailable: %s", bucket, key,
                     exc.response.get("Error", {}).get("Code"))
            data = b""
        except BotoCoreError as exc:
            log.warning("s3://%s/%s: %s", bucket, key, exc)
            return None  # not cached: the store may come back
        self._cache.put(cache_key, data, len(data) + 64)
        return data or None

    def _locate(self, image_uri: str | None) -> tuple[str, str] | None:
        if not image_uri:
            return None
        try:
            bucket, key = parse_s3_uri(image_uri)
        except ValueError:
            return None
        return (bucket, key) if bucket in self.allowed else None

    def image(self, image_uri: str | None) -> Picture:
        where = self._locate(image_uri)
        data = self._get(*where) if where else None
        if not data:
            return PLACEHOLDER
        kind = _media_type(data)
        return Picture(data, kind, True) if kind else PLACEHOLDER

    def presigned_url(self, image_uri: str | None) -> str | None:
        """A short-lived GET URL for the image, None when it cannot be shown (checked with a
        HEAD first, cached: a missing image is a placeholder, not a broken link)."""
        where = self._locate(image_uri)
        if where is None:
            return None
        cache_key = f"head:{where[0]}/{where[1]}"
        exists = self._cache.get(cache_key)
        if exists is None:
            try:
                head = self._client.head_object(Bucket=where[0], Key=where[1])
                exists = str(head.get("ContentType", "")).startswith("image/") or \
                    where[1].lower().endswith((".jpg", ".jpeg", ".png"))
            except ClientError:
                exists = False
            except BotoCoreError as exc:
                log.warning("s3://%s/%s: %s", where[0], where[1], exc)
                return None
            self._cache.put(cache_key, exists, 64)
        if not exists:
            return None
        return str(self._client.generate_presigned_url(
            "get_object", Params={"Bucket": where[0], "Key": where[1]},
            ExpiresIn=self.presigned_ttl_s))

    def origin(self) -> str:
        """Where presigned URLs point (for the Content-Security-Policy's img-src)."""
        if not self.endpoint_url:  # AWS: virtual-hosted or path-style, any region
            return "https://*.amazonaws.com"
        return "/".join(self.endpoint_url.split("/")[:3])

    def thumbnail(self, image_uri: str | None) -> Picture:
        where = self._locate(image_uri)
        if where is None:
            return PLACEHOLDER
        cache_key = f"thumb:{where[0]}/{where[1]}"
        cached = self._cache.get(cache_key)
        if cached is not None:
            return cached if isinstance(cached, Picture) else PLACEHOLDER
        full = self.image(image_uri)
        thumb = _shrink(full.body, self.thumb_px) if full.found else None
        picture = Picture(thumb, "image/jpeg", True) if thumb else PLACEHOLDER
        self._cache.put(cache_key, picture, len(picture.body) + 64)
        return picture

    def manifest(self, image_uri: str | None) -> Manifest | None:
        where = self._locate(image_uri)
        key = metadata_key(where[1]) if where else None
        data = self._get(where[0], key) if where and key else None
        if not data:
            return None
        try:
            meta = AbidMetadata.model_validate(json.loads(data))
        except (ValueError, ValidationError) as exc:
            log.info("manifest next to %s unreadable: %s", image_uri, exc)
            return None
        skus = [{"asin": asin, "name": sku.name or asin, "quantity": sku.quantity}
                for asin, sku in meta.BIN_FCSKU_DATA.items()]
        return Manifest(skus, meta.EXPECTED_QUANTITY, meta.sku_quantity_sum)


def _media_type(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    return None


def _shrink(data: bytes, px: int) -> bytes | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > 40_000_000:
                return None
            img.draft("RGB", (px, px))  # JPEG: decode at reduced scale
            small = img.convert("RGB")
            small.thumbnail((px, px))
            out = io.BytesIO()
            small.save(out, "JPEG", quality=80)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        return None

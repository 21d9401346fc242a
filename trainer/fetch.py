"""``binaudit data fetch``: download ABID images and metadata, resumably and concurrently.

Reads ``bin-images/<id>.jpg`` and ``metadata/<id>.json`` from a bucket laid out like the public
``aft-vbi-pds`` (or copies them from a local ABID-format folder) into ``OUT/images/<id>.jpg`` and
``OUT/metadata/<id>.json`` (the layout of ``../shared/data/abid-sample``, so the output can feed
``binaudit publish --source OUT``), and writes ``OUT/manifest.csv``.

A file whose size equals the source object's size is skipped, so a second run transfers nothing;
downloads go to a ``.part`` file renamed only once its size is verified.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import random
import shutil
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from core.progress import progress as progress_of
from core.s3 import open_abid_client
from core.settings import AbidSourceSettings
from schemas.abid import AbidMetadata

log = logging.getLogger(__name__)

MANIFEST_FIELDS = ("id", "image_path", "metadata_path", "image_bytes", "expected_quantity",
                   "status")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_THROTTLED = {"Throttling", "ThrottlingException", "SlowDown", "RequestLimitExceeded",
              "TooManyRequests", "RequestTimeout", "RequestTimeTooSkewed"}
_CHUNK = 1 << 16


# ---- ids (pure) ----------------------------------------------------------------------------

def parse_ids(text: str) -> list[str]:
    """``"a,b,c"`` -> ids, kept exactly as written (``00523`` and ``523`` differ)."""
    return _unique(part.strip() for part in text.split(",") if part.strip())


def id_range(spec: str, *, pad: int = 5) -> list[str]:
    """``"1-500"`` -> ``00001..00500`` (``pad=0``: ``1..500``); bounds inclusive."""
    low, sep, high = spec.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"id range must look like 1-500 (got {spec!r})")
    start, stop = int(low), int(high)
    if start > stop:
        raise ValueError(f"empty id range {spec!r}")
    return [str(n).zfill(pad) for n in range(start, stop + 1)]


def ids_from_file_list(data: dict[str, list[str]]) -> list[str]:
    """Ids of a ``file_list.json`` subset (``{"1": ["data/metadata/100313.json", ...]}``)."""
    return _unique(Path(p).stem for key in sorted(data) for p in data[key])


def _unique(ids: Any) -> list[str]:
    return list(dict.fromkeys(ids))


# ---- retry policy (pure) -------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Full-jitter exponential backoff before retry number ``attempt`` (1-based)."""
        cap = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return (rng or random).uniform(cap / 2, cap)


class ObjectMissing(Exception):
    """The source has no such object (404): listed in the summary, never retried."""


def is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx and connection problems are worth another try; other 4xx are not."""
    if isinstance(exc, ClientError):
        err, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
        return err.get("Code") in _THROTTLED or int(meta.get("HTTPStatusCode", 0)) >= 500
    return isinstance(exc, BotoConnectionError | HTTPClientError | ReadTimeoutError |
                      ResponseStreamingError | IncompleteReadError | aiohttp.ClientError |
                      ConnectionError | asyncio.TimeoutError | SizeMismatch)


class SizeMismatch(Exception):
    """The bytes received differ from the object's ContentLength (a cut connection)."""


# ---- sources -------------------------------------------------------------------------------

class ObjectSource(Protocol):
    """Where ABID objects come from (keys in the real layout: ``bin-images/<id>.jpg``)."""

    async def size(self, key: str) -> int:
        """Size of the object; raises ObjectMissing."""
        ...

    async def download(self, key: str, dest: Path) -> int:
        """Write the object to ``dest``; return bytes written; raises ObjectMissing."""
        ...


class S3Source:
    def __init__(self, client: Any, bucket: str) -> None:
        self._client, self._bucket = client, bucket

    async def size(self, key: str) -> int:
        try:
            head = await self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            raise _missing_or_same(exc, key) from exc
        return int(head["ContentLength"])

    async def download(self, key: str, dest: Path) -> int:
        try:
            resp = await self._client.get_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            raise _missing_or_same(exc, key) from exc
        written = 0
        # Read the body fully inside its context so the connection returns to the pool.
        async with resp["Body"] as body:
            with dest.open("wb") as fh:
                while chunk := await body.read(_CHUNK):
                    fh.write(chunk)
                    written += len(chunk)
        return written


def _missing_or_same(exc: ClientError, key: str) -> Exception:
    code = str(exc.response.get("Error", {}).get("Code"))
    return ObjectMissing(key) if code in _NOT_FOUND else exc


class LocalSource:
    """A local ABID-format folder (``images/`` or ``bin-images/``, ``metadata/``)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, key: str) -> Path:
        candidates = [self._root / key]
        if key.startswith("bin-images/"):
            candidates.append(self._root / "images" / key.removeprefix("bin-images/"))
        for path in candidates:
            if path.is_file():
                return path
        raise ObjectMissing(key)

    async def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    async def download(self, key: str, dest: Path) -> int:
        src = self._path(key)
        await asyncio.to_thread(shutil.copyfile, src, dest)
        return dest.stat().st_size


# ---- fetching ------------------------------------------------------------------------------

class FetchStatus(StrEnum):
    DOWNLOADED = "downloaded"  # at least one of its files was transferred
    SKIPPED = "skipped"  # both files already complete
    MISSING = "missing"  # image or metadata not in the source
    FAILED = "failed"  # gave up after retries (or a non-retryable error)


@dataclass(frozen=True)
class FetchResult:
    id: str
    status: FetchStatus
    image_path: str = ""  # relative to the output folder; "" when absent
    metadata_path: str = ""
    image_bytes: int | None = None
    expected_quantity: int | None = None
    transferred_bytes: int = 0
    error: str = ""


@dataclass(frozen=True)
class FetchSummary:
    """What a fetch did; ``missing`` and ``failed`` list ids, in request order."""

    downloaded: int
    skipped: int
    missing: tuple[str, ...]
    failed: tuple[str, ...]
    bytes: int
    manifest_path: Path

    @classmethod
    def of(cls, results: Sequence[FetchResult], manifest_path: Path) -> FetchSummary:
        def ids(status: FetchStatus) -> tuple[str, ...]:
            return tuple(r.id for r in results if r.status is status)

        return cls(downloaded=len(ids(FetchStatus.DOWNLOADED)),
                   skipped=len(ids(FetchStatus.SKIPPED)), missing=ids(FetchStatus.MISSING),
                   failed=ids(FetchStatus.FAILED),
                   bytes=sum(r.transferred_bytes for r in results), manifest_path=manifest_path)


class _Fetcher:
    def __init__(self, source: ObjectSource, out_dir: Path, retry: RetryPolicy) -> None:
        self.source, self.out_dir, self.retry = source, out_dir, retry

    async def fetch_id(self, image_id: str) -> FetchResult:
        image_rel, meta_rel = f"images/{image_id}.jpg", f"metadata/{image_id}.json"
        try:
            image_moved = await self.fetch_file(f"bin-images/{image_id}.jpg", image_rel)
            meta_moved = await self.fetch_file(f"metadata/{image_id}.json", meta_rel)
        except ObjectMissing as exc:
            log.warning("%s: %s not in the source", image_id, exc)
            return self._partial(image_id, FetchStatus.MISSING, image_rel, meta_rel, "")
        except Exception as exc:  # noqa: BLE001 - one bad id must not sink the whole run
            log.error("%s: giving up: %r", image_id, exc)
            return self._partial(image_id, FetchStatus.FAILED, image_rel, meta_rel, repr(exc))
        moved = image_moved + meta_moved
        status = FetchStatus.DOWNLOADED if moved else FetchStatus.SKIPPED
        return FetchResult(image_id, status, image_rel, meta_rel,
                           (self.out_dir / image_rel).stat().st_size,
                           _expected_quantity(self.out_dir / meta_rel), transferred_bytes=moved)

    def _partial(self, image_id: str, status: FetchStatus, image_rel: str, meta_rel: str,
                 error: str) -> FetchResult:
        image, meta = self.out_dir / image_rel, self.out_dir / meta_rel
        return FetchResult(image_id, status, image_rel if image.exists() else "",
                           meta_rel if meta.exists() else "",
                           image.stat().st_size if image.exists() else None,
                           _expected_quantity(meta) if meta.exists() else None, error=error)

    async def fetch_file(self, key: str, rel: str) -> int:
        """Bytes transferred (0 when already complete); retries transient errors."""
        dest = self.out_dir / rel
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                return await self._fetch_once(key, dest)
            except ObjectMissing:
                raise
            except Exception as exc:
                if not is_retryable(exc) or attempt == self.retry.max_attempts:
                    raise
                delay = self.retry.delay(attempt)
                log.info("%s: %r; retry %d in %.1fs", key, exc, attempt, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _fetch_once(self, key: str, dest: Path) -> int:
        size = await self.source.size(key)
        if dest.is_file() and dest.stat().st_size == size:
            return 0
        part = dest.with_name(dest.name + ".part")
        written = await self.source.download(key, part)
        if written != size:
            part.unlink(missing_ok=True)
            raise SizeMismatch(f"{key}: got {written} bytes, expected {size}")
        part.replace(dest)
        return written


def _expected_quantity(meta: Path) -> int | None:
    try:
        return AbidMetadata.from_json_bytes(meta.read_bytes()).EXPECTED_QUANTITY
    except ValueError as exc:
        log.warning("%s: unreadable metadata: %s", meta, exc)
        return None


async def fetch_abid(ids: Sequence[str], *, source: ObjectSource, out_dir: Path,
                     concurrency: int = 16, retry: RetryPolicy | None = None,
                     progress: bool = False) -> FetchSummary:
    """Fetch ``ids`` from ``source`` into ``out_dir`` (at most ``concurrency`` ids at once)
    and write ``manifest.csv``. Missing ids are listed in the summary, not raised."""
    for sub in ("images", "metadata"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    fetcher = _Fetcher(source, out_dir, retry or RetryPolicy())
    gate = asyncio.Semaphore(concurrency)
    bar = progress_of(total=len(ids), unit="img", desc="fetch", disable=not progress)
    moved = 0

    async def one(image_id: str) -> FetchResult:
        nonlocal moved
        async with gate:
            result = await fetcher.fetch_id(image_id)
        moved += result.transferred_bytes
        bar.set_postfix_str(f"{moved / 1e6:.1f} MB", refresh=False)
        bar.update(1)
        return result

    try:
        results = await asyncio.gather(*(one(i) for i in ids))
    finally:
        bar.close()
    manifest = write_manifest(out_dir / "manifest.csv", results)
    return FetchSummary.of(results, manifest)


def write_manifest(path: Path, results: Sequence[FetchResult]) -> Path:
    """``manifest.csv`` in request order, written atomically."""
    part = path.with_name(path.name + ".part")
    with part.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_FIELDS)
        for r in results:
            writer.writerow([r.id, r.image_path, r.metadata_path,
                             "" if r.image_bytes is None else r.image_bytes,
                             "" if r.expected_quantity is None else r.expected_quantity,
                             r.status.value])
    part.replace(path)
    return path


async def fetch_with_settings(cfg: AbidSourceSettings, ids: Sequence[str], *, out_dir: Path,
                              source_dir: Path | None = None,
                              progress: bool = False) -> FetchSummary:
    """Open the ABID client from settings (unless copying from ``source_dir``) and fetch."""
    retry = RetryPolicy(max_attempts=cfg.max_attempts)
    if source_dir is not None:
        return await fetch_abid(ids, source=LocalSource(source_dir), out_dir=out_dir,
                                concurrency=cfg.concurrency, retry=retry, progress=progress)
    async with AsyncExitStack() as stack:
        client = await open_abid_client(stack, cfg)
        return await fetch_abid(ids, source=S3Source(client, cfg.bucket), out_dir=out_dir,
                                concurrency=cfg.concurrency, retry=retry, progress=progress)


# ---- CLI -----------------------------------------------------------------------------------


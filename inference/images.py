"""Image fetcher: one long-lived aiobotocore client on its own event loop thread.

The Kafka loop is synchronous (kafka-python), so fetches are scheduled onto a private asyncio
loop and come back as ``concurrent.futures.Future``. A bad object (missing, empty, too big,
bucket not allowed) fails its future with an ``EventError`` (a dead letter). An infrastructure
fault (unreachable S3, throttling, credentials, permissions, a missing bucket) is reported on
the ``FaultBoard`` and retried with backoff until it is fixed or the fetcher stops: it never
becomes a dead letter. An error nobody classified is retried within a per-event budget that
ends in one ``fetch_failed`` dead letter (``inference/retries.py`` says which is which).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.s3 import open_s3_client
from core.settings import S3Settings, Settings
from inference.faults import FaultBoard
from inference.retries import Backoff, FailureClass, classify_s3_code
from schemas.events import parse_s3_uri
from schemas.records import ErrorKind, EventError

log = logging.getLogger(__name__)

S3 = "s3"  # the dependency's name on the FaultBoard and in metrics


class FetcherStopped(RuntimeError):
    """The fetcher was closed while a fetch still waited for S3 to come back."""


@dataclass(frozen=True)
class FetchPolicy:
    allowed_buckets: frozenset[str]
    max_bytes: int
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    # Rounds for an unclassified error before the event is a fetch_failed dead letter.
    fetch_attempts: int = 4

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        """The one policy every front end fetches with (allow-list, size limit, backoff)."""
        w = settings.worker
        return cls(allowed_buckets=frozenset(settings.s3.allowed_buckets),
                   max_bytes=w.max_image_bytes, backoff_initial_s=w.retry_backoff_initial_s,
                   backoff_max_s=w.retry_backoff_max_s,
                   fetch_attempts=settings.s3.fetch_attempts)


def check_uri(uri: str, policy: FetchPolicy) -> tuple[str, str]:
    """Parse ``s3://bucket/key`` and enforce the bucket allow-list (pure)."""
    try:
        bucket, key = parse_s3_uri(uri)
    except ValueError as exc:
        raise EventError(ErrorKind.INVALID_IMAGE_URI, str(exc)) from exc
    if bucket not in policy.allowed_buckets:
        raise EventError(ErrorKind.BUCKET_NOT_ALLOWED,
                         f"bucket {bucket!r} is not in the allow-list "
                         f"{sorted(policy.allowed_buckets)}")
    return bucket, key


class ImageFetcher:
    def __init__(self, cfg: S3Settings, policy: FetchPolicy,
                 faults: FaultBoard | None = None) -> None:
        self.cfg = cfg
        self.policy = policy
        self.faults = faults or FaultBoard()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None
        self._stopping = threading.Event()
        self.retries = 0  # S3 infrastructure retries so far (metrics/tests)

    @classmethod
    def from_settings(cls, settings: Settings, faults: FaultBoard | None = None) -> ImageFetcher:
        """The fetcher every front end uses; ``faults`` is shared with the pipeline."""
        return cls(settings.s3, FetchPolicy.from_settings(settings), faults)

    def __enter__(self) -> ImageFetcher:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="s3-fetch",
                                        daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(timeout=30)
        return self

    async def _open(self) -> None:
        self._stack = AsyncExitStack()
        self._client = await open_s3_client(self._stack, self.cfg)
        self._sem = asyncio.Semaphore(self.cfg.max_concurrency)

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._loop is None:
            return
        # Fetches still retrying (S3 down) are cancelled here, on their loop, rather than
        # closed half-way when the loop is (their futures then say "cancelled").
        asyncio.run_coroutine_threadsafe(_cancel_pending(), self._loop).result(timeout=30)
        if self._stack is not None:
            asyncio.run_coroutine_threadsafe(self._stack.aclose(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop.close()

    def fetch(self, uri: str) -> concurrent.futures.Future[bytes]:
        """Schedule a GET; the future holds the bytes or raises EventError/FetcherStopped."""
        try:
            bucket, key = check_uri(uri, self.policy)
        except EventError as exc:
            failed: concurrent.futures.Future[bytes] = concurrent.futures.Future()
            failed.set_exception(exc)
            return failed
        assert self._loop is not None, "ImageFetcher used outside its `with` block"
        return asyncio.run_coroutine_threadsafe(self._get(bucket, key), self._loop)

    async def _get(self, bucket: str, key: str) -> bytes:
        uri = f"s3://{bucket}/{key}"
        backoff = Backoff(self.policy.backoff_initial_s, self.policy.backoff_max_s)
        unclassified = 0
        while True:
            try:
                data = await self._get_once(bucket, key)
            except EventError:
                self.faults.clear(S3)  # S3 answered about the object itself: it works
                raise
            except Exception as exc:  # noqa: BLE001 - every other failure is classified below
                if self._stopping.is_set():
                    raise FetcherStopped(f"stopped while fetching {uri}") from exc
                self.retries += 1
                cause = _describe(exc)
                if _failure_class(exc) is FailureClass.UNCLASSIFIED:
                    unclassified += 1
                    self.faults.retried(S3)
                    if unclassified >= self.policy.fetch_attempts:
                        raise EventError(ErrorKind.FETCH_FAILED,
                                         f"{uri}: {cause} ({unclassified} attempts)") from exc
                    delay = backoff.next()
                    log.warning("S3 error for %s (%s, attempt %d of %d); retrying in %.1fs",
                                uri, cause, unclassified, self.policy.fetch_attempts, delay)
                else:
                    self.faults.report(S3, cause)
                    delay = backoff.next()
                    log.warning("S3 unavailable for %s (%s); retrying in %.1fs",
                                uri, cause, delay)
                await asyncio.sleep(delay)
                continue
            self.faults.clear(S3)
            return data

    async def _get_once(self, bucket: str, key: str) -> bytes:
        assert self._sem is not None and self._client is not None
        uri = f"s3://{bucket}/{key}"
        async with self._sem:
            try:
                resp = await self._client.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if _failure_class(exc) is FailureClass.MISSING:
                    raise EventError(ErrorKind.MISSING_OBJECT, f"{uri} does not exist") from exc
                raise
            async with resp["Body"] as body:
                size = int(resp.get("ContentLength") or 0)
                if size > self.policy.max_bytes:
                    # Never read an oversized body into memory.
                    raise EventError(ErrorKind.OBJECT_TOO_LARGE,
                                     f"{uri} is {size} bytes, limit {self.policy.max_bytes}")
                data: bytes = await body.read()
        if not data:
            raise EventError(ErrorKind.EMPTY_OBJECT, f"{uri} is empty (0 bytes)")
        return data


async def _cancel_pending() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _failure_class(exc: BaseException) -> FailureClass:
    """S3's answers by their code; no answer at all (connection, timeout, no credentials) is
    infrastructure; anything else (e.g. a body cut short) nobody classified."""
    if isinstance(exc, ClientError):
        return classify_s3_code(str(exc.response.get("Error", {}).get("Code", "")))
    if isinstance(exc, TimeoutError | BotoCoreError | OSError):
        return FailureClass.INFRASTRUCTURE
    return FailureClass.UNCLASSIFIED


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code')}: {err.get('Message')}"
    return f"{type(exc).__name__}: {exc}"

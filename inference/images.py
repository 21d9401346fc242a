"""Image fetcher: one long-lived aiobotocore client on its own event loop thread.

The Kafka loop is synchronous (kafka-python), so fetches are scheduled onto a private asyncio
loop and come back as ``concurrent.futures.Future``. A bad object (missing, empty, too big,
bucket not allowed) fails its future with an ``EventError`` (a dead letter). An infrastructure
fault (unreachable S3, throttling, credentials, a missing bucket, or a refusal or 5xx that
the rest of the bucket shares) is reported on the ``FaultBoard`` and retried with backoff
until it is fixed or the fetcher stops: it never becomes a dead letter. A refusal (403, KMS)
or an unclassified error for one key while other keys of the bucket are served is the
object's: retried within a per-event budget that ends in one ``access_denied`` or
``fetch_failed`` dead letter (``inference/retries.py`` and ``inference/buckets.py`` say which
is which).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.s3 import open_s3_client
from core.settings import S3Settings, Settings
from inference.buckets import BucketHealth
from inference.faults import FaultBoard
from inference.retries import (
    Backoff,
    BucketView,
    FailureClass,
    Verdict,
    classify_s3_code,
    judge_failure,
)
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
    # Rounds for a refusal of one object before the event is an access_denied dead letter.
    object_denied_attempts: int = 3
    # This many keys of a bucket failing with 5xx/unclassified errors at once: an outage.
    outage_min_keys: int = 3
    # How long a key's failure counts towards outage_min_keys.
    bucket_window_s: float = 30.0
    # A key's budget ends no sooner than this after its first failure judged its own.
    object_failure_min_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        """The one policy every front end fetches with (allow-list, size limit, backoff)."""
        inference, s3 = settings.inference, settings.s3
        return cls(allowed_buckets=frozenset(s3.allowed_buckets),
                   max_bytes=settings.inference.max_image_bytes,
                   backoff_initial_s=inference.retry_backoff_initial_s,
                   backoff_max_s=inference.retry_backoff_max_s, fetch_attempts=s3.fetch_attempts,
                   object_denied_attempts=s3.object_denied_attempts,
                   outage_min_keys=s3.outage_min_keys, bucket_window_s=s3.bucket_window_s,
                   object_failure_min_s=s3.object_failure_min_s)

    def budget(self, cls: FailureClass) -> int:
        return self.object_denied_attempts if cls is FailureClass.DENIED else self.fetch_attempts


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
        self._health = BucketHealth(policy.bucket_window_s)  # fetch-loop thread only
        self._probing: dict[str, asyncio.Lock] = {}
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
        strikes = 0  # consecutive attempts judged the object's own failure
        own_since = 0.0  # when the first of them failed
        while True:
            started = time.monotonic()
            try:
                data = await self._get_once(bucket, key)
            except EventError:
                self._health.forget(bucket, key)
                self.faults.clear(S3)  # S3 answered about the object itself: it works
                raise
            except Exception as exc:  # noqa: BLE001 - every other failure is classified below
                if self._stopping.is_set():
                    raise FetcherStopped(f"stopped while fetching {uri}") from exc
                self.retries += 1
                cls, cause = _failure_class(exc), _describe(exc)
                if strikes == 0:
                    own_since = time.monotonic()
                verdict = await self._judge(bucket, key, cls, started=started, strikes=strikes,
                                            own_since=own_since)
                if verdict is Verdict.GIVE_UP:
                    self._health.forget(bucket, key)
                    self.faults.retried(S3)
                    raise _object_error(cls, uri, cause, strikes + 1, bucket) from exc
                delay = backoff.next()
                if verdict is Verdict.OBJECT:
                    strikes += 1
                    if strikes >= self.policy.budget(cls) - 1:
                        # The attempt that may end the budget waits until it can.
                        settled = own_since + self.policy.object_failure_min_s
                        delay = max(delay, settled - time.monotonic())
                    self.faults.retried(S3)  # one object's problem: counted, no alert
                    log.warning("S3 error for %s while other objects of %r are served (%s, "
                                "attempt %d of %d); retrying in %.1fs", uri, bucket, cause,
                                strikes, self.policy.budget(cls), delay)
                else:
                    strikes = 0  # an outage says nothing about the object: start again
                    self.faults.report(S3, cause)
                    log.warning("S3 unavailable for %s (%s); retrying in %.1fs",
                                uri, cause, delay)
                await asyncio.sleep(delay)
                continue
            self._health.served(bucket, key, started=started)
            self.faults.clear(S3)
            return data

    async def _judge(self, bucket: str, key: str, cls: FailureClass, *, started: float,
                     strikes: int, own_since: float) -> Verdict:
        """Outage or the object's own failure: ask the rest of the bucket."""
        self._health.failed(bucket, key, cls, at=time.monotonic())
        if cls in (FailureClass.DENIED, FailureClass.UNCLASSIFIED):
            view = self._health.view(bucket, key, cls, since=started, now=time.monotonic())
            if not view.others_served:
                await self._probe(bucket, key, since=started)
                view = self._health.view(bucket, key, cls, since=started, now=time.monotonic())
        else:
            view = BucketView(others_served=False, failing_keys=0)
        return judge_failure(cls, view, strikes=strikes, budget=self.policy.budget(cls),
                             outage_min_keys=self.policy.outage_min_keys,
                             failing_for_s=time.monotonic() - own_since,
                             settle_s=self.policy.object_failure_min_s)

    async def _probe(self, bucket: str, exclude: str, *, since: float) -> None:
        """Ask S3 for another key of ``bucket`` (HEAD of one recently served, else the first
        one listed) and record the answer; keys failing together share one probe."""
        lock = self._probing.setdefault(bucket, asyncio.Lock())
        async with lock:
            view = self._health.view(bucket, exclude, FailureClass.DENIED, since=since,
                                     now=time.monotonic())
            if view.others_served or not self._health.needs_probe(bucket, since=since):
                return
            started = time.monotonic()
            try:
                other = self._health.probe_key(bucket, exclude) or await self._list_other(
                    bucket, exclude)
                if other is not None:
                    assert self._sem is not None
                    async with self._sem:
                        await self._client.head_object(Bucket=bucket, Key=other)
                    self._health.served(bucket, other, started=started)
                    return
            except Exception as exc:  # noqa: BLE001 - a failed probe is an answer too
                log.debug("probe of bucket %r failed: %s", bucket, _describe(exc))
            self._health.probe_failed(bucket, started=started)

    async def _list_other(self, bucket: str, exclude: str) -> str | None:
        """A key of ``bucket`` other than ``exclude`` (needs s3:ListBucket), or None."""
        assert self._sem is not None
        async with self._sem:
            page = await self._client.list_objects_v2(Bucket=bucket, MaxKeys=2)
        keys = [str(o["Key"]) for o in page.get("Contents", []) if o["Key"] != exclude]
        return keys[0] if keys else None

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


def _object_error(cls: FailureClass, uri: str, cause: str, attempts: int,
                  bucket: str) -> EventError:
    """The dead letter of an object whose own failure spent its budget."""
    kind = ErrorKind.ACCESS_DENIED if cls is FailureClass.DENIED else ErrorKind.FETCH_FAILED
    return EventError(kind, f"{uri}: {cause} ({attempts} attempts while other objects of "
                            f"bucket {bucket!r} were served)")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code')}: {err.get('Message')}"
    return f"{type(exc).__name__}: {exc}"

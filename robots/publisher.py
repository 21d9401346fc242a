"""The robot simulator behind ``binaudit publish``: upload bin images to S3 in the real ABID
layout, then publish one BinEvent per image to Kafka, optionally mixed with bad inputs.

Deterministic by construction: event ``i`` is captured at ``start_time + i * interval_s`` and
its id is derived from (bin id, captured_at), so re-running publishes the same event ids; the
fault mix is drawn from a seeded RNG. ``build_events`` is the Kafka-free core the worker's
tests and benchmarks use.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import ValidationError

from core.producer import EventProducer, ensure_topic
from core.progress import progress as progress_of
from core.s3 import ensure_bucket, open_s3_client
from core.settings import Settings
from robots.manifests import ManifestPerturber, WrongManifests, truth_file, with_wrong_manifests
from schemas.abid import AbidMetadata
from schemas.events import (
    BinEvent,
    describe_validation_error,
    encode_event,
    make_event_id,
    parse_json_object,
)
from schemas.records import ErrorKind, EventError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "abid-sample"
DEFAULT_START_TIME = datetime(2026, 1, 1, tzinfo=UTC)
FAULT_NAMES = ("malformed_json", "schema_violation", "missing_image", "corrupt_jpeg",
               "oversized_image", "not_an_image")
# Objects shared by every fault record of a kind (uploaded once per run).
FAULT_KEYS = {
    "corrupt_jpeg": "bin-images/fault-corrupt_jpeg.jpg",
    "oversized_image": "bin-images/fault-oversized_image.png",
    "not_an_image": "bin-images/fault-not_an_image.jpg",
}
OVERSIZED_SIDE = 12_000  # 144 Mpx: above the worker's default max_image_pixels (40M)


def image_key(image_id: str) -> str:
    return f"bin-images/{image_id}.jpg"


def metadata_key(image_id: str) -> str:
    return f"metadata/{image_id}.json"


@dataclass(frozen=True)
class Sample:
    """One ABID image: its id (exactly as its key), metadata, and where its bytes are."""

    id: str
    metadata: AbidMetadata
    metadata_bytes: bytes
    image_path: Path | None  # None: the image already lives in the source bucket


def load_samples(source_dir: Path) -> list[Sample]:
    """Read an ABID-format folder (``images/`` or ``bin-images/``, ``metadata/``).

    Order: ``labels.csv`` order if present (the sample's curated order), else sorted ids.
    """
    image_dir = next((source_dir / d for d in ("images", "bin-images")
                      if (source_dir / d).is_dir()), None)
    if image_dir is None or not (source_dir / "metadata").is_dir():
        raise FileNotFoundError(f"{source_dir} has no images/ (or bin-images/) and metadata/")
    ids = _ordered_ids(source_dir)
    samples = []
    for image_id in ids:
        image, meta = image_dir / f"{image_id}.jpg", source_dir / "metadata" / f"{image_id}.json"
        if not (image.is_file() and meta.is_file()):
            log.warning("skipping %s: image or metadata missing in %s", image_id, source_dir)
            continue
        raw = meta.read_bytes()
        sample = _sample_or_none(image_id, raw, image, where=str(meta))
        if sample is not None:
            samples.append(sample)
    return samples


def read_metadata(raw: bytes) -> AbidMetadata:
    """One ``metadata/<id>.json`` → AbidMetadata, or an EventError (invalid_json,
    schema_violation) saying why not: the same strict JSON rules as a Kafka record."""
    obj = parse_json_object(raw, what="metadata")
    try:
        return AbidMetadata.model_validate(obj)
    except ValidationError as exc:
        raise EventError(ErrorKind.SCHEMA_VIOLATION, describe_validation_error(exc)) from exc


def _sample_or_none(image_id: str, raw: bytes, image: Path | None, *,
                    where: str) -> Sample | None:
    # One unreadable metadata file skips its sample, like a missing image does.
    try:
        return Sample(image_id, read_metadata(raw), raw, image)
    except EventError as exc:
        log.warning("skipping %s: %s is not usable ABID metadata (%s): %s", image_id, where,
                    exc.kind, exc)
        return None


def _ordered_ids(source_dir: Path) -> list[str]:
    labels = source_dir / "labels.csv"
    if labels.is_file():
        with labels.open(newline="") as fh:
            return [Path(row["image"]).stem for row in csv.DictReader(fh)]
    return sorted(p.stem for p in (source_dir / "metadata").glob("*.json"))


@dataclass(frozen=True)
class EventPlan:
    """How events are laid out in time and order (pure parameters of ``iter_events``)."""

    bucket: str
    count: int | None = None
    loop: bool = False
    start_time: datetime = DEFAULT_START_TIME
    interval_s: float = 1.0
    shuffle: bool = False
    seed: int = 0
    with_metadata: bool = False
    robot_id: str | None = "sim-robot-1"
    station_id: str | None = "sim-station-1"


def iter_events(samples: Sequence[Sample], plan: EventPlan) -> Iterator[BinEvent]:
    """Event ``i`` for the ``i``-th sample of the (shuffled per pass) order; endless if
    ``plan.loop`` and no ``plan.count``."""
    if not samples:
        return
    limit = plan.count if plan.count is not None else (None if plan.loop else len(samples))
    if not plan.loop and limit is not None:
        limit = min(limit, len(samples))
    i, rounds = 0, 0
    while limit is None or i < limit:
        order = list(samples)
        if plan.shuffle:
            random.Random(f"{plan.seed}:order:{rounds}").shuffle(order)
        for sample in order:
            if limit is not None and i >= limit:
                return
            yield _event(sample, i, plan)
            i += 1
        rounds += 1


def _event(sample: Sample, i: int, plan: EventPlan) -> BinEvent:
    try:
        captured = plan.start_time.astimezone(UTC) + timedelta(seconds=i * plan.interval_s)
    except OverflowError as exc:  # the CLI catches ValueError: a message, not a traceback
        raise ValueError(f"captured_at of event {i} ({plan.start_time.isoformat()} + "
                         f"{i} x {plan.interval_s}s) is outside years 1-9999") from exc
    return BinEvent(
        event_id=make_event_id(sample.id, captured), bin_id=sample.id, captured_at=captured,
        image_uri=f"s3://{plan.bucket}/{image_key(sample.id)}", manifest=sample.metadata,
        metadata_uri=(f"s3://{plan.bucket}/{metadata_key(sample.id)}"
                      if plan.with_metadata else None),
        expected_quantity=sample.metadata.EXPECTED_QUANTITY,
        robot_id=plan.robot_id, station_id=plan.station_id,
    )


def build_events(source: Path | Sequence[Sample], *, bucket: str = "binaudit-images",
                 **plan: Any) -> list[BinEvent]:
    """BinEvents for a sample folder (or loaded samples), without Kafka or S3.

    Keyword arguments are :class:`EventPlan` fields (count, start_time, interval_s, ...);
    with ``loop=True`` a ``count`` is required.
    """
    samples = load_samples(source) if isinstance(source, Path) else source
    event_plan = EventPlan(bucket=bucket, **plan)
    if event_plan.loop and event_plan.count is None:
        raise ValueError("build_events(loop=True) needs a count")
    return list(iter_events(samples, event_plan))


# ---- faults -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    """One Kafka record to send."""

    key: str
    value: bytes
    timestamp_ms: int | None  # None: the producer's clock (captured_at before 1970)
    event_id: str | None
    fault: str | None = None


class FaultInjector:
    """Seeded choice of which events are followed by a bad record, and of which kind."""

    def __init__(self, faults: Sequence[str], rate: float, seed: int) -> None:
        unknown = sorted(set(faults) - set(FAULT_NAMES))
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; choose from {', '.join(FAULT_NAMES)}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be within [0, 1] (got {rate})")
        self._faults = tuple(faults)
        self._rate = rate
        self._rng = random.Random(f"{seed}:faults")

    def draw(self) -> str | None:
        """The fault to add after the next event, if any."""
        if not self._faults or self._rng.random() >= self._rate:
            return None
        return self._faults[self._rng.randrange(len(self._faults))]


def fault_message(name: str, *, index: int, base: BinEvent, bucket: str) -> Message:
    """A bad record derived from the valid event ``base`` (an extra record, not a replacement)."""
    bin_id = f"fault-{name}-{index:06d}"
    event_id = make_event_id(bin_id, base.captured_at)
    uri = {"missing_image": f"s3://{bucket}/bin-images/{bin_id}-never-uploaded.jpg",
           **{k: f"s3://{bucket}/{key}" for k, key in FAULT_KEYS.items()}}.get(name, base.image_uri)
    event = base.model_copy(update={"bin_id": bin_id, "event_id": event_id, "image_uri": uri,
                                    "manifest": None, "metadata_uri": None})
    value = encode_event(event)
    if name == "malformed_json":
        return Message(bin_id, value[: len(value) // 2], record_timestamp_ms(base), None, name)
    if name == "schema_violation":
        value = value.replace(f'"expected_quantity":{base.expected_quantity}'.encode(),
                              b'"expected_quantity":-3')
    return Message(bin_id, value, record_timestamp_ms(base), event_id, name)


def record_timestamp_ms(event: BinEvent) -> int | None:
    """The Kafka record timestamp of ``event``: its capture time, or None (the producer's
    clock) where Kafka has none for it: a record timestamp must be >= 0, i.e. from 1970 on
    (captured_at itself may be any time of years 1-9999)."""
    stamp = event.timestamp_ms
    return stamp if stamp >= 0 else None


def fault_objects(samples: Sequence[Sample]) -> dict[str, bytes]:
    """The objects the image faults point at, keyed by S3 key."""
    jpeg = next((s.image_path.read_bytes() for s in samples if s.image_path is not None), None)
    objects = {FAULT_KEYS["not_an_image"]: b"this is plain text, not a JPEG\n" * 64,
               FAULT_KEYS["oversized_image"]: _oversized_png()}
    if jpeg is not None:
        objects[FAULT_KEYS["corrupt_jpeg"]] = jpeg[: len(jpeg) // 2]
    return objects


def _oversized_png() -> bytes:
    # A 1-bit blank image compresses to ~18 KB: tiny object, huge pixel count.
    buf = io.BytesIO()
    Image.new("1", (OVERSIZED_SIDE, OVERSIZED_SIDE)).save(buf, format="PNG")
    return buf.getvalue()


def iter_messages(events: Iterator[BinEvent], injector: FaultInjector,
                  bucket: str) -> Iterator[Message]:
    """Each event, followed (sometimes) by a fault record."""
    for i, event in enumerate(events):
        yield Message(event.bin_id, encode_event(event), record_timestamp_ms(event),
                      event.event_id)
        fault = injector.draw()
        if fault is not None:
            yield fault_message(fault, index=i, base=event, bucket=bucket)


# ---- S3 ------------------------------------------------------------------------------------

@dataclass
class UploadStats:
    uploaded: int = 0
    skipped: int = 0
    bytes: int = 0


async def upload_objects(client: Any, bucket: str, objects: dict[str, Path | bytes], *,
                         concurrency: int, progress: bool = False) -> UploadStats:
    """Put each object unless one of the same size is already there (re-runs are cheap)."""
    stats, gate = UploadStats(), asyncio.Semaphore(concurrency)
    bar = progress_of(total=len(objects), unit="obj", desc="upload", disable=not progress)

    async def one(key: str, body: Path | bytes) -> None:
        data = body.read_bytes() if isinstance(body, Path) else body
        async with gate:
            if await _remote_size(client, bucket, key) == len(data):
                stats.skipped += 1
            else:
                await client.put_object(Bucket=bucket, Key=key, Body=data)
                stats.uploaded += 1
                stats.bytes += len(data)
        bar.update(1)

    try:
        await asyncio.gather(*(one(k, b) for k, b in objects.items()))
    finally:
        bar.close()
    return stats


async def _remote_size(client: Any, bucket: str, key: str) -> int | None:
    try:
        head = await client.head_object(Bucket=bucket, Key=key)
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise
    return int(head["ContentLength"])


async def load_samples_from_bucket(client: Any, bucket: str) -> list[Sample]:
    """Samples whose images already live in ``bucket`` (``metadata/<id>.json`` listed)."""
    keys: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket, Prefix="metadata/"):
        keys.extend(o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".json"))
    samples = []
    for key in sorted(keys):
        resp = await client.get_object(Bucket=bucket, Key=key)
        async with resp["Body"] as body:
            raw = await body.read()
        sample = _sample_or_none(Path(key).stem, raw, None, where=f"s3://{bucket}/{key}")
        if sample is not None:
            samples.append(sample)
    return samples


# ---- orchestration -------------------------------------------------------------------------

@dataclass(frozen=True)
class PublishOptions:
    """Everything ``binaudit publish`` can be told (CLI flags map 1:1)."""

    source: Path | None = DEFAULT_SOURCE
    source_bucket: str | None = None  # images already in this bucket: publish, upload nothing
    topic: str | None = None  # default settings.kafka.topic
    bucket: str | None = None  # default settings.s3.bucket
    plan: EventPlan = field(default_factory=lambda: EventPlan(bucket=""))
    rate: float | None = None  # events/s; None: as fast as possible
    faults: tuple[str, ...] = ()
    fault_rate: float = 0.1
    wrong_manifests: WrongManifests = field(default_factory=WrongManifests)
    create_topic: bool = True
    progress: bool = True


@dataclass(frozen=True)
class PublishedRecord:
    key: str
    event_id: str | None
    partition: int
    offset: int


@dataclass
class PublishReport:
    """What one ``publish`` run sent (valid events and faults, in send order)."""

    topic: str
    bucket: str
    published: int = 0
    valid: int = 0
    keys: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    faults: dict[str, list[PublishedRecord]] = field(default_factory=dict)
    uploaded: int = 0
    upload_skipped: int = 0
    interrupted: bool = False
    wrong_manifests: dict[str, int] = field(default_factory=dict)  # kind -> events
    truth_path: Path | None = None

    @property
    def fault_count(self) -> int:
        return sum(len(v) for v in self.faults.values())


class PublishError(RuntimeError):
    """Kafka refused records (after the producer's own retries)."""


def publish(settings: Settings, options: PublishOptions) -> PublishReport:
    """Upload the images, then publish the events; returns what was sent."""
    bucket = options.bucket or settings.s3.bucket
    topic = options.topic or settings.kafka.topic
    plan = replace(options.plan, bucket=options.source_bucket or bucket)
    injector = FaultInjector(options.faults, options.fault_rate, plan.seed)  # validates early
    samples, stats = asyncio.run(_prepare_s3(settings, options, bucket, plan))
    if not samples:
        raise FileNotFoundError("no samples to publish")
    if options.create_topic:
        ensure_topic(settings.kafka, topic, oldest_timestamp_ms=max(0, _ms(plan.start_time)))
    report = PublishReport(topic=topic, bucket=plan.bucket, uploaded=stats.uploaded,
                           upload_skipped=stats.skipped)
    wrong = options.wrong_manifests
    perturber = ManifestPerturber(wrong, plan.seed,
                                  [s.metadata.EXPECTED_QUANTITY for s in samples])
    with truth_file(wrong.truth_path) as truth:
        events = with_wrong_manifests(iter_events(samples, plan), perturber, truth)
        _send_all(settings, iter_messages(events, injector, bucket), report, rate=options.rate,
                  progress=options.progress, total=_expected_total(len(samples), plan))
    report.wrong_manifests, report.truth_path = dict(perturber.perturbed), wrong.truth_path
    log.info("published %d records to %s (%d valid, %d faults)", report.published, topic,
             report.valid, report.fault_count)
    return report


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _expected_total(n_samples: int, plan: EventPlan) -> int | None:
    if plan.count is not None:
        return plan.count if plan.loop else min(plan.count, n_samples)
    return None if plan.loop else n_samples


async def _prepare_s3(settings: Settings, options: PublishOptions, bucket: str,
                      plan: EventPlan) -> tuple[list[Sample], UploadStats]:
    async with AsyncExitStack() as stack:
        client = await open_s3_client(stack, settings.s3)
        if options.source_bucket:
            samples = await load_samples_from_bucket(client, options.source_bucket)
            objects: dict[str, Path | bytes] = {}
        else:
            if options.source is None:
                raise ValueError("publish needs a source folder or a source bucket")
            samples = load_samples(options.source)
            used = _used_samples(samples, plan)
            objects = {image_key(s.id): s.image_path for s in used if s.image_path}
            if plan.with_metadata:
                objects.update({metadata_key(s.id): s.metadata_bytes for s in used})
        if options.faults:
            objects.update(fault_objects(samples))
        if not objects:
            return samples, UploadStats()
        await ensure_bucket(client, bucket)
        stats = await upload_objects(client, bucket, objects,
                                     concurrency=settings.s3.max_concurrency,
                                     progress=options.progress)
        return samples, stats


def _used_samples(samples: list[Sample], plan: EventPlan) -> list[Sample]:
    # A short run (--count below the sample size) uploads only the images it refers to.
    total = _expected_total(len(samples), plan)
    if total is None or total >= len(samples):
        return samples
    ids = {e.bin_id for e in iter_events(samples, plan)}
    return [s for s in samples if s.id in ids]


def _send_all(settings: Settings, messages: Iterator[Message], report: PublishReport, *,
              rate: float | None, progress: bool, total: int | None) -> None:
    failures: list[BaseException] = []
    pending: list[tuple[Message, Any]] = []
    bar = progress_of(total=total, unit="ev", desc=f"publish {report.topic}",
                      disable=not progress)
    started = time.monotonic()
    try:
        with EventProducer(settings.kafka) as producer:
            for n, msg in enumerate(messages):
                if rate:
                    # Schedule against the start, so slow sends do not accumulate drift.
                    time.sleep(max(0.0, started + n / rate - time.monotonic()))
                future = producer.send(report.topic, key=msg.key, value=msg.value,
                                       timestamp_ms=msg.timestamp_ms)
                future.add_errback(failures.append)
                _record(report, msg)
                if msg.fault:
                    pending.append((msg, future))
                bar.update(1)
    except KeyboardInterrupt:
        # Ctrl-C ends a --loop run; the producer was flushed when its block exited.
        report.interrupted = True
    finally:
        bar.close()
    if failures:
        raise PublishError(f"{len(failures)} record(s) not delivered: {failures[0]!r}")
    for msg, future in pending:
        meta = future.get(timeout=30)
        report.faults.setdefault(msg.fault or "", []).append(
            PublishedRecord(msg.key, msg.event_id, meta.partition, meta.offset))


def _record(report: PublishReport, msg: Message) -> None:
    report.published += 1
    report.keys.append(msg.key)
    if msg.fault is None:
        report.valid += 1
        if msg.event_id:
            report.event_ids.append(msg.event_id)


# ---- CLI -----------------------------------------------------------------------------------



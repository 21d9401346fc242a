"""The bin event contract (v1): what robots publish to Kafka and the worker consumes.

Pure: no I/O. ``decode_event`` is the one entry point for untrusted bytes; every way it can
refuse a record is an :class:`~schemas.records.EventError` with an :class:`ErrorKind`, which
the worker turns into a dead letter.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from schemas.abid import AbidMetadata
from schemas.records import ErrorKind, EventError

SCHEMA_VERSION: Final = 1
DEFAULT_MAX_EVENT_BYTES = 256 * 1024
MAX_EXPECTED_QUANTITY = 1000
MAX_S3_KEY_BYTES = 1024
# A v1 event nests 5 levels (event → manifest → BIN_FCSKU_DATA → SKU → measurement); deeper
# values are refused before validation, so no later repr/dump/serialisation can hit a limit.
MAX_JSON_DEPTH = 32

# Fixed namespace: event ids derived from (bin id, capture time) are stable across runs/hosts.
EVENT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:binaudit:bin-event:v1")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# The same rules for JSON Schema consumers (the Python validators below are authoritative).
_ID_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]+$"
_S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^/\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"  # noqa: E501


def _no_control_chars(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(f"must not contain control characters (got {value!r})")
    return value


def _exact_version(value: Any) -> Any:
    # Literal[1] alone would accept True and 1.0.
    if type(value) is not int:
        raise ValueError(f"schema_version must be the integer {SCHEMA_VERSION} (got {value!r})")
    return value


def _to_utc(value: datetime) -> datetime:
    # 9999-12-31T23:00-05:00 is a valid aware datetime whose UTC instant is past year 9999:
    # astimezone raises OverflowError, which pydantic would not turn into a validation error
    # (and the worker, re-reading the same offset, would die on every restart).
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{value.isoformat()} is outside the representable range in UTC "
                         "(years 1-9999)") from exc


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into (bucket, key); raise ValueError naming what is wrong."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, sep, key = uri[len("s3://"):].partition("/")
    _check_bucket(bucket, uri)
    if not sep or not key:
        raise ValueError(f"S3 URI has an empty key: {uri!r}")
    _check_key(key, uri)
    return bucket, key


def _check_bucket(bucket: str, uri: str) -> None:
    if not _BUCKET.match(bucket) or ".." in bucket or ".-" in bucket or "-." in bucket:
        raise ValueError(f"invalid S3 bucket name {bucket!r} in {uri!r}")
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        return
    raise ValueError(f"S3 bucket name must not be an IP address: {uri!r}")


def _check_key(key: str, uri: str) -> None:
    if _CONTROL.search(key):
        raise ValueError(f"S3 key contains control characters: {uri!r}")
    if key.startswith("/"):
        raise ValueError(f"S3 key must not start with '/': {uri!r}")
    # Keys are not paths, but anything that later maps keys onto a filesystem must not escape.
    if ".." in key.replace("\\", "/").split("/"):
        raise ValueError(f"S3 key must not contain '..' segments: {uri!r}")
    if len(key.encode("utf-8")) > MAX_S3_KEY_BYTES:
        raise ValueError(f"S3 key longer than {MAX_S3_KEY_BYTES} bytes: {uri[:80]!r}...")


def _valid_s3_uri(uri: str) -> str:
    parse_s3_uri(uri)
    return uri


def make_event_id(bin_id: str, captured_at: datetime) -> str:
    """Deterministic event id: uuid5 over the bin id and the ISO UTC capture time."""
    if captured_at.tzinfo is None or captured_at.utcoffset() is None:
        raise ValueError(f"captured_at must be timezone-aware (got {captured_at!r})")
    stamp = _to_utc(captured_at).isoformat(timespec="microseconds")
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{bin_id}\n{stamp}"))


Identifier = Annotated[
    str,
    Field(min_length=1, max_length=128, json_schema_extra={"pattern": _ID_PATTERN}),
    AfterValidator(_no_control_chars),
]
S3Uri = Annotated[
    str,
    Field(json_schema_extra={"pattern": _S3_URI_PATTERN}),
    AfterValidator(_valid_s3_uri),
]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


class BinEvent(BaseModel):
    """One bin photographed by a robot: where the image is and what the bin should hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Annotated[Literal[1], BeforeValidator(_exact_version)] = SCHEMA_VERSION
    # Optional on input: derived from (bin_id, captured_at) when the producer gives none.
    event_id: Identifier = Field(default="", validate_default=False)
    bin_id: Identifier
    captured_at: UtcDatetime
    image_uri: S3Uri
    manifest: AbidMetadata | None = None
    metadata_uri: S3Uri | None = None
    expected_quantity: StrictInt = Field(ge=0, le=MAX_EXPECTED_QUANTITY)
    robot_id: Identifier | None = None
    station_id: Identifier | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_event_id_is_absent(cls, data: Any) -> Any:
        if isinstance(data, dict) and "event_id" in data and data["event_id"] is None:
            return {k: v for k, v in data.items() if k != "event_id"}
        return data

    @model_validator(mode="after")
    def _derive_and_cross_check(self) -> BinEvent:
        if "event_id" not in self.model_fields_set:
            # Frozen model: set the derived value once, during validation.
            object.__setattr__(self, "event_id", make_event_id(self.bin_id, self.captured_at))
        if self.manifest is not None and self.expected_quantity != self.manifest.EXPECTED_QUANTITY:
            raise ValueError(
                f"manifest.EXPECTED_QUANTITY={self.manifest.EXPECTED_QUANTITY} does not equal "
                f"expected_quantity={self.expected_quantity}"
            )
        return self

    @property
    def image_location(self) -> tuple[str, str]:
        """(bucket, key) of the image."""
        return parse_s3_uri(self.image_uri)

    @property
    def timestamp_ms(self) -> int:
        """captured_at in epoch milliseconds (the Kafka record timestamp)."""
        return int(self.captured_at.timestamp() * 1000)


def encode_event(ev: BinEvent) -> bytes:
    """Compact JSON bytes of ``ev`` (the manifest in ABID's own shape)."""
    return ev.model_dump_json(exclude_computed_fields=True).encode("utf-8")


def decode_event(raw: bytes, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> BinEvent:
    """Parse untrusted bytes into a BinEvent or raise :class:`EventError` saying why not."""
    if len(raw) > max_bytes:
        raise EventError(ErrorKind.MESSAGE_TOO_LARGE,
                         f"message is {len(raw)} bytes, more than the limit of {max_bytes}")
    obj = parse_json_object(raw)
    version = obj.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or version != SCHEMA_VERSION:
        raise EventError(ErrorKind.UNSUPPORTED_SCHEMA_VERSION,
                         f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    try:
        return BinEvent.model_validate(obj)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A present but malformed image_uri (path tricks included) has its own kind.
        bad_uri = any(_field(e) == "image_uri" and e["type"] != "missing" for e in errors)
        kind = ErrorKind.INVALID_IMAGE_URI if bad_uri else ErrorKind.SCHEMA_VIOLATION
        raise EventError(kind, describe_validation_error(exc)) from exc


def unexpected_error(exc: BaseException) -> EventError:
    """The EventError for an exception nobody anticipated while handling one record: a
    validation problem is ``schema_violation``; anything else ``internal_error`` naming the
    exception's class (the record becomes a dead letter, the process goes on)."""
    if isinstance(exc, EventError):
        return exc
    if isinstance(exc, ValidationError):
        return EventError(ErrorKind.SCHEMA_VIOLATION, describe_validation_error(exc))
    detail = str(exc)[:500] or "(no message)"
    return EventError(ErrorKind.INTERNAL_ERROR, f"{type(exc).__name__}: {detail}")


def parse_json_object(raw: bytes, *, what: str = "message") -> dict[str, Any]:
    """Strict JSON: UTF-8, a top-level object, finite numbers, no lone surrogates, at most
    ``MAX_JSON_DEPTH`` deep. Anything else is an ``invalid_json`` EventError, never another
    exception (``what`` names the input in the message: "message", "body"...)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(ErrorKind.INVALID_JSON, f"{what} is not UTF-8: {exc}") from exc
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except ValueError as exc:  # also int strings over sys.get_int_max_str_digits()
        raise EventError(ErrorKind.INVALID_JSON, f"{what} is not JSON: {exc}") from exc
    except RecursionError as exc:
        # e.g. b"[" * 100_000: a few hundred KB under the size limit, and json would crash the
        # worker's loop on every restart: a poison pill.
        raise EventError(ErrorKind.INVALID_JSON, f"{what} is JSON nested too deeply") from exc
    if not isinstance(obj, dict):
        raise EventError(ErrorKind.INVALID_JSON,
                         f"{what} is JSON {type(obj).__name__}, not an object")
    _check_depth_and_text(obj, what)
    return obj


def _check_depth_and_text(obj: dict[str, Any], what: str) -> None:
    # Iterative on purpose: recursion is exactly what a nesting bomb attacks.
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise EventError(ErrorKind.INVALID_JSON,
                             f"{what} is JSON nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, str):
            _check_text(value, what)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key, what)
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def _check_text(value: str, what: str) -> None:
    # "\ud800" is valid JSON but no UTF-8 text: such a value could be read but never written
    # back (encode_event, a JSON log line, Postgres).
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EventError(ErrorKind.INVALID_JSON,
                         f"{what} has a string with a lone surrogate escape: {exc.reason}") from exc


def _reject_constant(name: str) -> Any:
    # NaN/Infinity are not JSON; Python's parser would accept them.
    raise ValueError(f"non-standard JSON constant {name}")


def _finite_float(literal: str) -> float:
    # 1e999 is valid JSON syntax but parses to inf: as unusable as the Infinity constant.
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number {literal[:40]} is out of the float range")
    return value


def _field(error: ErrorDetails) -> str:
    return ".".join(str(part) for part in error["loc"]) or "<event>"


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the field and the offending value."""
    parts = []
    for err in exc.errors(include_url=False):
        try:
            value = repr(err.get("input"))
        except RecursionError:  # a deeply nested (but parseable) value
            value = "<nested too deeply to show>"
        if len(value) > 120:
            value = value[:117] + "..."
        msg = err["msg"]
        parts.append(f"{_field(err)}: {msg}" if err["loc"] == () else
                     f"{_field(err)}: {msg} (value {value})")
    return "; ".join(parts)

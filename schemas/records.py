"""What the worker writes: verdicts, discrepancies and dead letters (field names = DB columns,
see ``core/tables.py``), plus the error vocabulary shared by the event decoder and the
worker's dead-letter path."""

from __future__ import annotations

from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# Dead-letter payloads are kept for diagnosis, not replay: the first 64 KiB is enough.
MAX_DEAD_LETTER_PAYLOAD = 64 * 1024


class ErrorKind(StrEnum):
    """Why a record became a dead letter (stored in ``dead_letters.error_kind``)."""

    INVALID_JSON = "invalid_json"
    MESSAGE_TOO_LARGE = "message_too_large"
    SCHEMA_VIOLATION = "schema_violation"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    INVALID_IMAGE_URI = "invalid_image_uri"
    BUCKET_NOT_ALLOWED = "bucket_not_allowed"
    MISSING_OBJECT = "missing_object"
    EMPTY_OBJECT = "empty_object"
    OBJECT_TOO_LARGE = "object_too_large"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED_IMAGE = "truncated_image"
    IMAGE_TOO_MANY_PIXELS = "image_too_many_pixels"
    DECODE_ERROR = "decode_error"
    # S3 kept failing for this object with an error nobody classified (e.g. a 500 for one key
    # only) after the per-event budget; re-drive it once fixed (`binaudit dlq redrive`).
    FETCH_FAILED = "fetch_failed"
    # Not about the event: the model failed on a batch (kept for rows written before model
    # failures became infrastructure faults: today they are retried, never stored), or the
    # pipeline is stopping (left uncommitted).
    MODEL_ERROR = "model_error"
    SHUTTING_DOWN = "shutting_down"
    # S3 refused this one object (bucket policy, KMS key, or a missing key read without
    # s3:ListBucket) while other objects of the same bucket are served: not an outage.
    ACCESS_DENIED = "access_denied"
    # Another record already used this event id with a different payload: nothing would be
    # written for it (the verdict is keyed by event id), so it must not be silently committed.
    DUPLICATE_EVENT_ID = "duplicate_event_id"
    # Anything unexpected while handling one record (a bug, an input nobody anticipated): the
    # message names the exception class; the worker keeps running.
    INTERNAL_ERROR = "internal_error"


class VerdictStatus(StrEnum):
    """Outcome of comparing the model's count with the recorded quantity."""

    MATCH = "match"
    MISMATCH = "mismatch"
    UNCERTAIN = "uncertain"
    UNSUPPORTED = "unsupported"


class EventError(Exception):
    """A record that can never be processed (it becomes a dead letter; the stream goes on)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"EventError({self.kind.value!r}, {self.message!r})"


_RECORD = ConfigDict(frozen=True, extra="forbid")


class AuditVerdict(BaseModel):
    """One row of ``audit_results``: the model's count for one event."""

    model_config = _RECORD

    event_id: str
    bin_id: str
    image_uri: str
    captured_at: AwareDatetime
    station_id: str | None = None
    robot_id: str | None = None
    expected_quantity: int = Field(ge=0)
    predicted_quantity: int | None = Field(default=None, ge=0)
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    # Calibrated distribution over the model's counts (temperature from the model card).
    class_probabilities: dict[str, float] | None = None
    # Calibrated P(manifest's count) and 1 - that; None when the count is not a model class.
    p_expected: float | None = Field(default=None, ge=0.0, le=1.0)
    discrepancy_score: float | None = Field(default=None, ge=0.0, le=1.0)
    status: VerdictStatus
    model_version: str
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class DiscrepancyRecord(BaseModel):
    """One row of ``discrepancies``: a mismatch queued for human review."""

    model_config = _RECORD

    event_id: str
    model_version: str
    bin_id: str
    expected_quantity: int = Field(ge=0)
    predicted_quantity: int = Field(ge=0)
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    p_expected: float | None = Field(default=None, ge=0.0, le=1.0)
    # Orders the auditors' queue (highest first).
    discrepancy_score: float | None = Field(default=None, ge=0.0, le=1.0)


class DeadLetterRecord(BaseModel):
    """One row of ``dead_letters``: a record that could not be processed, and why."""

    # Payloads are arbitrary bytes (maybe not UTF-8): base64 in JSON.
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64",
                              val_json_bytes="base64")

    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    key: str | None = None
    event_id: str | None = None
    payload: bytes | None = Field(default=None, max_length=MAX_DEAD_LETTER_PAYLOAD)
    payload_truncated: bool = False
    error_kind: ErrorKind
    message: str

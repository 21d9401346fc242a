"""The event contract and record types of binaudit (pure pydantic, no I/O)."""

from schemas.abid import AbidMetadata, Measurement, SkuRecord
from schemas.events import (
    DEFAULT_MAX_EVENT_BYTES,
    SCHEMA_VERSION,
    BinEvent,
    decode_event,
    encode_event,
    make_event_id,
    parse_s3_uri,
)
from schemas.records import (
    AuditVerdict,
    DeadLetterRecord,
    DiscrepancyRecord,
    ErrorKind,
    EventError,
    VerdictStatus,
)

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "SCHEMA_VERSION",
    "AbidMetadata",
    "AuditVerdict",
    "BinEvent",
    "DeadLetterRecord",
    "DiscrepancyRecord",
    "ErrorKind",
    "EventError",
    "Measurement",
    "SkuRecord",
    "VerdictStatus",
    "decode_event",
    "encode_event",
    "make_event_id",
    "parse_s3_uri",
]

"""The model endpoint's contract, pure: what ``binaudit serve`` accepts and answers.

No sockets and no event loop here (``serve/server.py`` is the aiohttp adapter): content types,
request parsing, the error → HTTP status table, response bodies and the endpoint's metrics.

    POST /invocations                 (with ``Authorization: Bearer <token>`` when
                                        ``serve.auth_token`` is set; otherwise 401)
      image/jpeg | image/png | application/x-image   the image bytes
          → {count, confidence, probabilities, scores, model_version, class_counts}
      application/json   a BinEvent, or {"image_uri": "s3://...", "expected_quantity": N}
          → the same + {image_uri, expected_quantity, verdict, event_id, bin_id}

Errors are ``{"error": kind, "message": ...}``; ``kind`` is an :class:`ErrorKind` value for
problems with the request's content (the worker's dead-letter vocabulary) or one of the HTTP
kinds below. A missing S3 object is 404 ``missing_object``; a bucket outside the allow-list is
403 ``bucket_not_allowed``. Whatever the body, a JSON request that cannot be used is a 4xx with
its kind (400 ``invalid_json``, 422 ``schema_violation``...), never a 500.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from inference.compare import Prediction, Verdict
from inference.metrics import LATENCY_BUCKETS, PipelineMetrics
from schemas.events import (
    MAX_EXPECTED_QUANTITY,
    BinEvent,
    S3Uri,
    decode_event,
    describe_validation_error,
    parse_json_object,
)
from schemas.records import ErrorKind, EventError

IMAGE_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png", "application/x-image"})
JSON_TYPE = "application/json"
# Bin id given to the short {"image_uri", "expected_quantity"} form (it names no bin).
ADHOC_BIN_ID = "http-request"


class HttpKind(StrEnum):
    """Error kinds of the HTTP layer itself (the request's content was not looked at)."""

    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"  # 415
    PAYLOAD_TOO_LARGE = "payload_too_large"  # 413
    NOT_READY = "not_ready"  # 503: model still loading, or shutting down
    OVERLOADED = "overloaded"  # 503: max_queue requests already in flight
    UNAVAILABLE = "unavailable"  # 503: inference failed or the pipeline is stopping
    TIMEOUT = "timeout"  # 504: no answer within request_timeout_s (e.g. S3 down)
    UNAUTHORIZED = "unauthorized"  # 401: serve.auth_token set, no or wrong bearer token
    REQUEST_TIMEOUT = "request_timeout"  # 408: body not received within body_read_timeout_s
    NOT_FOUND = "not_found"  # 404: no such route
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    INTERNAL_ERROR = "internal_error"  # 500


class HttpError(Exception):
    """A refusal: status, kind and message become the JSON error body."""

    def __init__(self, status: int, kind: str, message: str, *,
                 retry_after_s: int | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s
        # The connection is in an unknown state (a body half read): do not keep it alive.
        self.close = close

    def body(self) -> dict[str, str]:
        return {"error": self.kind, "message": self.message}

    def headers(self) -> dict[str, str]:
        headers = {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="binaudit"'
        return headers


# Content problems: the request was well-formed HTTP but its content cannot be used.
_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INVALID_JSON: 400,
    ErrorKind.MESSAGE_TOO_LARGE: 413,
    ErrorKind.SCHEMA_VIOLATION: 422,
    ErrorKind.UNSUPPORTED_SCHEMA_VERSION: 422,
    ErrorKind.INVALID_IMAGE_URI: 422,
    ErrorKind.BUCKET_NOT_ALLOWED: 403,
    ErrorKind.MISSING_OBJECT: 404,
    ErrorKind.EMPTY_OBJECT: 422,
    ErrorKind.OBJECT_TOO_LARGE: 413,
    ErrorKind.NOT_AN_IMAGE: 422,
    ErrorKind.TRUNCATED_IMAGE: 422,
    ErrorKind.IMAGE_TOO_MANY_PIXELS: 422,
    ErrorKind.DECODE_ERROR: 422,
    ErrorKind.MODEL_ERROR: 500,
    ErrorKind.SHUTTING_DOWN: 503,
    ErrorKind.ACCESS_DENIED: 403,
    ErrorKind.DUPLICATE_EVENT_ID: 409,
    ErrorKind.INTERNAL_ERROR: 500,
}


def check_bearer(authorization: str | None, token: str) -> None:
    """Refuse (401) unless ``authorization`` is ``Bearer <token>``. Constant-time compare:
    the answer's timing says nothing about how much of a guess was right."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    # compare_digest on bytes: a str with non-ASCII characters would raise TypeError.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8")):
        raise HttpError(401, HttpKind.UNAUTHORIZED,
                        "missing or wrong bearer token (Authorization: Bearer <token>)")


def http_error(err: EventError, *, from_s3: bool) -> HttpError:
    """The HTTP answer for an EventError raised by parsing, fetching or decoding."""
    status = _STATUS.get(err.kind, 422)
    if from_s3 and err.kind is ErrorKind.OBJECT_TOO_LARGE:
        status = 422  # the request itself was small; the object it names is not usable
    return HttpError(status, err.kind.value, err.message)


class RequestKind(StrEnum):
    IMAGE = "image"
    EVENT = "event"


def classify(content_type: str) -> RequestKind:
    """``image/*`` bytes or a JSON event; anything else is 415. Parameters are ignored."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in IMAGE_TYPES:
        return RequestKind.IMAGE
    if media == JSON_TYPE:
        return RequestKind.EVENT
    accepted = ", ".join(sorted(IMAGE_TYPES | {JSON_TYPE}))
    raise HttpError(415, HttpKind.UNSUPPORTED_MEDIA_TYPE,
                    f"content type {media or '(none)'!r} is not supported; send one of {accepted}")


class UriRequest(BaseModel):
    """The short JSON form: an image in S3 and the quantity the bin should hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_uri: S3Uri
    expected_quantity: StrictInt = Field(ge=0, le=MAX_EXPECTED_QUANTITY)


@dataclass(frozen=True)
class EventRequest:
    event: BinEvent
    full_event: bool  # a whole BinEvent (echo its ids) or the short form


def parse_event_request(raw: bytes, *, now: datetime) -> EventRequest:
    """A JSON body → the BinEvent to fetch and judge, or an EventError saying why not.

    A body with ``bin_id`` or ``captured_at`` is a BinEvent (``decode_event``, the worker's own
    decoder); otherwise it is the short form, stamped with ``now``.
    """
    # The worker's strict parser: a nesting bomb, NaN or 1e999 is invalid_json, not a 500.
    obj = parse_json_object(raw, what="body")
    if "bin_id" in obj or "captured_at" in obj:
        return EventRequest(decode_event(raw, max_bytes=len(raw)), full_event=True)
    try:
        short = UriRequest.model_validate(obj)
    except ValidationError as exc:
        bad_uri = any(e["loc"][:1] == ("image_uri",) and e["type"] != "missing"
                      for e in exc.errors(include_url=False))
        kind = ErrorKind.INVALID_IMAGE_URI if bad_uri else ErrorKind.SCHEMA_VIOLATION
        raise EventError(kind, describe_validation_error(exc)) from exc
    event = BinEvent(bin_id=ADHOC_BIN_ID, captured_at=now, image_uri=short.image_uri,
                     expected_quantity=short.expected_quantity)
    return EventRequest(event, full_event=False)


def prediction_body(prediction: Prediction, *, model_version: str,
                    class_counts: list[int]) -> dict[str, Any]:
    """What an image request gets: the count, the calibrated distribution and the reference
    endpoint's raw scores (logits)."""
    return {
        "count": prediction.count,
        "confidence": prediction.confidence,
        "probabilities": prediction.probabilities,
        "scores": list(prediction.scores),
        "class_counts": list(class_counts),
        "model_version": model_version,
    }


def event_body(prediction: Prediction, request: EventRequest, verdict: Verdict, *,
               model_version: str, class_counts: list[int]) -> dict[str, Any]:
    """An event request's answer: the prediction plus the worker's verdict, the calibrated
    P(manifest count) and the discrepancy score."""
    body = prediction_body(prediction, model_version=model_version, class_counts=class_counts)
    event = request.event
    body.update(image_uri=event.image_uri, expected_quantity=event.expected_quantity,
                verdict=verdict.status.value, p_expected=verdict.p_expected,
                discrepancy_score=verdict.discrepancy_score)
    if request.full_event:
        body.update(event_id=event.event_id, bin_id=event.bin_id)
    return body


class ServeMetrics(PipelineMetrics):
    """The pipeline's batch sizes and stage latencies plus the HTTP layer's own series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        r = self.registry
        self.request_seconds = Histogram(
            "binaudit_http_request_seconds", "HTTP request latency by route and status",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejections = Counter("binaudit_http_rejections_total",
                                  "Requests answered with an error, by reason", ["reason"],
                                  registry=r)
        self.in_flight = Gauge("binaudit_http_in_flight",
                               "Invocations admitted and not yet answered", registry=r)
        self.ready = Gauge("binaudit_model_ready", "1 once the model is loaded and warm",
                           registry=r)

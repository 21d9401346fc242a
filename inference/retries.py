"""Which failures are whose (pure): the event's, the infrastructure's, or nobody knows yet.

* The event's: a missing key, an oversized or empty object (``EventError``, a dead letter).
* The infrastructure's: connection failures, throttling, credentials, permissions, a missing
  bucket, a wrong region. Retried with backoff until fixed; never a dead letter, because one
  IAM or bucket mistake would otherwise dead-letter (and commit) the whole topic.
* Unclassified (e.g. a 500 that persists for one key): retried within a per-event budget that
  ends in one ``fetch_failed`` dead letter, so a poison event cannot stall its partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from inference.positions import Position

MAX_RETRYABLE_ATTEMPTS = 3

# A key that is not there (GetObject's own code; HEAD answers a bare 404).
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# Not about the object: who we are, what we may do, where the bucket is, how busy S3 is.
# Note: without s3:ListBucket, AWS answers AccessDenied (not NoSuchKey) for a missing key;
# grant it (README, Security) so that a missing object is a dead letter, not an outage.
INFRA_CODES = frozenset({
    "AccessDenied", "403", "AllAccessDisabled", "AccountProblem", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
    "InvalidSecurity", "RequestTimeTooSkewed", "NoSuchBucket", "PermanentRedirect",
    "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "SlowDown",
    "ServiceUnavailable", "503", "Throttling", "ThrottlingException", "RequestTimeout",
    "RequestLimitExceeded",
})


class FailureClass(StrEnum):
    MISSING = "missing"
    INFRASTRUCTURE = "infrastructure"
    UNCLASSIFIED = "unclassified"


def classify_s3_code(code: str) -> FailureClass:
    """The class of an S3 error code (``ClientError.response["Error"]["Code"]``)."""
    if code in MISSING_CODES:
        return FailureClass.MISSING
    if code in INFRA_CODES:
        return FailureClass.INFRASTRUCTURE
    return FailureClass.UNCLASSIFIED


@dataclass
class Backoff:
    """Exponential backoff between ``initial_s`` and ``max_s``."""

    initial_s: float
    max_s: float
    _next: float | None = None

    def next(self) -> float:
        delay = self.initial_s if self._next is None else self._next
        self._next = min(delay * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = None


@dataclass
class RetryBudget:
    """Counts failed attempts per record (worker and replay: outcomes that were not the
    record's fault, e.g. the pipeline stopping); the budget ends in one error row."""

    max_attempts: int = MAX_RETRYABLE_ATTEMPTS
    _attempts: dict[Position, int] = field(default_factory=dict)

    def failed(self, position: Position) -> int:
        """Record one more failed attempt and return how many there have been."""
        attempts = self._attempts.get(position, 0) + 1
        self._attempts[position] = attempts
        return attempts

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts

    def forget(self, position: Position) -> None:
        """The record is finished (written or dead-lettered): drop its count."""
        self._attempts.pop(position, None)

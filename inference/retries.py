"""Which failures are whose (pure): the event's, the infrastructure's, or nobody knows yet.

* The event's: a missing key, an oversized or empty object (``EventError``, a dead letter).
* The infrastructure's: connection failures, throttling, credentials, a missing bucket, a
  wrong region. Retried with backoff until fixed; never a dead letter, because one IAM or
  bucket mistake would otherwise dead-letter (and commit) the whole topic.
* Denied (AccessDenied/403, KMS errors): the same answer comes from a revoked IAM policy (the
  whole bucket) and from a bucket policy or KMS key that covers one object. Which one it is
  depends on the rest of the bucket (``inference/buckets.py``): while other keys are served,
  it is the object's (a per-event budget, then an ``access_denied`` dead letter); otherwise an
  outage, retried until fixed.
* Unclassified (e.g. a 500): the same, with a breadth rule: one key failing while others are
  served ends in one ``fetch_failed`` dead letter after its budget; several keys failing at
  once is an outage, whatever else still works.
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
    "AllAccessDisabled", "AccountProblem", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
    "InvalidSecurity", "RequestTimeTooSkewed", "NoSuchBucket", "PermanentRedirect",
    "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "SlowDown",
    "ServiceUnavailable", "503", "Throttling", "ThrottlingException", "RequestTimeout",
    "RequestLimitExceeded",
})


# Refusals that may be about one object (a bucket policy or ACL on the key, a KMS key the
# worker may not use, a missing key read without s3:ListBucket) or about everything (an IAM
# policy revoked): the rest of the bucket decides.
DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "InvalidObjectState"})
# KMS errors that S3 passes through for SSE-KMS objects (``KMS.DisabledException`` ...).
KMS_PREFIX = "KMS."


class FailureClass(StrEnum):
    MISSING = "missing"
    INFRASTRUCTURE = "infrastructure"
    DENIED = "denied"
    UNCLASSIFIED = "unclassified"


def classify_s3_code(code: str) -> FailureClass:
    """The class of an S3 error code (``ClientError.response["Error"]["Code"]``)."""
    if code in MISSING_CODES:
        return FailureClass.MISSING
    if code in DENIED_CODES or code.startswith(KMS_PREFIX):
        return FailureClass.DENIED
    if code in INFRA_CODES:
        return FailureClass.INFRASTRUCTURE
    return FailureClass.UNCLASSIFIED


class Verdict(StrEnum):
    """What one failed GET means for its event."""

    OUTAGE = "outage"  # report the fault, retry with backoff, never a dead letter
    OBJECT = "object"  # the object's own problem: one more attempt of its budget
    GIVE_UP = "give_up"  # the object's budget is spent: a dead letter


@dataclass(frozen=True)
class BucketView:
    """What the fetcher knows about the rest of the bucket when one key's GET fails."""

    # Another key of the bucket was served by a request that started after this attempt did
    # (so the bucket and our credentials worked while this key failed).
    others_served: bool
    # Distinct keys of the bucket that failed with this failure's class recently, this one
    # included.
    failing_keys: int


def judge_failure(cls: FailureClass, view: BucketView, *, strikes: int, budget: int,
                  outage_min_keys: int, failing_for_s: float = 0.0,
                  settle_s: float = 0.0) -> Verdict:
    """Outage or the object's own failure, for one failed attempt (pure).

    ``strikes`` counts this key's consecutive earlier attempts judged ``OBJECT``; ``budget``
    is how many such attempts end in a dead letter. Infrastructure classes are always an
    outage; a denied or unclassified error is the object's only while other keys of the bucket
    are served, and (unclassified) while fewer than ``outage_min_keys`` keys fail at once.
    The budget ends only once the object has failed as its own for ``settle_s``
    (``failing_for_s``): the other keys of a burst fail within it, and turn it into an outage.
    """
    if cls in (FailureClass.MISSING, FailureClass.INFRASTRUCTURE):
        return Verdict.OUTAGE if cls is FailureClass.INFRASTRUCTURE else Verdict.GIVE_UP
    if not view.others_served:
        return Verdict.OUTAGE
    if cls is FailureClass.UNCLASSIFIED and view.failing_keys >= outage_min_keys:
        return Verdict.OUTAGE
    spent = strikes + 1 >= budget and failing_for_s >= settle_s
    return Verdict.GIVE_UP if spent else Verdict.OBJECT


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


# Messages of allocation failures from torch (CPU and CUDA) and ONNX Runtime.
_OOM_MESSAGES = ("out of memory", "failed to allocate memory", "can't allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether a forward pass failed for lack of memory (smaller batches may fit): torch's
    ``OutOfMemoryError``, a ``MemoryError``, or an error whose message says so."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    message = str(exc).lower()
    return any(m in message for m in _OOM_MESSAGES)

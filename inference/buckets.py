"""What the fetcher has recently seen of each bucket (pure, no I/O, caller's clock).

A failed GET alone cannot tell one object's problem from an outage: a bucket policy denying
one key and an IAM policy revoked for all answer the same 403, a poison key and a failing S3
front end the same 500. The rest of the bucket can: ``judge_failure`` (``retries.py``) asks
whether other keys were served meanwhile and how many keys fail at once, and this record
answers. Only the fetcher's event-loop thread touches it, so it needs no lock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from inference.retries import BucketView, FailureClass

# Recent successes kept per bucket: enough to find a key other than the failing one.
_SERVED_KEPT = 8


@dataclass
class _Bucket:
    # key -> start time of its latest successful request, newest last
    served: OrderedDict[str, float] = field(default_factory=OrderedDict)
    # (class, key) -> time of its latest failure
    failing: dict[tuple[FailureClass, str], float] = field(default_factory=dict)
    # start of the latest probe that S3 refused too
    probe_refused: float = float("-inf")


@dataclass
class BucketHealth:
    """Per-bucket record of recent successes and failing keys."""

    window_s: float = 30.0
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def _get(self, bucket: str) -> _Bucket:
        return self._buckets.setdefault(bucket, _Bucket())

    def served(self, bucket: str, key: str, *, started: float) -> None:
        """A request for ``key`` that started at ``started`` succeeded."""
        b = self._get(bucket)
        b.served.pop(key, None)
        b.served[key] = started
        while len(b.served) > _SERVED_KEPT:
            b.served.popitem(last=False)
        self.forget(bucket, key)

    def failed(self, bucket: str, key: str, cls: FailureClass, *, at: float) -> None:
        self._get(bucket).failing[(cls, key)] = at

    def forget(self, bucket: str, key: str) -> None:
        """``key`` is finished (served or dead-lettered): it no longer counts as failing."""
        b = self._get(bucket)
        for cls in FailureClass:
            b.failing.pop((cls, key), None)

    def view(self, bucket: str, key: str, cls: FailureClass, *, since: float,
             now: float) -> BucketView:
        """The bucket as seen by ``key``'s attempt that started at ``since``."""
        b = self._get(bucket)
        others = any(k != key and t >= since for k, t in b.served.items())
        recent = now - self.window_s
        failing = sum(1 for (c, _), t in b.failing.items() if c is cls and t >= recent)
        return BucketView(others_served=others, failing_keys=failing)

    def probe_failed(self, bucket: str, *, started: float) -> None:
        """A probe of the bucket (another key) that started at ``started`` failed too."""
        b = self._get(bucket)
        b.probe_refused = max(b.probe_refused, started)

    def needs_probe(self, bucket: str, *, since: float) -> bool:
        """No probe started after ``since`` has failed yet: asking S3 again tells something
        (many keys failing together share one probe's answer)."""
        return self._get(bucket).probe_refused < since

    def probe_key(self, bucket: str, exclude: str) -> str | None:
        """The most recently served key other than ``exclude`` (to ask S3 whether the bucket
        still serves), or None if nothing else was served yet."""
        for key in reversed(self._get(bucket).served):
            if key != exclude:
                return key
        return None

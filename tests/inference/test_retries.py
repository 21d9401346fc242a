"""Whose failure is it: the event's, the infrastructure's, or nobody's known (pure)."""

from __future__ import annotations

import pytest
import torch

from inference.buckets import BucketHealth
from inference.faults import FaultBoard
from inference.retries import (
    Backoff,
    BucketView,
    FailureClass,
    Verdict,
    classify_s3_code,
    is_out_of_memory,
    judge_failure,
)


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "ExpiredToken",
                                  "SignatureDoesNotMatch", "NoSuchBucket", "SlowDown", "503",
                                  "PermanentRedirect", "AllAccessDisabled"])
def test_credential_bucket_and_throttling_are_infrastructure(code: str) -> None:
    assert classify_s3_code(code) is FailureClass.INFRASTRUCTURE


@pytest.mark.parametrize("code", ["AccessDenied", "403", "Forbidden", "KMS.DisabledException",
                                  "KMS.AccessDeniedException", "KMS.NotFoundException"])
def test_refusals_that_may_concern_one_object_are_denied(code: str) -> None:
    assert classify_s3_code(code) is FailureClass.DENIED


D, U, INF = FailureClass.DENIED, FailureClass.UNCLASSIFIED, FailureClass.INFRASTRUCTURE
OUT, OBJ, GIVE = Verdict.OUTAGE, Verdict.OBJECT, Verdict.GIVE_UP


@pytest.mark.parametrize(("cls", "served", "failing", "strikes", "expected"), [
    # refused everywhere (IAM policy revoked, credentials expired): an outage, however long
    (D, False, 1, 0, OUT), (D, False, 1, 99, OUT), (D, False, 50, 0, OUT),
    # refused for one key while others are served: its budget (3), then a dead letter
    (D, True, 1, 0, OBJ), (D, True, 1, 1, OBJ), (D, True, 1, 2, GIVE),
    # several refused keys while others are served: each is its object's (bucket policy)
    (D, True, 10, 2, GIVE),
    # 5xx for one key while others are served: its budget (4), then fetch_failed
    (U, True, 1, 0, OBJ), (U, True, 2, 2, OBJ), (U, True, 1, 3, GIVE),
    # 5xx across several keys, or nothing else served: an outage
    (U, True, 3, 3, OUT), (U, True, 20, 0, OUT), (U, False, 1, 3, OUT),
    # infrastructure is never the object's
    (INF, True, 1, 99, OUT), (INF, False, 1, 0, OUT),
])
def test_judge_failure(cls: FailureClass, served: bool, failing: int, strikes: int,
                       expected: Verdict) -> None:
    budget = 3 if cls is D else 4
    view = BucketView(others_served=served, failing_keys=failing)
    assert judge_failure(cls, view, strikes=strikes, budget=budget,
                         outage_min_keys=3) is expected


def test_bucket_health_counts_only_other_keys_served_after_the_attempt_began() -> None:
    h = BucketHealth(window_s=30)
    h.served("b", "good", started=10.0)
    h.failed("b", "bad", D, at=12.0)
    assert not h.view("b", "bad", D, since=11.0, now=12.0).others_served  # served before
    h.served("b", "bad", started=13.0)  # its own success is no evidence about others
    h.failed("b", "bad", D, at=14.0)
    assert not h.view("b", "bad", D, since=12.5, now=14.0).others_served
    h.served("b", "good", started=12.5)
    assert h.view("b", "bad", D, since=12.5, now=14.0).others_served
    assert not h.view("other", "bad", D, since=0, now=14.0).others_served
    assert h.probe_key("b", exclude="good") == "bad" and h.probe_key("b", "bad") == "good"
    assert h.probe_key("empty", "x") is None


def test_bucket_health_counts_failing_keys_per_class_within_the_window() -> None:
    h = BucketHealth(window_s=30)
    for i, at in enumerate((0.0, 50.0, 55.0)):
        h.failed("b", f"k{i}", U, at=at)
    h.failed("b", "d", D, at=55.0)
    assert h.view("b", "k2", U, since=0, now=60.0).failing_keys == 2  # k0 is too old
    h.forget("b", "k1")
    assert h.view("b", "k2", U, since=0, now=60.0).failing_keys == 1
    h.served("b", "k2", started=58.0)
    assert h.view("b", "k2", U, since=0, now=60.0).failing_keys == 0
    assert h.view("b", "d", D, since=0, now=60.0).failing_keys == 1


def test_a_failed_probe_answers_for_attempts_that_began_before_it() -> None:
    h = BucketHealth()
    assert h.needs_probe("b", since=5.0)
    h.probe_failed("b", started=6.0)
    assert not h.needs_probe("b", since=5.0) and h.needs_probe("b", since=7.0)


@pytest.mark.parametrize(("exc", "oom"), [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: can't allocate "
                  "memory: you tried to allocate 123 bytes. Error code 12 (Cannot allocate "
                  "memory)"), True),
    (MemoryError(), True),
    (RuntimeError("Failed to allocate memory for requested buffer of size 1"), True),
    (RuntimeError("injected model fault (flag exists)"), False),
    (ValueError("shape mismatch"), False),
])
def test_out_of_memory_is_recognised(exc: Exception, oom: bool) -> None:
    assert is_out_of_memory(exc) is oom


@pytest.mark.parametrize("code", ["NoSuchKey", "404", "NotFound"])
def test_a_missing_key_is_the_events(code: str) -> None:
    assert classify_s3_code(code) is FailureClass.MISSING


@pytest.mark.parametrize("code", ["InternalError", "500", "SomethingNew", ""])
def test_anything_else_is_unclassified(code: str) -> None:
    assert classify_s3_code(code) is FailureClass.UNCLASSIFIED


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5


def test_fault_board_keeps_the_outage_start_and_counts_retries() -> None:
    board = FaultBoard()
    board.report("s3", "AccessDenied: first")
    since = board.active()["s3"].since
    board.report("s3", "AccessDenied: second")
    assert board.active()["s3"].since == since
    assert board.active()["s3"].cause == "AccessDenied: second"
    board.clear("s3")
    assert board.active() == {} and board.retries() == {"s3": 2}


@pytest.mark.parametrize(("failing_for_s", "expected"), [(0.2, OBJ), (4.9, OBJ), (5.0, GIVE)])
def test_a_budget_ends_only_once_the_object_has_failed_long_enough(
        failing_for_s: float, expected: Verdict) -> None:
    """A burst across keys needs a moment to show: the first key to fail must not spend its
    budget (fast retries) before the others have failed too."""
    view = BucketView(others_served=True, failing_keys=1)
    for cls in (D, U):
        assert judge_failure(cls, view, strikes=5, budget=3, outage_min_keys=3,
                             failing_for_s=failing_for_s, settle_s=5.0) is expected

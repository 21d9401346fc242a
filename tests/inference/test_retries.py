"""Whose failure is it: the event's, the infrastructure's, or nobody's known (pure)."""

from __future__ import annotations

import pytest

from inference.faults import FaultBoard
from inference.retries import Backoff, FailureClass, classify_s3_code


@pytest.mark.parametrize("code", ["AccessDenied", "403", "InvalidAccessKeyId", "ExpiredToken",
                                  "SignatureDoesNotMatch", "NoSuchBucket", "SlowDown", "503",
                                  "PermanentRedirect", "AllAccessDisabled"])
def test_permission_credential_bucket_and_throttling_are_infrastructure(code: str) -> None:
    assert classify_s3_code(code) is FailureClass.INFRASTRUCTURE


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

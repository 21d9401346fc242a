"""The worker's liveness, readiness and dependency alert (pure: no worker, a real registry)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from inference.faults import FaultBoard
from worker.health import WorkerHealth
from worker.metrics import WorkerMetrics


def _health(stall_s: float = 60.0) -> tuple[WorkerHealth, CollectorRegistry]:
    registry = CollectorRegistry()
    return WorkerHealth(WorkerMetrics(registry), stall_s), registry


def test_not_healthy_or_ready_before_start_then_both() -> None:
    health, _ = _health()
    assert not health.healthy() and not health.ready()
    health.started = True
    assert health.healthy() and health.ready()
    health.stopping = True
    assert health.healthy() and not health.ready()


def test_a_loop_that_stopped_turning_is_unhealthy() -> None:
    health, _ = _health(stall_s=0.05)
    health.started = True
    health._last_turn -= 1.0  # the loop last turned a second ago
    health.committed()
    assert not health.healthy()
    health.turned()
    assert health.healthy()


def test_a_backlog_without_commits_is_unhealthy_no_backlog_is_fine() -> None:
    health, _ = _health(stall_s=0.05)
    health.started = True
    health._last_progress -= 1.0
    health.turned()
    health.backlog(12)  # lag, and no commit for a second
    assert not health.healthy()
    health.backlog(0)  # nothing to commit is not a stall
    assert health.healthy()


def test_the_alert_metric_log_and_readiness_follow_the_fault_board(
        caplog: pytest.LogCaptureFixture) -> None:
    health, registry = _health()
    health.started = True
    board = FaultBoard()
    caplog.set_level(logging.INFO)
    board.report("s3", "AccessDenied: Access Denied")
    assert set(health.watch(board)) == {"s3"}
    assert registry.get_sample_value("binaudit_dependency_down", {"dependency": "s3"}) == 1
    assert registry.get_sample_value("binaudit_dependency_down", {"dependency": "model"}) == 0
    assert registry.get_sample_value("binaudit_infra_retries_total", {"dependency": "s3"}) == 1
    assert "ALERT s3 failing: AccessDenied: Access Denied" in caplog.text
    assert not health.ready()
    board.clear("s3")
    assert health.watch(board) == {}
    assert registry.get_sample_value("binaudit_dependency_down", {"dependency": "s3"}) == 0
    assert registry.get_sample_value("binaudit_dependency_outages_total",
                                     {"dependency": "s3"}) == 1
    assert "s3 recovered" in caplog.text and health.ready()


def test_paused_on_a_known_fault_is_alive_a_stall_without_one_is_not() -> None:
    health, _ = _health(stall_s=0.05)
    health.started = True
    health._last_progress -= 1.0  # no commit for a second...
    health.turned()
    health.backlog(12)  # ...with a backlog
    health.postgres_ok(False, held=True)  # because Postgres is down and the batch is held
    assert health.healthy() and health.known_faults() == ["postgres"]
    health.postgres_ok(True)
    assert not health.healthy()  # no fault explains it: a real stall
    board = FaultBoard()
    board.report("s3", "AccessDenied")
    health.watch(board)
    assert health.healthy()  # the S3 alert explains the pause
    health._last_turn -= 1.0
    assert not health.healthy()  # a loop that stopped turning is never alive


def test_readiness_names_postgres_and_kafka() -> None:
    health, _ = _health()
    health.started = True
    assert health.not_ready() == []
    health.postgres_ok(False)  # a failed ping with nothing held: not ready, still alive
    health.kafka_ok(False)
    health.coordinator(False)
    assert health.not_ready() == ["postgres", "kafka coordinator", "kafka commit"]
    assert health.healthy() and not health.ready()
    health.postgres_ok(True)
    health.kafka_ok(True)
    health.coordinator(True)
    assert health.ready()

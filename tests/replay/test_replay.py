"""`binaudit replay`: pure window/offset/report logic, and a backtest against real Kafka,
Postgres and moto S3 after the production worker processed the same topic.

The services test runs in its own throwaway database (migrated to head), so other test
sessions truncating the shared database cannot pull rows from under it.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from binaudit.cli import app
from core.producer import EventProducer
from core.settings import Settings
from core.timewindow import WindowRequest, derive_run_id, parse_offsets, resolve_bounds
from replay.backtest import Replay, ReplayOptions
from replay.report import (
    ProductionRow,
    ResultRow,
    backtest_metrics,
    compare_with_production,
    scope_suffix,
)
from robots.publisher import EventPlan, PublishOptions, publish
from worker.app import Worker

# ---- pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    ("7", 7), ("0", 0), ("0:5", {0: 5}), ("0:5, 2:9", {0: 5, 2: 9}),
])
def test_parse_offsets(spec: str, expected: Any) -> None:
    assert parse_offsets(spec) == expected


@pytest.mark.parametrize("spec", ["-1", "a", "0:x", "0:-3", "1:2:3"])
def test_parse_offsets_refuses(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_offsets(spec)


def test_window_from_cli_refuses_both_kinds_and_empty_windows() -> None:
    with pytest.raises(ValueError, match="not both"):
        WindowRequest.from_cli(from_="2026-01-01", from_offset="3")
    with pytest.raises(ValueError, match="not both"):
        WindowRequest.from_cli(to="2026-01-01", to_offset="3")
    with pytest.raises(ValueError, match="not after"):
        WindowRequest.from_cli(from_="2026-01-02", to="2026-01-01")
    naive = WindowRequest.from_cli(from_="2026-01-01T00:00:00", to="2026-01-01T02:00:00+01:00")
    assert naive.from_time == datetime(2026, 1, 1, tzinfo=UTC)
    assert naive.to_time == datetime(2026, 1, 1, 1, tzinfo=UTC)


BEGIN = {0: 0, 1: 10, 2: 0}
END = {0: 100, 1: 50, 2: 0}


@pytest.mark.parametrize(("request_", "at_start", "at_stop", "expected"), [
    (WindowRequest(), {}, {}, {0: (0, 100), 1: (10, 50), 2: (0, 0)}),
    # times: a partition with no record at/after the time starts (or stops) at its end
    (WindowRequest(from_time=datetime(2026, 1, 1, tzinfo=UTC),
                   to_time=datetime(2026, 1, 2, tzinfo=UTC)),
     {0: 20, 1: None, 2: None}, {0: 60, 1: None, 2: None},
     {0: (20, 60), 1: (50, 50), 2: (0, 0)}),
    # one offset for all; the end never passes the end offsets taken at start
    (WindowRequest(from_offsets=5, to_offsets=70), {}, {},
     {0: (5, 70), 1: (10, 50), 2: (0, 0)}),
    # per partition: partitions left out of --from-offset are not replayed
    (WindowRequest(from_offsets={0: 30}, to_offsets={0: 10}), {}, {},
     {0: (30, 30), 1: (50, 50), 2: (0, 0)}),
])
def test_resolve_bounds(request_: WindowRequest, at_start: dict[int, int | None],
                        at_stop: dict[int, int | None], expected: dict[int, tuple[int, int]]
                        ) -> None:
    assert resolve_bounds(request_, beginning=BEGIN, end=END, start_at_time=at_start,
                          stop_at_time=at_stop) == expected


def test_window_contains_is_half_open() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    window = WindowRequest(from_time=t0, to_time=t0 + timedelta(minutes=1))
    ms = int(t0.timestamp() * 1000)
    assert window.contains(ms) and window.contains(ms + 59_999)
    assert not window.contains(ms - 1) and not window.contains(ms + 60_000)


def test_run_id_is_deterministic() -> None:
    window = WindowRequest(from_time=datetime(2026, 1, 1, tzinfo=UTC))
    assert derive_run_id("m1", "t", window) == derive_run_id("m1", "t", window)
    assert derive_run_id("m1", "t", window) != derive_run_id("m2", "t", window)
    assert derive_run_id("m1", "t", window) != derive_run_id("m1", "t", WindowRequest())


def _row(expected: int | None, predicted: int | None, status: str, event: str = "e"
         ) -> ResultRow:
    return ResultRow(event, "bin", "s3://b/k.jpg", expected, predicted, status,
                     "missing_object" if status == "error" else None)


def test_backtest_metrics_by_hand() -> None:
    rows = [_row(1, 1, "match"), _row(2, 3, "mismatch"), _row(5, 2, "mismatch"),
            _row(0, 1, "unsupported"), _row(None, None, "error")]
    m = backtest_metrics(rows, [1, 2, 3, 4, 5])
    assert (m["events"], m["predicted"], m["errors"]) == (5, 4, 1)
    assert m["accuracy"] == pytest.approx(1 / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 1 + 9 + 1) / 4))
    assert m["off_by_one_accuracy"] == pytest.approx(3 / 4)
    assert m["n_1_5"] == 3 and m["accuracy_1_5"] == pytest.approx(1 / 3)
    assert m["rmse_1_5"] == pytest.approx(math.sqrt(10 / 3))
    assert m["per_class_accuracy_1_5"] == {"1": 1.0, "2": 0.0, "3": None, "4": None, "5": 0.0}
    assert m["statuses"] == {"error": 1, "match": 1, "mismatch": 2, "unsupported": 1}
    assert scope_suffix([0, 2, 4]) == "0_2_4"


def test_compare_with_production_lists_changed_verdicts() -> None:
    rows = [_row(1, 1, "match", "a"), _row(2, 3, "mismatch", "b"), _row(3, 3, "match", "c"),
            _row(None, None, "error", "d"), _row(4, 4, "match", "only-candidate")]
    production = [ProductionRow("a", 1, "match"), ProductionRow("b", 2, "match"),
                  ProductionRow("c", 1, "mismatch"), ProductionRow("d", 2, "match")]
    out = compare_with_production(rows, production, version="prod", class_counts=[1, 2, 3, 4, 5])
    assert out["events"] == 3 and out["changed_verdicts"] == 2
    assert out["verdict_agreement"] == pytest.approx(1 / 3)
    assert out["count_agreement"] == pytest.approx(1 / 3)
    assert [c["event_id"] for c in out["new_mismatches"]] == ["b"]
    assert [c["event_id"] for c in out["resolved_mismatches"]] == ["c"]
    assert out["production_accuracy_1_5"] == pytest.approx(2 / 3)


# ---- against the services ----------------------------------------------------------------------

pytest_services = pytest.mark.services
T0 = datetime(2026, 3, 1, tzinfo=UTC)
EVENTS = 90
FROM_I, TO_I = 20, 50  # the replayed window, in event indexes (one event a minute)


@pytest.fixture(scope="module")
def own_db(fresh_database: Callable[..., Any]) -> Iterator[Settings]:
    """Settings whose database is a fresh one of this module, migrated to head."""
    with fresh_database("binaudit_replay") as settings:
        yield settings


def _query(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def _env(settings: Settings) -> dict[str, str]:
    return {"BINAUDIT_DB__URL": settings.db.url.get_secret_value(),
            "BINAUDIT_INFERENCE__DEVICE": "cpu", "BINAUDIT_ENVIRONMENT": "test",
            "BINAUDIT_INFERENCE__MATCH_MIN_P": "0", "BINAUDIT_INFERENCE__MISMATCH_MIN_SCORE": "0"}


def _group_offsets(settings: Settings, group: str) -> dict[Any, int]:
    admin = KafkaAdminClient(**settings.kafka.client_kwargs())
    try:
        found = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    return {tp: meta.offset for tp, meta in found.items()}


@pytest_services
def test_replay_window_backtests_model_b_without_touching_production(
        own_db: Settings, own_engine: Engine, topic_factory: Callable[..., str],
        model_artifact_factory: Callable[..., Path], sample_dir: Path, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    model_a = model_artifact_factory(f"replay-a-{tag}", seed=0)
    model_b = model_artifact_factory(f"replay-b-{tag}", seed=1)
    topic = topic_factory(partitions=3)
    group = f"g-{topic}"
    settings = own_db.model_copy(update={
        "kafka": own_db.kafka.model_copy(update={"topic": topic, "group_id": group}),
        "worker": own_db.worker.model_copy(update={
            "exit_when_idle_s": 2.0, "metrics_port": None}),
        "inference": own_db.inference.model_copy(update={
            "model": str(model_a), "device": "cpu", "max_batch_size": 16,
            # Untrained models: the argmax rule, so verdicts change between A and B.
            "match_min_p": 0.0, "mismatch_min_score": 0.0})})
    sent = publish(settings, PublishOptions(
        source=sample_dir, topic=topic, create_topic=False, progress=False,
        plan=EventPlan(bucket=settings.s3.bucket, count=EVENTS, start_time=T0, interval_s=60),
        faults=("malformed_json", "missing_image"), fault_rate=0.15))
    assert sent.valid == EVENTS and sent.fault_count > 0
    Worker(settings).run()
    production_rows = _query(own_engine, "SELECT count(*) FROM audit_results")[0][0]
    letters = _query(own_engine, "SELECT count(*) FROM dead_letters")[0][0]
    assert production_rows == EVENTS and letters == sent.fault_count
    committed = _group_offsets(settings, group)
    assert sum(committed.values()) == EVENTS + sent.fault_count

    # Replay [T0+20min, T0+50min) with model B, compared with model A.
    report_path = tmp_path / "bt" / "report.json"
    args = ["replay", "--model", str(model_b), "--topic", topic,
            "--from", (T0 + timedelta(minutes=FROM_I)).isoformat(),
            "--to", (T0 + timedelta(minutes=TO_I)).isoformat(),
            "--report", str(report_path), "--compare-to", f"replay-a-{tag}", "--no-progress"]
    result = CliRunner().invoke(app, args, env=_env(settings))
    assert result.exit_code == 0, result.output
    run_id = _query(own_engine, "SELECT run_id FROM backtest_runs")[0][0]

    rows = _query(own_engine, 'SELECT event_id, "partition", "offset", status, error_kind '
                              "FROM backtest_results WHERE run_id = :r", r=run_id)
    in_window = set(sent.event_ids[FROM_I:TO_I])
    assert {r.event_id for r in rows if r.status != "error"} == in_window
    faults = {(rec.partition, rec.offset): name for name, recs in sent.faults.items()
              for rec in recs if FROM_I <= int(rec.key.rsplit("-", 1)[1]) < TO_I}
    kinds = {"malformed_json": "invalid_json", "missing_image": "missing_object"}
    assert {(r.partition, r.offset): r.error_kind for r in rows if r.status == "error"} == {
        pos: kinds[name] for pos, name in faults.items()}
    assert len(rows) == len(in_window) + len(faults)
    run = _query(own_engine, "SELECT * FROM backtest_runs WHERE run_id = :r", r=run_id)[0]
    assert (run.events, run.errors, run.status) == (len(rows), len(faults), "finished")
    assert run.model_version == f"replay-b-{tag}" and run.finished_at is not None

    # Production untouched: committed offsets, verdicts, dead letters.
    assert _group_offsets(settings, group) == committed
    assert _query(own_engine, "SELECT count(*) FROM audit_results")[0][0] == production_rows
    assert _query(own_engine, "SELECT count(*) FROM dead_letters")[0][0] == letters

    _check_report_against_sql(json.loads(report_path.read_text()), own_engine, run_id,
                              f"replay-a-{tag}")
    assert report_path.with_suffix(".md").read_text().startswith(f"# Backtest {run_id}")
    assert (report_path.parent / "report-confusion.png").stat().st_size > 0

    # The same run id again: no new rows, still one run.
    again = CliRunner().invoke(app, args, env=_env(settings))
    assert again.exit_code == 0, again.output
    assert _query(own_engine, "SELECT count(*) FROM backtest_results WHERE run_id = :r",
                  r=run_id)[0][0] == len(rows)
    assert _query(own_engine, "SELECT count(*) FROM backtest_runs")[0][0] == 1

    # An offset window through the Python API: exactly those positions, partition 2 left out.
    window = WindowRequest.from_cli(from_offset="0:2,1:0", to_offset="5")
    summary = Replay(settings, ReplayOptions(topic=topic, window=window, model_path=model_b,
                                             progress=False)).run()
    assert summary.bounds[0] == (2, 5) and summary.bounds[1] == (0, 5)
    assert summary.bounds[2][0] == summary.bounds[2][1]  # not replayed
    positions = _query(own_engine, 'SELECT "partition", "offset" FROM backtest_results '
                                   "WHERE run_id = :r", r=summary.run_id)
    assert sorted(positions) == [(0, o) for o in range(2, 5)] + [(1, o) for o in range(5)]
    assert summary.run_id == derive_run_id(f"replay-b-{tag}", topic, window) != run_id
    assert _group_offsets(settings, group) == committed


def _check_report_against_sql(report: dict[str, Any], engine: Engine, run_id: str,
                              production: str) -> None:
    scalars = """
        SELECT count(*) AS n,
               avg((predicted_quantity = expected_quantity)::int) AS accuracy,
               sqrt(avg(power(predicted_quantity - expected_quantity, 2))) AS rmse,
               avg((abs(predicted_quantity - expected_quantity) <= 1)::int) AS off_by_one
        FROM backtest_results WHERE run_id = :r AND status <> 'error' {extra}"""
    for suffix, extra in (("", ""), ("_1_5", "AND expected_quantity BETWEEN 1 AND 5")):
        got = _query(engine, scalars.format(extra=extra), r=run_id)[0]
        assert report[f"n{suffix}" if suffix else "predicted"] == got.n
        assert report[f"accuracy{suffix}"] == pytest.approx(float(got.accuracy))
        assert report[f"rmse{suffix}"] == pytest.approx(float(got.rmse))
        assert report[f"off_by_one_accuracy{suffix}"] == pytest.approx(float(got.off_by_one))
    per_class = _query(engine, """
        SELECT expected_quantity AS c, avg((predicted_quantity = expected_quantity)::int) AS acc
        FROM backtest_results WHERE run_id = :r AND status <> 'error' GROUP BY 1""", r=run_id)
    for row in per_class:
        assert report["per_class_accuracy"][str(row.c)] == pytest.approx(float(row.acc))
    totals = _query(engine, "SELECT count(*) AS n, count(*) FILTER (WHERE status = 'error') AS e"
                            " FROM backtest_results WHERE run_id = :r", r=run_id)[0]
    assert (report["events"], report["errors"]) == (totals.n, totals.e)

    pairs = _query(engine, """
        SELECT b.event_id, b.status AS candidate, a.status AS production
        FROM backtest_results b JOIN audit_results a
          ON a.event_id = b.event_id AND a.model_version = :v
        WHERE b.run_id = :r AND b.status <> 'error'""", r=run_id, v=production)
    prod = report["production"]
    assert prod["model_version"] == production and prod["events"] == len(pairs)
    agree = sum(p.candidate == p.production for p in pairs) / len(pairs)
    assert prod["verdict_agreement"] == pytest.approx(agree)
    assert report["agreement_with_production"] == pytest.approx(agree)
    assert {c["event_id"] for c in prod["new_mismatches"]} == {
        p.event_id for p in pairs if p.candidate == "mismatch" and p.production != "mismatch"}
    assert {c["event_id"] for c in prod["resolved_mismatches"]} == {
        p.event_id for p in pairs if p.production == "mismatch" and p.candidate != "mismatch"}
    assert all(c["image_uri"] and c["bin_id"] for c in prod["new_mismatches"])


@pytest_services
def test_replay_records_malformed_events_as_error_rows_and_finishes(
        own_db: Settings, own_engine: Engine, topic_factory: Callable[..., str],
        model_artifact: Path, sample_dir: Path) -> None:
    """A captured_at that overflows in UTC used to raise OverflowError out of the decode and
    end the whole backtest (run marked failed); now each bad record is one error row."""
    topic = topic_factory(partitions=1)
    settings = own_db.model_copy(update={
        "kafka": own_db.kafka.model_copy(update={"topic": topic}),
        "inference": own_db.inference.model_copy(update={"device": "cpu", "backend": "eager"})})
    publish(settings, PublishOptions(
        source=sample_dir, topic=topic, create_topic=False, progress=False,
        plan=EventPlan(bucket=settings.s3.bucket, count=2, start_time=T0)))
    good = json.loads(sent_value(settings, topic, 0))
    bad = [json.dumps({**good, "event_id": "overflow-late",
                       "captured_at": "9999-12-31T23:00:00-05:00"}).encode(),
           json.dumps({**good, "event_id": "overflow-early",
                       "captured_at": "0001-01-01T00:00:00+01:00"}).encode(),
           b'{"bin_id": ' + b"[" * 100_000,
           json.dumps(good).encode()[:-1] + b', "robot_id": "\\ud800"}',
           json.dumps(good).encode().replace(b'"expected_quantity":', b'"x": 1e999, "q":')]
    with EventProducer(settings.kafka) as producer:
        for value in bad:
            producer.send(topic, key="bad", value=value)

    summary = Replay(settings, ReplayOptions(topic=topic, window=WindowRequest(),
                                             model_path=model_artifact, progress=False)).run()

    rows = _query(own_engine, 'SELECT "offset", status, error_kind, error_message '
                              "FROM backtest_results WHERE run_id = :r ORDER BY 1",
                  r=summary.run_id)
    assert [r.offset for r in rows] == list(range(2 + len(bad)))
    assert [r.status != "error" for r in rows[:2]] == [True, True]
    assert [r.error_kind for r in rows[2:]] == ["schema_violation", "schema_violation",
                                                "invalid_json", "invalid_json", "invalid_json"]
    assert "outside the representable range" in rows[2].error_message
    run = _query(own_engine, "SELECT status, events, errors FROM backtest_runs "
                             "WHERE run_id = :r", r=summary.run_id)[0]
    assert (run.status, run.events, run.errors) == ("finished", 2 + len(bad), len(bad))


def sent_value(settings: Settings, topic: str, offset: int) -> bytes:
    """The value of one record of partition 0 (read back group-less)."""
    consumer = KafkaConsumer(**settings.kafka.consumer_kwargs(group_id=None))
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        for _ in range(50):
            for record in consumer.poll(timeout_ms=200).get(tp, []):
                return bytes(record.value)
        raise AssertionError(f"no record at {topic}[0]@{offset}")
    finally:
        consumer.close(autocommit=False)

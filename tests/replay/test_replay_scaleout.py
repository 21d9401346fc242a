"""Issue 24, replay that scales out: one window of real sample events on a 4-partition topic,
backtested with the shipped counter once by one `binaudit replay` process and once by two
processes running in parallel (`--shard 0/2`, `--shard 1/2`, one run id). Real Kafka,
Postgres and moto S3; real child processes of the real CLI.

The merged `replay report` of the two-process run equals the one-process report (every number,
and the rows themselves); each process replayed exactly its shard's partitions; a restart
after a crash resumes at the checkpoint, re-inserts nothing twice, and the report says the run
is incomplete until it has finished.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from binaudit.cli import app
from core.settings import Settings
from robots.publisher import EventPlan, PublishOptions, publish
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.services

SHIPPED = REPO_ROOT / "models" / "counter"
T0 = datetime(2026, 5, 1, tzinfo=UTC)
EVENTS = 60
FROM_MIN, TO_MIN = 6, 54  # the window, in minutes after T0 (one event a minute)
SUMMARY = re.compile(r"\((\d+) new rows, (\d+) records read,")


@pytest.fixture(scope="module")
def own_db(fresh_database: Callable[..., Any]) -> Iterator[Settings]:
    with fresh_database("binaudit_scaleout") as settings:
        yield settings


def _query(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def _execute(engine: Engine, sql: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql), params)


class Replays:
    """Starts `binaudit replay` children of one topic and window, each with its own log."""

    def __init__(self, settings: Settings, topic: str, logs: Path) -> None:
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "BINAUDIT_DB__URL": settings.db.url.get_secret_value(),
                    "BINAUDIT_INFERENCE__DEVICE": "cpu", "BINAUDIT_INFERENCE__BACKEND": "eager",
                    "BINAUDIT_ENVIRONMENT": "test", "COLUMNS": "400"}
        self.args = ["replay", "--model", str(SHIPPED), "--topic", topic,
                     "--from", (T0 + timedelta(minutes=FROM_MIN)).isoformat(),
                     "--to", (T0 + timedelta(minutes=TO_MIN)).isoformat(), "--no-progress"]
        self.logs = logs
        self.started = 0

    def start(self, run_id: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
        self.started += 1
        log = self.logs / f"replay-{self.started}.log"
        proc = subprocess.Popen([sys.executable, "-m", "binaudit", *self.args,
                                 "--run-id", run_id, *extra], env=self.env, cwd=REPO_ROOT,
                                stdout=log.open("wb"), stderr=subprocess.STDOUT)
        return proc, log

    def finish(self, proc: subprocess.Popen[bytes], log: Path) -> tuple[int, int]:
        """Wait for a child; (rows it added, records it read) from its summary line."""
        try:
            code = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        output = log.read_text(errors="replace")
        assert code == 0, output[-4000:]
        found = SUMMARY.search(output)
        assert found, output[-4000:]
        return int(found.group(1)), int(found.group(2))

    def run(self, run_id: str, *extra: str) -> tuple[int, int]:
        return self.finish(*self.start(run_id, *extra))


def _report(settings: Settings, run_id: str, out: Path, *extra: str) -> tuple[int, Any]:
    env = {"BINAUDIT_DB__URL": settings.db.url.get_secret_value(),
           "BINAUDIT_ENVIRONMENT": "test"}
    result = CliRunner().invoke(app, ["replay", "report", run_id, "--out", str(out), *extra],
                                env=env)
    assert result.exit_code in (0, 1), f"{result.output}\n{result.exception!r}"
    return result.exit_code, json.loads(out.read_text())


def _merged(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the run's own metadata (id, times, who ran it)."""
    return {k: v for k, v in report.items() if k != "run"}


ROWS = ('SELECT "partition", "offset", event_id, bin_id, expected_quantity, predicted_quantity, '
        "status, error_kind, class_probabilities FROM backtest_results WHERE run_id = :r "
        'ORDER BY "partition", "offset"')


def _rows(engine: Engine, run_id: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in _query(engine, ROWS, r=run_id)]


def _assert_same_rows(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> None:
    assert [r[:-1] for r in got] == [r[:-1] for r in want]
    for g, w in zip(got, want, strict=True):  # probabilities: batches differ, floats may not
        assert (g[-1] is None) == (w[-1] is None)
        if w[-1] is not None:
            assert g[-1] == pytest.approx(w[-1], abs=1e-5)


def test_two_shards_in_parallel_report_what_one_process_reports(
        own_db: Settings, own_engine: Engine, topic_factory: Callable[..., str],
        sample_dir: Path, tmp_path: Path) -> None:
    engine = own_engine
    topic = topic_factory(partitions=4)
    settings = own_db.model_copy(update={"kafka": own_db.kafka.model_copy(
        update={"topic": topic})})
    sent = publish(settings, PublishOptions(
        source=sample_dir, topic=topic, create_topic=False, progress=False,
        plan=EventPlan(bucket=settings.s3.bucket, count=EVENTS, start_time=T0, interval_s=60),
        faults=("malformed_json", "missing_image"), fault_rate=0.15))
    assert sent.valid == EVENTS and sent.fault_count > 0
    replays = Replays(settings, topic, tmp_path)
    tag = uuid.uuid4().hex[:6]
    one, two = f"one-{tag}", f"two-{tag}"

    # One process, every partition.
    added_one, read_one = replays.run(one)
    rows_one = _rows(engine, one)
    assert added_one == read_one == len(rows_one)
    assert len({r[0] for r in rows_one}) == 4, "the window must reach every partition"
    assert len({r[6] for r in rows_one}) >= 3, "the verdicts must differ for the test to bite"
    code, report_one = _report(settings, one, tmp_path / "one.json")
    assert code == 0 and report_one["coverage"]["complete"]
    assert report_one["events"] == len(rows_one) and report_one["errors"] > 0

    # Two processes of one run id, in parallel, each its shard.
    shard0, shard1 = replays.start(two, "--shard", "0/2"), replays.start(two, "--shard", "1/2")
    added = {0: replays.finish(*shard0), 1: replays.finish(*shard1)}
    rows_two = _rows(engine, two)
    _assert_same_rows(rows_two, rows_one)
    for i, (new, read) in added.items():  # each process did its own partitions, no others
        mine = sum(1 for r in rows_two if r[0] % 2 == i)
        assert new == read == mine > 0, (i, new, read, mine)
    workers = dict(_query(engine, 'SELECT "partition", worker FROM backtest_run_partitions '
                                  "WHERE run_id = :r AND finished_at IS NOT NULL", r=two))
    assert sorted(workers) == [0, 1, 2, 3]
    assert all(workers[p].startswith(f"shard {p % 2}/2 ") for p in workers), workers
    code, report_two = _report(settings, two, tmp_path / "two.json")
    assert code == 0 and report_two["coverage"]["complete"]
    assert _merged(report_two) == _merged(report_one)
    assert _query(engine, "SELECT status FROM backtest_runs WHERE run_id = :r",
                  r=two)[0][0] == "finished"

    # A restart of a finished shard: nothing to read, nothing added.
    assert replays.run(two, "--shard", "0/2") == (0, 0)

    # Shard 1 crashed: partition 1 after its checkpoint at start + k (rows past it lost),
    # partition 3 before any checkpoint (its rows were all written). The report says so.
    bounds = {p: (start, stop) for p, start, stop in _query(
        engine, 'SELECT "partition", start_offset, stop_offset FROM backtest_run_partitions '
                "WHERE run_id = :r", r=two)}
    (start1, stop1), (start3, stop3) = bounds[1], bounds[3]
    k = (stop1 - start1) // 2
    assert 0 < k < stop1 - start1 and stop3 > start3
    _execute(engine, "UPDATE backtest_run_partitions SET finished_at = NULL, next_offset = "
                     "CASE WHEN \"partition\" = 1 THEN :c ELSE start_offset END "
                     'WHERE run_id = :r AND "partition" IN (1, 3)', r=two, c=start1 + k)
    _execute(engine, 'DELETE FROM backtest_results WHERE run_id = :r AND "partition" = 1 '
                     'AND "offset" >= :c', r=two, c=start1 + k)
    lost = stop1 - start1 - k
    code, partial = _report(settings, two, tmp_path / "partial.json", "--fail-incomplete")
    assert code == 1 and not partial["coverage"]["complete"]
    assert partial["coverage"]["finished"] == [0, 2]
    assert partial["coverage"]["unfinished"] == {
        "1": {"next_offset": start1 + k, "stop_offset": stop1, "records_left": stop1 - start1 - k},
        "3": {"next_offset": start3, "stop_offset": stop3, "records_left": stop3 - start3}}
    assert partial["events"] == len(rows_one) - lost
    assert "**incomplete**" in (tmp_path / "partial.md").read_text()

    # The restart reads from each checkpoint and adds only the lost rows, no duplicates.
    new, read = replays.run(two, "--shard", "1/2")
    assert (new, read) == (lost, lost + stop3 - start3)
    _assert_same_rows(_rows(engine, two), rows_one)
    code, again = _report(settings, two, tmp_path / "again.json", "--fail-incomplete")
    assert code == 0 and _merged(again) == _merged(report_one)

    # A process with a different window cannot join the run.
    proc, log = replays.start(two, "--shard", "1/2",
                              "--to", (T0 + timedelta(minutes=TO_MIN + 1)).isoformat())
    assert proc.wait(timeout=300) == 2
    assert "already belongs to another model, topic or window" in log.read_text()

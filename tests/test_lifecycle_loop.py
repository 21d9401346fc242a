"""The loop from auditors' reviews back to production, end to end on the real sample and the
local stack (issue 23): production verdicts → reviews → `review export` → `train prepare`
(reviewed bins with the dataset) → `train fit` → `model register` → backtests of candidate
and production on a window the candidate never trained on → shadow on live traffic →
`shadow report` → the gate → production, with the running worker switching to it."""

from __future__ import annotations

import csv
import json
import shutil
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from typer.testing import CliRunner

from audit.queries import ReviewDecision, record_review
from binaudit.cli import app
from core.settings import Settings
from core.truth import read_truth
from tests.conftest import WorkerProcess, wait_until

pytestmark = [pytest.mark.services, pytest.mark.slow]

WINDOWS = {"a": "2026-01-01T00:00:00Z", "b": "2026-02-01T00:00:00Z",
           "c": "2026-03-01T00:00:00Z"}
REVIEWS = 60  # discrepancies reviewed from window A


@pytest.fixture
def loop_db(fresh_database: Callable[..., Any]) -> Iterator[Settings]:
    # Its own database: `review export` takes every reviewed bin, whoever reviewed it.
    with fresh_database("binaudit_loop") as settings:
        yield settings


def _subset(sample: Path, ids: list[str], out: Path) -> Path:
    """An ABID-format folder (images/, metadata/, labels.csv) holding only ``ids``."""
    for sub in ("images", "metadata"):
        (out / sub).mkdir(parents=True)
    with (sample / "labels.csv").open(newline="") as fh:
        rows = {Path(r["image"]).stem: r for r in csv.DictReader(fh)}
    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "expected_quantity"])
        for ident in ids:
            (out / "images" / f"{ident}.jpg").symlink_to(sample / "images" / f"{ident}.jpg")
            (out / "metadata" / f"{ident}.json").symlink_to(
                sample / "metadata" / f"{ident}.json")
            writer.writerow([f"images/{ident}.jpg", rows[ident]["expected_quantity"]])
    return out


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, *args: str, code: int | None = 0) -> str:
        result = CliRunner().invoke(app, list(args), env=self.env)
        if code is not None:
            assert result.exit_code == code, f"{args}: {result.output}\n{result.exception!r}"
        return str(result.output)

    def code(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, list(args), env=self.env)
        return result.exit_code, str(result.output)


def _rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def _review(engine: Engine, truth_path: Path) -> int:
    """Auditors review the first REVIEWS discrepancies of window A: a wrong manifest is
    confirmed with the true count, a correct one dismissed (what a careful auditor does)."""
    truth = read_truth(truth_path)
    with engine.begin() as conn:
        found = conn.execute(text("SELECT id, event_id FROM discrepancies ORDER BY id LIMIT :n"),
                             {"n": REVIEWS}).all()
        for row in found:
            entry = truth[row.event_id]
            wrong = entry.true_count != entry.manifest_count
            record_review(conn=conn, discrepancy_id=row.id, decision=ReviewDecision(
                state="confirmed" if wrong else "dismissed", reviewer="loop-test",
                at=datetime.now(UTC), count=entry.true_count if wrong else None))
    return len(found)


def _versions_by_window(engine: Engine, topic: str) -> dict[str, set[str]]:
    rows = _rows(engine, "SELECT captured_at, model_version FROM audit_results "
                         "WHERE topic = :t", t=topic)
    out: dict[str, set[str]] = {}
    for row in rows:
        window = "a" if row.captured_at.month == 1 else "b" if row.captured_at.month == 2 else "c"
        out.setdefault(window, set()).add(row.model_version)
    return out


def test_reviews_become_a_candidate_that_the_gate_judges_and_production_runs(
        loop_db: Settings, sample_dir: Path, demo_model: Path, topic_factory: Callable[..., str],
        worker_process_factory: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    engine = create_engine(loop_db.db.url.get_secret_value())
    topic = topic_factory(partitions=2)
    with (sample_dir / "labels.csv").open(newline="") as fh:
        ids = sorted(Path(r["image"]).stem for r in csv.DictReader(fh))
    held = ids[::3]  # windows B and C: never trained on by the candidate
    seen = [i for i in ids if i not in set(held)]
    folders = {"a": _subset(sample_dir, seen, tmp_path / "a"),
               "held": _subset(sample_dir, held, tmp_path / "held")}
    cli = Cli({"BINAUDIT_DB__URL": loop_db.db.url.get_secret_value(),
               "BINAUDIT_ENVIRONMENT": "test", "BINAUDIT_KAFKA__TOPIC": topic,
               "BINAUDIT_INFERENCE__DEVICE": "cpu", "BINAUDIT_INFERENCE__MATCH_MIN_P": "0.6",
               "BINAUDIT_INFERENCE__MISMATCH_MIN_SCORE": "0.6",
               "BINAUDIT_REGISTRY__MIN_EVIDENCE_EVENTS": "20"})
    worker_env = {"db": {"url": loop_db.db.url.get_secret_value()},
                  "kafka": {"topic": topic, "group_id": f"{topic}-group"},
                  "inference": {"device": "cpu", "match_min_p": 0.6, "mismatch_min_score": 0.6,
                                "registry_poll_s": 2.0, "model": str(demo_model),
                                "shadow_queue_batches": 64, "follow_registry": True}}

    # Production: the demo model, the deployment's first production version (not gated).
    production = json.loads((demo_model / "model.json").read_text())["version"]
    cli("model", "register", str(demo_model), "--deployment", topic)
    cli("model", "promote", production, "--to", "production", "--reason", "first model")

    # Window A: production verdicts, then reviews of its discrepancies, exported for training.
    truth_a = tmp_path / "truth-a.csv"
    cli("publish", "--source", str(folders["a"]), "--topic", topic, "--start-time",
        WINDOWS["a"], "--wrong-manifest-rate", "0.3", "--truth", str(truth_a), "--no-progress")
    first = worker_process_factory("loop-a", **worker_env,
                                   worker={"exit_when_idle_s": 4.0})
    assert first.wait(timeout=300) == 0, first.log()[-3000:]
    reviewed = _review(engine, truth_a)
    assert reviewed >= 20, "too few discrepancies to review"
    export = tmp_path / "reviewed" / "labels.csv"
    cli("review", "export", "--out", str(export))

    # A candidate fitted on window A's images and the reviews, never on the held-out bins.
    manifest = tmp_path / "manifest.json"
    cli("train", "prepare", "--source-dir", str(folders["a"]), "--source-dir",
        str(export.parent), "--out", str(manifest))
    run = tmp_path / "candidate"
    cli("train", "fit", "--manifest", str(manifest), "--epochs", "1", "--image-size", "128",
        "--freeze", "backbone", "--model", "efficientnet_lite0", "--weights", "default",
        "--out", str(run), "--no-progress")
    card = json.loads(next(run.rglob("model.json")).read_text())
    artifact = next(run.rglob("model.json")).parent
    candidate = card["version"]
    assert 0 < card["reviewed_bins"] <= reviewed
    cli("model", "register", str(artifact), "--deployment", topic, "--reason",
        f"fitted with {card['reviewed_bins']} reviewed bins")

    # Window B (held-out bins): backtests of both versions on the same events.
    truth_b = tmp_path / "truth-b.csv"
    cli("publish", "--source", str(folders["held"]), "--topic", topic, "--start-time",
        WINDOWS["b"], "--wrong-manifest-rate", "0.3", "--truth", str(truth_b), "--no-progress")
    for model in (artifact, demo_model):
        cli("replay", "--model", str(model), "--topic", topic, "--from", WINDOWS["b"],
            "--to", WINDOWS["c"], "--no-progress")

    # Shadow on live traffic: the worker runs both on window B's batches.
    cli("model", "promote", candidate, "--to", "shadow", "--reason", "live check")
    live = worker_process_factory("loop-live", **worker_env, worker={})
    wait_until(lambda: _rows(engine, "SELECT count(*) FROM shadow_results")[0][0] == len(held),
               240, "a shadow verdict for every window-B event")
    assert _versions_by_window(engine, topic)["b"] == {production}
    shadow = tmp_path / "shadow"
    cli("shadow", "report", "--truth", str(truth_b), "--out", str(shadow))
    report = json.loads(shadow.with_suffix(".json").read_text())
    assert report["events"] == len(held)

    # The gate judges the candidate on the backtests; refused or not, the reason is recorded.
    code, output = cli.code("model", "promote", candidate, "--to", "production", "--reason",
                            "retrained with reviews", "--truth", str(truth_b))
    assert code in (0, 2), output
    if code == 2:  # worse than production beyond the margins: nothing changed
        assert "refused" in output.lower(), output
        assert _rows(engine, "SELECT stage FROM model_stages WHERE version = :v",
                     v=candidate)[0][0] == "shadow"
        cli("model", "promote", candidate, "--to", "production", "--reason",
            "loop test: promoted over the gate", "--truth", str(truth_b), "--force")
    last = _rows(engine, "SELECT forced, evidence FROM model_stage_history WHERE version = :v "
                         "AND to_stage = 'production' ORDER BY id DESC LIMIT 1", v=candidate)[0]
    assert last.forced is (code == 2) and last.evidence

    # Window C: the running worker switched to the candidate without a restart.
    wait_until(lambda: f"-> {candidate}" in live.log(), 180, "the worker's switch")
    cli("publish", "--source", str(folders["held"]), "--topic", topic, "--start-time",
        WINDOWS["c"], "--no-progress")
    wait_until(lambda: len(_rows(engine, "SELECT 1 FROM audit_results WHERE captured_at >= "
                                         ":c", c=WINDOWS["c"])) == len(held),
               240, "window C's verdicts")
    assert live.proc.poll() is None, live.log()[-3000:]
    assert _versions_by_window(engine, topic) == {"a": {production}, "b": {production},
                                                  "c": {candidate}}
    live.proc.send_signal(signal.SIGTERM)
    assert live.wait(timeout=120) == 0, live.log()[-3000:]
    engine.dispose()
    shutil.rmtree(tmp_path / "reviewed", ignore_errors=True)

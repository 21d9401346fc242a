"""``binaudit model register|list|show|history|promote|rollback`` and ``binaudit shadow
report`` through the root CLI, against a database of this module and the local S3.

Backtest, shadow and production verdict rows are fixtures inserted directly (what ``replay``
and the worker would write); the artifacts registered are copies of the shipped counter."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, text
from typer.testing import CliRunner

from binaudit.cli import app
from core import registry
from core.artifacts import resolve, tree_sha256
from core.settings import Settings
from core.tables import audit_results, backtest_results, backtest_runs, shadow_results

pytestmark = pytest.mark.services
REPO_ROOT = Path(__file__).resolve().parents[2]
MIN_EVENTS = 20
Row = tuple[int, int | None, str, float | None]  # expected, predicted, status, score


@pytest.fixture
def cli(own_db: Settings) -> Callable[..., Any]:
    env = {"BINAUDIT_DB__URL": own_db.db.url.get_secret_value(), "BINAUDIT_ENVIRONMENT": "test",
           "BINAUDIT_REGISTRY__MIN_EVIDENCE_EVENTS": str(MIN_EVENTS), "COLUMNS": "250"}

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(app, list(args), env=env)
        assert result.exit_code == code, f"{result.output}\n{result.exception!r}"
        return str(result.output)

    return run


def _tag() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def artifact(tmp_path: Path) -> Callable[[str], Path]:
    """A copy of the shipped counter whose card names another version."""

    def make(version: str) -> Path:
        directory = tmp_path / version
        shutil.copytree(REPO_ROOT / "models" / "counter", directory)
        card = json.loads((directory / "model.json").read_text())
        (directory / "model.json").write_text(json.dumps({**card, "version": version}))
        return directory

    return make


@pytest.fixture
def versions(own_engine: Engine) -> Callable[..., list[str]]:
    """Registered versions (card rows only: promotion never loads the artifact)."""

    def make(*names: str) -> list[str]:
        with own_engine.begin() as conn:
            for name in names:
                registry.register_version(conn, version=name, architecture="efficientnet_lite0",
                                          artifact_uri=f"file:///m/{name}",
                                          card={"version": name, "class_counts": [1, 2, 3, 4, 5]},
                                          metrics=None)
        return list(names)

    return make


def _rows(n: int, correct: int, status: str = "match") -> list[Row]:
    """n verdicts on 1..5-item manifests, the first ``correct`` of them counted right."""
    return [(1 + i % 5, 1 + i % 5 if i < correct else 1 + (i + 1) % 5,
             status if i < correct else "mismatch", 0.1 if i < correct else 0.9)
            for i in range(n)]


@pytest.fixture
def backtest(own_engine: Engine) -> Callable[..., str]:
    """``backtest(version, topic, rows, finished=...)``: a finished run of ``version`` whose
    event i has ``rows[i]``; returns its run id."""

    def make(version: str, topic: str, rows: Sequence[Row], *,
             finished: datetime | None = None) -> str:
        run_id = f"run-{version}-{_tag()}"
        with own_engine.begin() as conn:
            conn.execute(insert(backtest_runs).values(
                run_id=run_id, model_version=version, topic=topic, requested_window={},
                resolved_offsets={}, class_counts=[1, 2, 3, 4, 5], status="finished",
                finished_at=finished or datetime.now(UTC), events=len(rows)))
            conn.execute(insert(backtest_results), [
                {"run_id": run_id, "event_id": f"{topic}-e{i}", "topic": topic, "partition": 0,
                 "offset": i, "expected_quantity": e, "predicted_quantity": p, "status": s,
                 "discrepancy_score": score} for i, (e, p, s, score) in enumerate(rows)])
        return run_id

    return make


def _history(own_engine: Engine, deployment: str) -> list[registry.StageChange]:
    with own_engine.connect() as conn:
        return registry.history(conn, deployment=deployment)


def _stages(own_engine: Engine, deployment: str) -> dict[str, str]:
    with own_engine.connect() as conn:
        return dict(conn.execute(text("SELECT version, stage FROM model_stages "
                                      "WHERE deployment = :d"), {"d": deployment}).all())


def _promote(cli: Callable[..., Any], version: str, to: str, dep: str, *extra: str,
             code: int = 0) -> str:
    return str(cli("model", "promote", version, "--to", to, "--deployment", dep,
                   "--reason", f"test {to}", *extra, code=code))


# ---- register, list, show ---------------------------------------------------------------------

def test_register_list_show(cli: Callable[..., Any], own_engine: Engine,
                            artifact: Callable[[str], Path]) -> None:
    version, dep = f"lite0-{_tag()}", f"dep-{_tag()}"
    directory = artifact(version)
    out = cli("model", "register", str(directory), "--deployment", dep)
    assert f"{version}: registered" in out and "now candidate" in out
    again = cli("model", "register", str(directory), "--deployment", dep)
    assert "already registered" in again and "already candidate" in again
    with own_engine.connect() as conn:
        row = conn.execute(text("SELECT artifact_uri, sha256, card FROM model_versions "
                                "WHERE version = :v"), {"v": version}).one()
    assert row.artifact_uri == directory.resolve().as_uri()
    assert row.sha256 == tree_sha256(directory)
    assert row.card["class_counts"] == list(range(11))
    assert [(c.version, c.to_stage, c.reason) for c in _history(own_engine, dep)] == [
        (version, "candidate", "registered")]
    listed = cli("model", "list", "--deployment", dep)
    assert version in listed and f"{dep}: candidate" in listed
    assert row.sha256[:12] in listed and "val_accuracy_1_5" in listed
    shown = cli("model", "show", version)
    assert row.artifact_uri in shown and row.sha256 in shown and "registered" in shown
    assert "no-such" not in cli("model", "list", "--deployment", f"no-such-{_tag()}")
    cli("model", "show", "no-such-version", code=2)


def test_register_refuses_changed_contents_under_a_known_version(
        cli: Callable[..., Any], artifact: Callable[[str], Path]) -> None:
    version = f"lite0-{_tag()}"
    directory = artifact(version)
    cli("model", "register", str(directory))
    card = json.loads((directory / "model.json").read_text())
    (directory / "model.json").write_text(json.dumps({**card, "code_version": "edited"}))
    assert "other contents" in cli("model", "register", str(directory), code=2)
    cli("model", "register", str(directory.parent / "missing"), code=2)


def test_register_upload_round_trip(cli: Callable[..., Any], own_engine: Engine, own_db: Settings,
                                    artifact: Callable[[str], Path],
                                    bucket_factory: Callable[..., str], tmp_path: Path) -> None:
    version = f"lite0-{_tag()}"
    directory = artifact(version)
    cli("model", "register", str(directory))  # first by path, then moved to S3
    bucket = bucket_factory("models")
    out = cli("model", "register", str(directory), "--upload", f"s3://{bucket}/models/")
    uri = f"s3://{bucket}/models/{version}/"
    assert uri in out
    with own_engine.connect() as conn:
        row = conn.execute(text("SELECT artifact_uri, sha256 FROM model_versions "
                                "WHERE version = :v"), {"v": version}).one()
    assert (row.artifact_uri, row.sha256) == (uri, tree_sha256(directory))
    local = resolve(row.artifact_uri, sha256=row.sha256, cache_dir=tmp_path / "cache",
                    s3=own_db.s3)
    assert tree_sha256(local) == row.sha256
    assert (local / "model.pt").read_bytes() == (directory / "model.pt").read_bytes()


# ---- promotion and the gate -------------------------------------------------------------------

def test_first_production_and_shadow_are_not_gated_and_notify(
        cli: Callable[..., Any], own_engine: Engine, own_db: Settings,
        versions: Callable[..., list[str]]) -> None:
    prod, cand = versions(f"p-{_tag()}", f"c-{_tag()}")
    dep = f"dep-{_tag()}"
    _promote(cli, prod, "production", dep)
    with registry.StageListener(own_db.db) as listener:
        listener.wait(0.05)
        heard: list[set[str]] = []
        waiter = threading.Thread(target=lambda: heard.append(listener.wait(10.0)))
        waiter.start()
        _promote(cli, cand, "shadow", dep)
        waiter.join(15.0)
    assert heard == [{dep}]
    assert _stages(own_engine, dep) == {prod: "production", cand: "shadow"}
    first, shadow = _history(own_engine, dep)
    assert first.evidence == {"gate": "none: first production version of the deployment"}
    assert (shadow.version, shadow.to_stage, shadow.evidence) == (cand, "shadow", None)
    assert "@" in shadow.actor and shadow.db_user
    assert "already shadow" in _promote(cli, cand, "shadow", dep, code=2)
    _promote(cli, f"unknown-{_tag()}", "shadow", dep, code=2)


def test_the_gate_refuses_a_worse_candidate_and_writes_nothing(
        cli: Callable[..., Any], own_engine: Engine, versions: Callable[..., list[str]],
        backtest: Callable[..., str]) -> None:
    prod, worse = versions(f"p-{_tag()}", f"w-{_tag()}")
    dep = f"dep-{_tag()}"
    _promote(cli, prod, "production", dep)
    backtest(prod, dep, _rows(MIN_EVENTS, 18))
    backtest(worse, dep, _rows(MIN_EVENTS, 10))
    before = _history(own_engine, dep)
    out = _promote(cli, worse, "production", dep, code=2)
    assert "refused" in out and "FAILED" in out and "accuracy against the manifest" in out
    assert "0.5000" in out and "0.9000" in out and "0.8900" in out  # both, and the allowed
    assert _history(own_engine, dep) == before
    assert _stages(own_engine, dep) == {prod: "production"}


def test_the_gate_passes_a_better_candidate_and_records_the_evidence(
        cli: Callable[..., Any], own_engine: Engine, versions: Callable[..., list[str]],
        backtest: Callable[..., str]) -> None:
    prod, better = versions(f"p-{_tag()}", f"b-{_tag()}")
    dep = f"dep-{_tag()}"
    _promote(cli, prod, "production", dep)
    old_prod = backtest(prod, dep, _rows(MIN_EVENTS, 15), finished=datetime.now(UTC)
                        - timedelta(hours=2))
    prod_run = backtest(prod, dep, _rows(MIN_EVENTS, 16))
    cand_run = backtest(better, dep, _rows(MIN_EVENTS + 5, MIN_EVENTS))
    backtest(better, dep, _rows(MIN_EVENTS, 20), finished=datetime.now(UTC)
             - timedelta(days=30))  # too old to count
    out = _promote(cli, better, "production", dep)
    assert cand_run in out and prod_run in out
    assert _stages(own_engine, dep) == {prod: "archived", better: "production"}
    change = _history(own_engine, dep)[-1]
    assert (change.version, change.to_stage, change.forced) == (better, "production", False)
    ev = change.evidence or {}
    assert ev["gate"] == "passed" and ev["source"]["kind"] == "backtest"
    assert (ev["source"]["candidate_run"], ev["source"]["production_run"]) == (cand_run,
                                                                               prod_run)
    assert ev["candidate"]["events"] == MIN_EVENTS
    assert (ev["candidate"]["accuracy"], ev["production"]["accuracy"]) == (1.0, 0.8)
    assert ev["margins"]["accuracy"] == 0.01 and ev["failures"] == []
    # the runs named explicitly are the ones compared
    other = versions(f"o-{_tag()}")[0]
    explicit = backtest(other, dep, _rows(MIN_EVENTS, 20))
    pinned = backtest(better, dep, _rows(MIN_EVENTS, 19))
    assert "--evidence runs are of" in _promote(cli, other, "production", dep, "--evidence",
                                                explicit, "--evidence", old_prod, code=2)
    _promote(cli, other, "production", dep, "--evidence", explicit, "--evidence", pinned)
    assert (_history(own_engine, dep)[-1].evidence or {})["source"]["production_run"] == pinned


def test_without_evidence_the_gate_refuses(cli: Callable[..., Any], own_engine: Engine,
                                           versions: Callable[..., list[str]],
                                           backtest: Callable[..., str]) -> None:
    prod, cand = versions(f"p-{_tag()}", f"c-{_tag()}")
    dep = f"dep-{_tag()}"
    _promote(cli, prod, "production", dep)
    backtest(prod, dep, _rows(MIN_EVENTS, 10))
    backtest(cand, dep, _rows(MIN_EVENTS - 1, 19))  # too few common events
    backtest(cand, dep, _rows(MIN_EVENTS, MIN_EVENTS),  # enough, but too old
             finished=datetime.now(UTC) - timedelta(hours=24 * 7 + 1))
    out = _promote(cli, cand, "production", dep, code=2)
    assert "no evidence" in out and _stages(own_engine, dep) == {prod: "production"}


def test_force_promotes_a_refused_candidate_and_rollback_restores(
        cli: Callable[..., Any], own_engine: Engine, versions: Callable[..., list[str]],
        backtest: Callable[..., str]) -> None:
    prod, worse = versions(f"p-{_tag()}", f"w-{_tag()}")
    dep = f"dep-{_tag()}"
    assert "no previous production" in cli("model", "rollback", "--deployment", dep,
                                           "--reason", "x", code=2)
    _promote(cli, prod, "production", dep)
    backtest(prod, dep, _rows(MIN_EVENTS, 18))
    backtest(worse, dep, _rows(MIN_EVENTS, 10))
    cli("model", "promote", worse, "--to", "production", "--deployment", dep, "--force",
        "--reason", "hotfix for station 7")
    change = _history(own_engine, dep)[-1]
    assert (change.version, change.forced, change.reason) == (worse, True,
                                                              "hotfix for station 7")
    ev = change.evidence or {}
    assert ev["forced"] is True and ev["gate"] == "failed" and ev["failures"]
    assert (ev["candidate"]["accuracy"], ev["production"]["accuracy"]) == (0.5, 0.9)
    assert "FORCED" in cli("model", "history", "--deployment", dep)

    out = cli("model", "rollback", "--deployment", dep, "--reason", "accuracy dropped")
    assert f"{prod} archived -> production" in out
    assert _stages(own_engine, dep) == {prod: "production", worse: "archived"}
    back = _history(own_engine, dep)[-1]
    assert (back.version, back.reason, back.forced) == (prod, "rollback: accuracy dropped",
                                                        False)
    assert (back.evidence or {})["from_version"] == worse


def _shadow_fixture(own_engine: Engine, dep: str, prod: str, cand: str, n: int,
                    prod_rows: Sequence[Row], cand_rows: Sequence[Row]) -> None:
    """Production verdicts and the candidate's shadow verdicts on the same n events."""
    now = datetime.now(UTC)
    with own_engine.begin() as conn:
        for i in range(n):
            event = f"{dep}-s{i}"
            (pe, pp, ps, pscore), (_, cp, cs, cscore) = prod_rows[i], cand_rows[i]
            conn.execute(insert(audit_results).values(
                event_id=event, bin_id="b", image_uri="s3://x/y.jpg", captured_at=now,
                expected_quantity=pe, predicted_quantity=pp, status=ps, discrepancy_score=pscore,
                model_version=prod, topic=dep, partition=0, offset=i))
            conn.execute(insert(shadow_results).values(
                deployment=dep, event_id=event, model_version=cand, production_version=prod,
                topic=dep, partition=0, offset=i, bin_id="b", expected_quantity=pe,
                predicted_quantity=cp, status=cs, discrepancy_score=cscore))


def test_shadow_verdicts_are_evidence_and_truth_gates_on_auroc(
        cli: Callable[..., Any], own_engine: Engine, versions: Callable[..., list[str]],
        tmp_path: Path) -> None:
    prod, cand = versions(f"p-{_tag()}", f"c-{_tag()}")
    dep = f"dep-{_tag()}"
    _promote(cli, prod, "production", dep)
    _promote(cli, cand, "shadow", dep)
    n = MIN_EVENTS
    # the candidate counts better, but its scores rank the wrong manifests last
    _shadow_fixture(own_engine, dep, prod, cand, n, _rows(n, 15), [
        (e, e, "match", 0.9 if i % 2 else 0.1) for i, (e, _, _, _) in enumerate(_rows(n, n))])
    truth = tmp_path / "truth.csv"
    truth.write_text("event_id,bin_id,true_count,manifest_count,perturbation\n" + "".join(
        f"{dep}-s{i},b,{e + (1 if i % 2 == 0 else 0)},{e},{'' if i % 2 else 'extra_item'}\n"
        for i, (e, _, _, _) in enumerate(_rows(n, n))))
    refused = _promote(cli, cand, "production", dep, "--truth", str(truth), code=2)
    assert "AUROC" in refused and "shadow" in refused
    assert _stages(own_engine, dep) == {prod: "production", cand: "shadow"}
    _promote(cli, cand, "production", dep)  # without truth: accuracy and decided rate
    ev = _history(own_engine, dep)[-1].evidence or {}
    assert ev["source"]["kind"] == "shadow" and ev["source"]["events"] == n
    assert ev["candidate"]["quality_metric"] == "decided_rate"


def test_shadow_report_command(cli: Callable[..., Any], own_engine: Engine,
                               versions: Callable[..., list[str]], tmp_path: Path) -> None:
    prod, cand = versions(f"p-{_tag()}", f"c-{_tag()}")
    dep = f"dep-{_tag()}"
    _promote(cli, prod, "production", dep)
    _promote(cli, cand, "shadow", dep)
    _shadow_fixture(own_engine, dep, prod, cand, 10, _rows(10, 5), _rows(10, 8))
    out = cli("shadow", "report", "--deployment", dep, "--out", str(tmp_path / "report"))
    assert "verdicts that would change" in out and "events compared" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["version"], report["events"], report["changed_verdicts"]) == (cand, 10, 3)
    assert report["shadow"]["accuracy"] == 0.8 and report["production"]["accuracy"] == 0.5
    markdown = (tmp_path / "report.md").read_text()
    assert f"# Shadow report: {cand} in {dep}" in markdown and f"{dep}-s5" in markdown
    cli("shadow", "report", "--deployment", f"none-{_tag()}", code=2)
    cli("shadow", "report", "--deployment", dep, "--since", "yesterday", code=2)

"""Auditors: `binaudit mismatches` filters and pages, `binaudit review`, and the review →
export → `binaudit train prepare` round trip, on real Kafka, Postgres and moto S3.

One module-scoped recording (two stations, two model versions) in a throwaway database of
this module, so other test sessions truncating the shared database cannot interfere.
"""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from audit.queries import AuditError, ReviewDecision, image_id, review_values, training_rows
from binaudit.cli import app
from core.settings import Settings
from migrations.runner import upgrade
from robots.publisher import EventPlan, PublishOptions, publish
from worker.app import Worker

T0 = datetime(2026, 4, 1, tzinfo=UTC)
PER_STATION = 40

# ---- pure ------------------------------------------------------------------------------------

NOW = datetime(2026, 4, 2, 12, tzinfo=UTC)


@pytest.mark.parametrize(("state", "count", "expected_true"), [
    ("confirmed", 4, 4), ("dismissed", None, 2), ("dismissed", 2, 2),
])
def test_review_values_true_count(state: str, count: int | None, expected_true: int) -> None:
    values = review_values({"expected_quantity": 2},
                           ReviewDecision(state, "ann", NOW, note="n", count=count))
    assert values == {"review_state": state, "reviewer": "ann", "reviewed_at": NOW,
                      "note": "n", "reviewed_quantity": expected_true}


@pytest.mark.parametrize(("state", "count", "reviewer", "at", "message"), [
    ("confirmed", None, "ann", NOW, "needs --count"),
    ("confirmed", 2, "ann", NOW, "dismissal"),
    ("dismissed", 3, "ann", NOW, "contradicts"),
    ("open", None, "ann", NOW, "must be one of"),
    ("dismissed", None, " ", NOW, "reviewer"),
    ("dismissed", None, "ann", NOW.replace(tzinfo=None), "timezone"),
])
def test_review_values_refuses(state: str, count: int | None, reviewer: str, at: datetime,
                               message: str) -> None:
    with pytest.raises(AuditError, match=message):
        review_values({"expected_quantity": 2}, ReviewDecision(state, reviewer, at, count=count))


def test_training_rows_latest_review_per_image_wins() -> None:
    def reviewed(i: int, state: str, at: datetime, true: int | None, uri: str) -> dict[str, Any]:
        return {"discrepancy_id": i, "review_state": state, "reviewed_at": at,
                "reviewed_quantity": true, "expected_quantity": 2, "image_uri": uri,
                "bin_id": "b", "event_id": f"e{i}", "predicted_quantity": 1,
                "model_version": "m", "reviewer": "r"}

    uri = "s3://binaudit-images/bin-images/00523.jpg"
    rows = training_rows([reviewed(1, "confirmed", NOW, 4, uri),
                          reviewed(2, "dismissed", NOW + timedelta(hours=1), 2, uri),
                          reviewed(3, "open", NOW, None, "s3://b1b/x/9.jpg"),
                          reviewed(4, "confirmed", NOW, None, "s3://b1b/x/7.png")],
                         images_dir="images")
    assert [(r.id, r.expected_quantity, r.image_path, r.discrepancy_id) for r in rows] == [
        ("00523", 2, "images/00523.jpg", 2)]
    assert image_id("s3://b1b/a/b/00042.jpg") == "00042"


# ---- against the services ----------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    settings: Settings
    engine: Engine
    model_a: str
    model_b: str


@pytest.fixture(scope="module")
def recorded(services: Settings, sample_dir: Path,
             model_artifact_factory: Callable[..., Path]) -> Iterator[Recorded]:
    """Two stations' events judged by two model versions, in this module's own database."""
    server = make_url(services.db.url.get_secret_value())
    name = f"binaudit_audit_{uuid.uuid4().hex[:10]}"
    admin_db = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin_db.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    topic = f"test-audit-{uuid.uuid4().hex[:10]}"
    kafka_admin = KafkaAdminClient(**services.kafka.client_kwargs())
    kafka_admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1,
                                        topic_configs={"retention.ms": "-1"})])
    kafka_admin.close()
    tag = uuid.uuid4().hex[:6]
    versions = (f"audit-a-{tag}", f"audit-b-{tag}")
    base = services.model_copy(update={
        "db": services.db.model_copy(update={"url": SecretStr(url)}),
        "kafka": services.kafka.model_copy(update={"topic": topic})})
    engine = create_engine(url)
    try:
        upgrade(base, "head")
        for i, station in enumerate(("st-north", "st-south")):
            publish(base, PublishOptions(
                source=sample_dir, topic=topic, create_topic=False, progress=False,
                plan=EventPlan(bucket=base.s3.bucket, count=PER_STATION, interval_s=60,
                               start_time=T0 + timedelta(hours=i), station_id=station)))
        for seed, version in enumerate(versions):
            model = model_artifact_factory(version, seed=seed)
            Worker(base.model_copy(update={
                "kafka": base.kafka.model_copy(update={"group_id": f"g-{version}"}),
                "worker": base.worker.model_copy(update={
                    "exit_when_idle_s": 2.0, "metrics_port": None}),
                "inference": base.inference.model_copy(update={
                    "model": str(model), "device": "cpu",
                    # Untrained models: the argmax rule (every disagreement is a mismatch)
                    # gives the auditors' queue rows to filter.
                    "match_min_p": 0.0, "mismatch_min_score": 0.0})})).run()
        yield Recorded(base, engine, *versions)
    finally:
        engine.dispose()
        with admin_db.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_db.dispose()


def _cli(rec: Recorded, *args: str) -> Any:
    env = {"BINAUDIT_DB__URL": rec.settings.db.url.get_secret_value(),
           "BINAUDIT_ENVIRONMENT": "test"}
    return CliRunner().invoke(app, list(args), env=env)


def _ids(rec: Recorded, where: str, **params: Any) -> list[int]:
    """Discrepancy ids in the auditors' order: highest score first, then id."""
    sql = ("SELECT d.id FROM discrepancies d JOIN audit_results a "
           "ON a.event_id = d.event_id AND a.model_version = d.model_version "
           f"WHERE {where} ORDER BY d.discrepancy_score DESC NULLS LAST, d.id")
    with rec.engine.connect() as conn:
        return [int(i) for i in conn.execute(text(sql), params).scalars()]


def _listed(rec: Recorded, *args: str) -> list[dict[str, Any]]:
    result = _cli(rec, "mismatches", "--format", "json", *args)
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.output)
    return rows


@pytest.mark.services
def test_mismatch_filters_equal_direct_queries(recorded: Recorded) -> None:
    rec = recorded
    everything = _ids(rec, "TRUE")
    assert len(everything) > 20, "the untrained models should disagree with most manifests"
    with rec.engine.connect() as conn:
        confidence = float(conn.execute(text(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY confidence) FROM discrepancies")
        ).scalar_one())
        a_bin = conn.execute(text("SELECT bin_id FROM discrepancies ORDER BY id LIMIT 1")
                             ).scalar_one()
        score = float(conn.execute(text(
            "SELECT percentile_cont(0.7) WITHIN GROUP (ORDER BY discrepancy_score) "
            "FROM discrepancies")).scalar_one())
    since, until = T0 + timedelta(minutes=10), T0 + timedelta(minutes=70)
    c, sc = f"{confidence:.6f}", f"{score:.6f}"
    combos: list[tuple[list[str], str, dict[str, Any]]] = [
        ([], "TRUE", {}),
        (["--station", "st-south"], "a.station_id = 'st-south'", {}),
        (["--since", since.isoformat(), "--until", until.isoformat()],
         "a.captured_at >= :s AND a.captured_at < :u", {"s": since, "u": until}),
        (["--bin", a_bin], "d.bin_id = :b", {"b": a_bin}),
        (["--min-confidence", c], "d.confidence >= :c", {"c": float(c)}),
        (["--max-confidence", c, "--model-version", rec.model_b],
         "d.confidence <= :c AND d.model_version = :v", {"c": float(c), "v": rec.model_b}),
        (["--status", "mismatch", "--review-state", "open", "--station", "st-north",
          "--min-confidence", c, "--model-version", rec.model_a],
         "a.status = 'mismatch' AND d.review_state = 'open' AND a.station_id = 'st-north' "
         "AND d.confidence >= :c AND d.model_version = :v", {"c": float(c), "v": rec.model_a}),
        (["--status", "match"], "a.status = 'match'", {}),
        (["--min-score", sc, "--station", "st-north"],
         "d.discrepancy_score >= :sc AND a.station_id = 'st-north'", {"sc": float(sc)}),
    ]
    for args, where, params in combos:
        expected = _ids(rec, where, **params)
        got = [r["discrepancy_id"] for r in _listed(rec, "--limit", "10000", *args)]
        assert got == expected, (args, len(got), len(expected))
    assert 0 < len(_ids(rec, "a.station_id = 'st-south'")) < len(everything)

    # The same rows as CSV, with the view's columns.
    result = _cli(rec, "mismatches", "--format", "csv", "--limit", "10000", "--bin", a_bin)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(result.output.splitlines()))
    assert [int(r["discrepancy_id"]) for r in rows] == _ids(rec, "d.bin_id = :b", b=a_bin)
    assert all(r["image_uri"].startswith("s3://") and r["bin_id"] == a_bin for r in rows)

    # Offset pages and keyset pages both walk every row once.
    paged: list[int] = []
    for page in range(1, 100):
        chunk = [r["discrepancy_id"] for r in _listed(rec, "--limit", "7", "--page", str(page))]
        if not chunk:
            break
        paged += chunk
    keyset: list[int] = []
    after: list[str] = []
    while chunk := [r["discrepancy_id"] for r in _listed(rec, "--limit", "9", *after)]:
        keyset += chunk
        after = ["--after-id", str(chunk[-1])]
    assert paged == keyset == everything
    scores = [r["discrepancy_score"] for r in _listed(rec, "--limit", "10000")]
    assert scores == sorted(scores, reverse=True) and all(0 <= x <= 1 for x in scores)
    by_id = [r["discrepancy_id"] for r in _listed(rec, "--limit", "10000", "--order", "id",
                                                  "--after-id", "0")]
    assert by_id == sorted(everything)

    bad = _cli(rec, "mismatches", "--review-state", "maybe")
    assert bad.exit_code == 2 and "review_state" in bad.output
    table = _cli(rec, "mismatches", "--limit", "3")
    assert table.exit_code == 0 and "more: --after-id" in table.output


@pytest.mark.services
def test_review_then_export_feeds_train_prepare(recorded: Recorded, tmp_path: Path) -> None:
    rec = recorded
    with rec.engine.connect() as conn:
        picked = conn.execute(text(
            "SELECT DISTINCT ON (bin_id) id, bin_id, expected_quantity FROM discrepancies "
            "WHERE review_state = 'open' AND model_version = :v ORDER BY bin_id, id LIMIT 3"),
            {"v": rec.model_a}).all()
    assert len(picked) == 3
    (d1, bin1, e1), (d2, bin2, e2), (d3, bin3, e3) = picked
    true1, true3 = (e1 % 5) + 1, (e3 % 5) + 1  # another count within 1..5
    started = datetime.now(UTC)

    # The reviewer is named by the database (migration 0006): no flag can claim another name.
    spoof = _cli(rec, "review", str(d1), "--status", "dismissed", "--reviewer", "alice")
    assert spoof.exit_code == 2 and "--reviewer" in spoof.output
    ok = _cli(rec, "review", str(d1), "--status", "confirmed", "--count", str(true1),
              "--note", "counted twice")
    assert ok.exit_code == 0, ok.output
    refused = _cli(rec, "review", str(d2), "--status", "confirmed", "--note", "no count")
    assert refused.exit_code == 2 and "--count" in refused.output
    assert _cli(rec, "review", str(d2), "--status", "dismissed", "--note", "fine").exit_code == 0
    assert _cli(rec, "review", str(d3), "--status", "confirmed", "--count", str(true3)
                ).exit_code == 0
    missing = _cli(rec, "review", "987654321", "--status", "dismissed")
    assert missing.exit_code == 2 and "no discrepancy" in missing.output

    with rec.engine.connect() as conn:
        reviewed = {r.id: r for r in conn.execute(text(
            "SELECT id, review_state, reviewer, reviewed_at, reviewed_quantity, note "
            "FROM discrepancies WHERE review_state <> 'open'")).all()}
    login = make_url(rec.settings.db.url.get_secret_value()).username
    assert set(reviewed) == {d1, d2, d3}
    assert (reviewed[d1].review_state, reviewed[d1].reviewer, reviewed[d1].reviewed_quantity,
            reviewed[d1].note) == ("confirmed", login, true1, "counted twice")
    assert (reviewed[d2].review_state, reviewed[d2].reviewer, reviewed[d2].reviewed_quantity) \
        == ("dismissed", login, e2)
    for row in reviewed.values():
        assert row.reviewed_at.utcoffset() == timedelta(0)
        assert started <= row.reviewed_at <= datetime.now(UTC)
    confirmed = [r["discrepancy_id"] for r in _listed(rec, "--review-state", "confirmed")]
    assert confirmed == sorted([d1, d3])

    out = tmp_path / "audited" / "labels.csv"
    exported = _cli(rec, "review", "export", "--out", str(out))
    assert exported.exit_code == 0, exported.output
    with out.open(newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert {(r["id"], int(r["expected_quantity"])) for r in lines} == {
        (bin1, true1), (bin2, e2), (bin3, true3)}
    assert all((out.parent / r["image_path"]).stat().st_size > 0 for r in lines)

    manifest = tmp_path / "audited" / "manifest.json"
    prepared = CliRunner().invoke(app, ["train", "prepare", "--labels", str(out),
                                        "--source-dir", str(out.parent), "--out", str(manifest)])
    assert prepared.exit_code == 0, prepared.output
    items = json.loads(manifest.read_text())["items"]
    assert {(i["id"], i["count"]) for i in items} == {(bin1, true1), (bin2, e2), (bin3, true3)}

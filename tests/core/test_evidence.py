"""core.evidence: the gate's pure comparisons (table-driven) and the shadow report, whose
numbers must equal a direct computation from the rows (SQL here), read as the auditor role."""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, insert, text

from core import evidence
from core.evidence import ModelNumbers, Verdict
from core.registry import register_version, set_stage
from core.settings import RegistrySettings
from core.tables import audit_results, shadow_results
from core.truth import TruthEntry

CFG = RegistrySettings(accuracy_margin=0.01, quality_margin=0.02, min_evidence_events=50)
T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _numbers(accuracy: float, quality: float, *, events: int = 100,
             auroc: bool = False) -> ModelNumbers:
    return ModelNumbers("v", events, events, accuracy, quality if not auroc else 0.5,
                        quality if auroc else None)


@pytest.mark.parametrize(("cand", "prod", "passed", "failed_checks"), [
    (_numbers(0.80, 0.60), _numbers(0.80, 0.60), True, []),
    (_numbers(0.79, 0.58), _numbers(0.80, 0.60), True, []),  # exactly at both margins
    (_numbers(0.78, 0.60), _numbers(0.80, 0.60), False, ["accuracy"]),
    (_numbers(0.90, 0.57), _numbers(0.80, 0.60), False, ["decided rate"]),
    (_numbers(0.90, 0.70, auroc=True), _numbers(0.80, 0.75, auroc=True), False, ["AUROC"]),
    (_numbers(0.90, 0.90, events=49), _numbers(0.80, 0.60, events=49), False, ["common"]),
    (_numbers(math.nan, 0.60), _numbers(0.80, 0.60), False, ["accuracy"]),
])
def test_gate_decision(cand: ModelNumbers, prod: ModelNumbers, passed: bool,
                       failed_checks: list[str]) -> None:
    decision = evidence.gate_decision(cand, prod, CFG)
    assert decision.passed is passed
    failed_rows = [row[0] for row in decision.table if row[4] == "FAILED"]
    assert len(failed_rows) == len(failed_checks) == len(decision.failures)
    for row, check in zip(failed_rows, failed_checks, strict=True):
        assert check in row
    assert {row[0] for row in decision.table} >= {"common events",
                                                  "accuracy against the manifest"}


def _v(event: str, version: str, expected: int, predicted: int | None, status: str,
       score: float | None = None) -> Verdict:
    return Verdict(event, version, expected, predicted, status, score)


def test_compare_uses_common_events_in_both_cards_scope() -> None:
    cand = [_v("e1", "c", 1, 1, "match"), _v("e2", "c", 7, 7, "match"),
            _v("e3", "c", 3, 2, "mismatch"), _v("only-c", "c", 2, 2, "match")]
    prod = [_v("e1", "p", 1, 2, "uncertain"), _v("e2", "p", 7, None, "unsupported"),
            _v("e3", "p", 3, 3, "match"), _v("only-p", "p", 4, 1, "mismatch")]
    c, p = evidence.compare(cand, prod, candidate_version="c", production_version="p",
                            classes={"c": list(range(11)), "p": [1, 2, 3, 4, 5]})
    assert (c.events, c.scoped) == (p.events, p.scoped) == (3, 2)  # e2: 7 is not p's class
    assert (c.accuracy, p.accuracy) == (0.5, 0.5)
    assert (c.decided_rate, p.decided_rate) == (1.0, 0.5)
    assert c.auroc is None and c.quality_metric == "decided_rate"


def test_compare_with_truth_gives_the_auroc() -> None:
    truth = {e: TruthEntry(e, "b", t, 2) for e, t in (("w1", 3), ("w2", 1), ("r1", 2),
                                                       ("r2", 2))}
    cand = [_v("w1", "c", 2, 3, "mismatch", 0.9), _v("w2", "c", 2, 1, "mismatch", 0.8),
            _v("r1", "c", 2, 2, "match", 0.1), _v("r2", "c", 2, 2, "match", 0.2)]
    prod = [_v("w1", "p", 2, 2, "match", 0.1), _v("w2", "p", 2, 3, "uncertain", 0.5),
            _v("r1", "p", 2, 2, "match", 0.5), _v("r2", "p", 2, 1, "mismatch", 0.9)]
    c, p = evidence.compare(cand, prod, candidate_version="c", production_version="p",
                            classes={}, truth=truth)
    assert c.auroc == 1.0 and c.quality_metric == "auroc" and c.truth_events == 4
    assert p.auroc == pytest.approx(0.125)  # pairs (wrong > right): w2=r1 tie (0.5)
    assert not evidence.gate_decision(p, c, CFG.model_copy(
        update={"min_evidence_events": 1})).passed


def test_agreement_and_transitions() -> None:
    pairs = [(_v("a", "s", 2, 2, "match"), _v("a", "p", 2, 2, "match")),
             (_v("b", "s", 2, 3, "mismatch"), _v("b", "p", 2, 2, "uncertain")),
             (_v("c", "s", 2, 3, "mismatch"), _v("c", "p", 2, 3, "uncertain"))]
    got = evidence.agreement(pairs, listed=1)
    assert (got["events"], got["changed_verdicts"]) == (3, 2)
    assert got["count_agreement"] == pytest.approx(2 / 3)
    assert got["verdict_agreement"] == pytest.approx(1 / 3)
    assert got["transitions"][0] == {"production": "uncertain", "shadow": "mismatch",
                                     "events": 2, "changed": True}
    assert [c["event_id"] for c in got["changed_events"]] == ["b"]


# ---- the shadow report against Postgres ------------------------------------------------------

@dataclass(frozen=True)
class ShadowData:
    deployment: str
    shadow: str
    production: str
    truth: dict[str, TruthEntry]


STATUSES = ("match", "mismatch", "uncertain")


def _register(conn: Connection, version: str, classes: list[int]) -> None:
    register_version(conn, version=version, architecture="efficientnet_lite0",
                     artifact_uri=f"file:///m/{version}", card={"class_counts": classes},
                     metrics=None)


def _verdict(rng: random.Random, expected: int) -> dict[str, Any]:
    predicted = expected if rng.random() < 0.6 else max(0, expected + rng.choice((-1, 1)))
    return {"expected_quantity": expected, "predicted_quantity": predicted,
            "status": rng.choice(STATUSES), "discrepancy_score": round(rng.random(), 2)}


def _production_row(event: str, version: str, topic: str, at: datetime,
                    v: dict[str, Any]) -> dict[str, Any]:
    return {"event_id": event, "bin_id": "b", "image_uri": "s3://x/y.jpg", "captured_at": at,
            "model_version": version, "topic": topic, "partition": 0, "offset": 0,
            "processed_at": at, **v}


@pytest.fixture(scope="module")
def shadow_data(own_engine: Engine) -> ShadowData:
    """60 events answered by production; the shadow version on the last 50 of them (one
    more shadow row without a production verdict); noise another report must not read
    (another shadow version, another deployment, production verdicts on another topic)."""
    rng = random.Random(7)
    tag = uuid.uuid4().hex[:8]
    dep, topic, shadow, prod = f"dep-{tag}", f"topic-{tag}", f"s-{tag}", f"p-{tag}"
    truth: dict[str, TruthEntry] = {}
    with own_engine.begin() as conn:
        _register(conn, shadow, list(range(11)))
        _register(conn, prod, [1, 2, 3, 4, 5])
        _register(conn, f"other-{tag}", [1, 2, 3])
        set_stage(conn, deployment=dep, version=prod, to_stage="production", actor="t",
                  reason="t")
        set_stage(conn, deployment=dep, version=shadow, to_stage="shadow", actor="t",
                  reason="t")
        for i in range(60):
            event, expected, at = f"{tag}-e{i:03d}", rng.randint(0, 7), T0 + timedelta(
                seconds=10 * i)
            true = expected if rng.random() < 0.7 else expected + 1
            truth[event] = TruthEntry(event, "b", true, expected)
            conn.execute(insert(audit_results).values(_production_row(
                event, prod, topic, at, _verdict(rng, expected))))
            if i >= 10:
                for key, version, deployment in ((event, shadow, dep),
                                                 (event, f"other-{tag}", dep),
                                                 (f"{event}-x", shadow, f"elsewhere-{tag}")):
                    conn.execute(insert(shadow_results).values(
                        deployment=deployment, event_id=key, model_version=version,
                        production_version=prod, topic=topic, partition=0, offset=i,
                        bin_id="b", processed_at=at + timedelta(seconds=1),
                        **_verdict(rng, expected)))
        for i in range(5):  # the same version in production on another topic: not covered
            conn.execute(insert(audit_results).values(_production_row(
                f"{tag}-o{i}", prod, f"other-{topic}", T0 + timedelta(seconds=400 + i),
                _verdict(rng, 2))))
        conn.execute(insert(shadow_results).values(
            deployment=dep, event_id=f"{tag}-lost", model_version=shadow,
            production_version=prod, topic=topic, partition=0, offset=99, bin_id="b",
            processed_at=T0 + timedelta(seconds=700), **_verdict(rng, 2)))
    return ShadowData(dep, shadow, prod, truth)


JOINED = """
FROM shadow_results s JOIN audit_results a
  ON a.event_id = s.event_id AND a.model_version = s.production_version
WHERE s.deployment = :d AND s.model_version = :v AND s.processed_at >= :since
"""


def _sql(own_engine: Engine, sql: str, **params: Any) -> Any:
    with own_engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def _auroc(pairs: list[tuple[float, bool]]) -> float:
    """P(score of a wrong manifest > a right one's), ties half: the definition, pairwise."""
    pos = [s for s, wrong in pairs if wrong]
    neg = [s for s, wrong in pairs if not wrong]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _report(own_engine: Engine, data: ShadowData, **kw: Any) -> dict[str, Any]:
    with own_engine.begin() as conn:
        conn.execute(text("SET LOCAL ROLE binaudit_auditor"))  # what the console runs as
        return evidence.shadow_comparison(conn, data.deployment, **kw)


@pytest.mark.services
@pytest.mark.parametrize("since", [None, T0 + timedelta(seconds=300)])
def test_shadow_report_equals_a_direct_computation(own_engine: Engine, shadow_data: ShadowData,
                                                   since: datetime | None) -> None:
    report = _report(own_engine, shadow_data, since=since, truth=shadow_data.truth, listed=5)
    params = {"d": shadow_data.deployment, "v": shadow_data.shadow,
              "since": since or datetime(2000, 1, 1, tzinfo=UTC)}
    (n, count_agree, status_agree), = _sql(own_engine, f"""
        SELECT count(*), avg((s.predicted_quantity = a.predicted_quantity)::int),
               avg((s.status = a.status)::int) {JOINED}""", **params)
    assert report["version"] == shadow_data.shadow  # the current shadow, by default
    assert report["events"] == n and n > 0
    assert report["count_agreement"] == pytest.approx(float(count_agree))
    assert report["verdict_agreement"] == pytest.approx(float(status_agree))
    (shadow_rows, production_rows), = _sql(own_engine, """
        WITH w AS (SELECT * FROM shadow_results s
                   WHERE s.deployment = :d AND s.model_version = :v AND s.processed_at >= :since),
             start AS (SELECT least((SELECT min(processed_at) FROM w),
                                    (SELECT min(a.processed_at) FROM w JOIN audit_results a
                                     ON a.event_id = w.event_id
                                     AND a.model_version = w.production_version)) AS t)
        SELECT (SELECT count(*) FROM w),
               (SELECT count(*) FROM audit_results a, start
                WHERE a.model_version IN (SELECT production_version FROM w)
                  AND a.topic IN (SELECT topic FROM w)
                  AND a.processed_at >= start.t)""", **params)
    assert (report["shadow_rows"], report["production_rows"]) == (shadow_rows, production_rows)
    assert report["coverage"] == pytest.approx(shadow_rows / production_rows)
    assert shadow_rows > n  # the shadow row without a production verdict counts as coverage
    changes = _sql(own_engine, f"""SELECT a.status, s.status, count(*) {JOINED}
                   AND a.status <> s.status GROUP BY 1, 2""", **params)
    assert {(t["production"], t["shadow"]): t["events"] for t in report["transitions"]
            if t["changed"]} == {(a, s): c for a, s, c in changes}
    assert report["changed_verdicts"] == sum(c for _, _, c in changes)
    first = _sql(own_engine, f"SELECT s.event_id {JOINED} AND a.status <> s.status "
                         "ORDER BY s.processed_at, s.id LIMIT 5", **params)
    assert [c["event_id"] for c in report["changed_events"]] == [e for e, in first]
    scoped = f"{JOINED} AND s.expected_quantity BETWEEN 1 AND 5"  # both cards' counts
    (k, shadow_acc, prod_acc, shadow_dec), = _sql(own_engine, f"""
        SELECT count(*), avg((s.predicted_quantity = s.expected_quantity)::int),
               avg((a.predicted_quantity = a.expected_quantity)::int),
               avg((s.status IN ('match', 'mismatch'))::int) {scoped}""", **params)
    assert report["shadow"]["scoped"] == report["production"]["scoped"] == k
    assert report["shadow"]["accuracy"] == pytest.approx(float(shadow_acc))
    assert report["production"]["accuracy"] == pytest.approx(float(prod_acc))
    assert report["shadow"]["decided_rate"] == pytest.approx(float(shadow_dec))
    scores = _sql(own_engine, f"SELECT s.event_id, s.discrepancy_score, a.discrepancy_score "
                          f"{scoped}", **params)
    wrong = {e: t.true_count != t.manifest_count for e, t in shadow_data.truth.items()}
    assert report["shadow"]["auroc"] == pytest.approx(_auroc([(s, wrong[e])
                                                              for e, s, _ in scores]))
    assert report["production"]["auroc"] == pytest.approx(_auroc([(p, wrong[e])
                                                                  for e, _, p in scores]))
    assert report["audit_quality"]["shadow"]["bins"] == k


@pytest.mark.services
def test_shadow_report_of_a_deployment_without_shadow(own_engine: Engine) -> None:
    with own_engine.connect() as conn, pytest.raises(evidence.EvidenceError, match="no shadow"):
        evidence.shadow_comparison(conn, f"nothing-{uuid.uuid4().hex[:6]}")

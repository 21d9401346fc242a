"""Evidence that one model version is not worse than another on the same events: the
promotion gate's numbers and the shadow report.

Pure functions take verdict rows and return numbers; small loaders read the rows (backtest
runs of ``binaudit replay``, shadow verdicts next to production's). Every comparison is made
on the *common* events only, and its accuracy and quality on the *scope*: the common events
whose manifest count both models' cards support (``class_counts``), so that neither model is
measured on bins the other could not count.

- *accuracy*: predicted count == manifest count (``EXPECTED_QUANTITY``), over the scope;
- *decided rate*: verdicts ``match`` or ``mismatch`` (not ``uncertain``) over the scope;
- *AUROC* (with a truth file, ``core.truth``): of the discrepancy score for wrong manifests
  (``core.quality.audit_quality``) over the scope.

:func:`shadow_comparison` only SELECTs from ``audit_results``, ``shadow_results``,
``model_stages`` and ``model_versions`` through the auditors' views (``shadow_verdicts``,
``verdicts``, ``model_deployments``, ``console_models``), so the console runs it as the
read-only auditor role.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, column, func, select, table, text

from core.quality import DECIDED, audit_quality, json_safe
from core.settings import RegistrySettings
from core.truth import TruthEntry, truth_rows

# A number exactly at its margin passes, whatever float rounding did to the subtraction.
_TOLERANCE = 1e-9
CHANGES_LISTED = 20


class EvidenceError(ValueError):
    """The evidence asked for does not exist or cannot support a comparison."""


@dataclass(frozen=True)
class Verdict:
    """One model's verdict on one event (a backtest, shadow or production row)."""

    event_id: str
    model_version: str
    expected_quantity: int
    predicted_quantity: int | None
    status: str
    discrepancy_score: float | None = None


@dataclass(frozen=True)
class ModelNumbers:
    """One side of a comparison, on the common events."""

    version: str
    events: int  # common events
    scoped: int  # common events whose manifest count both models support
    accuracy: float
    decided_rate: float
    auroc: float | None  # None without a truth file; NaN when undefined on the scope
    truth_events: int | None = None  # scoped events the truth file knows

    @property
    def quality_metric(self) -> str:
        return "decided_rate" if self.auroc is None else "auroc"

    @property
    def quality(self) -> float:
        return self.decided_rate if self.auroc is None else self.auroc

    def as_json(self) -> dict[str, Any]:
        return dict(json_safe({**asdict(self), "quality_metric": self.quality_metric}))


@dataclass(frozen=True)
class Decision:
    """The gate's answer: passed, the failed checks in words, and the table people read
    (rows of check, candidate, production, allowed, result)."""

    passed: bool
    failures: list[str]
    table: list[tuple[str, str, str, str, str]]


TABLE_HEADER = ("check", "candidate", "production", "allowed", "result")


# ---- pure -----------------------------------------------------------------------------------

def _rate(hits: int, n: int) -> float:
    return hits / n if n else math.nan


def supports(classes: Sequence[int] | None, count: int) -> bool:
    """Whether a card's class counts cover ``count`` (unknown card: no restriction)."""
    return classes is None or count in classes


def pair_common(candidate: Sequence[Verdict], production: Sequence[Verdict]
                ) -> list[tuple[Verdict, Verdict]]:
    """(candidate, production) verdicts of the events both sides judged, in event order."""
    prod = {v.event_id: v for v in production}
    pairs = [(c, prod[c.event_id]) for c in candidate if c.event_id in prod]
    return sorted(pairs, key=lambda p: p[0].event_id)


def in_scope(pairs: Sequence[tuple[Verdict, Verdict]],
             classes: Mapping[str, Sequence[int] | None]) -> list[tuple[Verdict, Verdict]]:
    """The pairs whose manifest count both versions' cards support."""
    return [(a, b) for a, b in pairs
            if supports(classes.get(a.model_version), a.expected_quantity)
            and supports(classes.get(b.model_version), b.expected_quantity)]


def side_numbers(version: str, rows: Sequence[Verdict], *, events: int,
                 truth: Mapping[str, TruthEntry] | None) -> ModelNumbers:
    """Accuracy, decided rate and (with truth) AUROC of one side's scoped rows."""
    correct = sum(r.predicted_quantity == r.expected_quantity for r in rows)
    decided = sum(r.status in DECIDED for r in rows)
    auroc: float | None = None
    known: int | None = None
    if truth is not None:
        quality = _quality(rows, truth)
        auroc, known = float(quality["auroc"]), int(quality["bins"])
    return ModelNumbers(version, events, len(rows), _rate(correct, len(rows)),
                        _rate(decided, len(rows)), auroc, known)


def compare(candidate: Sequence[Verdict], production: Sequence[Verdict], *,
            candidate_version: str, production_version: str,
            classes: Mapping[str, Sequence[int] | None],
            truth: Mapping[str, TruthEntry] | None = None) -> tuple[ModelNumbers, ModelNumbers]:
    """Both sides' numbers on their common events (scoped by both cards)."""
    pairs = pair_common(candidate, production)
    scoped = in_scope(pairs, classes)
    return (side_numbers(candidate_version, [c for c, _ in scoped], events=len(pairs),
                         truth=truth),
            side_numbers(production_version, [p for _, p in scoped], events=len(pairs),
                         truth=truth))


def _quality(rows: Sequence[Verdict], truth: Mapping[str, TruthEntry]) -> dict[str, Any]:
    """``core.quality.audit_quality`` of the rows the truth file knows."""
    joined, unknown = truth_rows(({"event_id": r.event_id,
                                   "expected_quantity": r.expected_quantity,
                                   "status": r.status, "discrepancy_score": r.discrepancy_score}
                                  for r in rows), truth)
    return {**audit_quality(joined), "not_in_truth": unknown}


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.4f}"


def _not_worse(name: str, cand: float, prod: float, margin: float
               ) -> tuple[tuple[str, str, str, str, str], str | None]:
    allowed = prod - margin
    if cand != cand or prod != prod:
        return ((name, _fmt(cand), _fmt(prod), f">= production - {margin:g}", "FAILED"),
                f"{name} cannot be measured on this evidence (no events it is defined on)")
    ok = cand >= allowed - _TOLERANCE
    row = (name, _fmt(cand), _fmt(prod), f">= {_fmt(allowed)} (margin {margin:g})",
           "ok" if ok else "FAILED")
    return row, None if ok else (f"{name} {_fmt(cand)} is below production's {_fmt(prod)} "
                                 f"by more than the margin {margin:g}")


def gate_decision(candidate: ModelNumbers, production: ModelNumbers,
                  cfg: RegistrySettings) -> Decision:
    """Is the candidate not worse than production by more than the margins, on enough
    common events? (Pure.)"""
    failures: list[str] = []
    enough = candidate.events >= cfg.min_evidence_events
    table = [("common events", str(candidate.events), str(production.events),
              f">= {cfg.min_evidence_events}", "ok" if enough else "FAILED"),
             ("events in scope (both cards' counts)", str(candidate.scoped),
              str(production.scoped), "", "")]
    if not enough:
        failures.append(f"only {candidate.events} common events; the gate needs "
                        f"{cfg.min_evidence_events}")
    quality_name = ("AUROC of the discrepancy score" if candidate.auroc is not None
                    else "decided rate (match or mismatch)")
    for name, cand, prod, margin in (
            ("accuracy against the manifest", candidate.accuracy, production.accuracy,
             cfg.accuracy_margin),
            (quality_name, candidate.quality, production.quality, cfg.quality_margin)):
        row, failure = _not_worse(name, cand, prod, margin)
        table.append(row)
        if failure:
            failures.append(failure)
    return Decision(not failures, failures, table)


def transitions(pairs: Sequence[tuple[Verdict, Verdict]]) -> list[dict[str, Any]]:
    """Counts of (production status -> shadow status), most frequent first."""
    tally = Counter((p.status, s.status) for s, p in pairs)
    return [{"production": a, "shadow": b, "events": n, "changed": a != b}
            for (a, b), n in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))]


def _change(shadow: Verdict, prod: Verdict) -> dict[str, Any]:
    return {"event_id": shadow.event_id, "expected_quantity": shadow.expected_quantity,
            "production_version": prod.model_version,
            "production_predicted": prod.predicted_quantity, "production_status": prod.status,
            "production_score": prod.discrepancy_score,
            "shadow_predicted": shadow.predicted_quantity, "shadow_status": shadow.status,
            "shadow_score": shadow.discrepancy_score}


def agreement(pairs: Sequence[tuple[Verdict, Verdict]], *, listed: int = CHANGES_LISTED
              ) -> dict[str, Any]:
    """Agreement of (shadow, production) pairs given in report order; the first ``listed``
    changed verdicts."""
    n = len(pairs)
    changed = [(s, p) for s, p in pairs if s.status != p.status]
    return {
        "events": n,
        "count_agreement": _rate(sum(s.predicted_quantity == p.predicted_quantity
                                     for s, p in pairs), n),
        "verdict_agreement": _rate(n - len(changed), n),
        "changed_verdicts": len(changed),
        "transitions": transitions(pairs),
        "changed_events": [_change(s, p) for s, p in changed[:listed]],
    }


# ---- loaders --------------------------------------------------------------------------------
# The auditors' views (migrations 0002-0009): what the read-only role may SELECT.
verdicts_view = table("verdicts", *(column(c) for c in (
    "event_id", "model_version", "expected_quantity", "predicted_quantity", "status",
    "discrepancy_score", "processed_at", "topic")))
shadow_view = table("shadow_verdicts", *(column(c) for c in (
    "id", "deployment", "event_id", "model_version", "production_version", "topic",
    "expected_quantity", "predicted_quantity", "status", "discrepancy_score", "processed_at")))
deployments_view = table("model_deployments", column("deployment"), column("version"),
                         column("stage"))
models_view = table("console_models", column("version"), column("class_counts"))


def class_counts(conn: Connection, versions: Sequence[str]) -> dict[str, list[int] | None]:
    """Each registered version's card ``class_counts`` (None: not registered)."""
    rows = conn.execute(select(models_view.c.version, models_view.c.class_counts).where(
        models_view.c.version.in_(sorted(set(versions))))).all()
    found = {r.version: list(r.class_counts or []) or None for r in rows}
    return {v: found.get(v) for v in versions}


_BACKTEST_ROWS = text("""
SELECT r.event_id, b.model_version, r.expected_quantity, r.predicted_quantity, r.status,
       r.discrepancy_score
FROM backtest_results r JOIN backtest_runs b ON b.run_id = r.run_id
WHERE r.run_id = :run_id AND r.event_id IS NOT NULL AND r.status <> 'error'
  AND r.expected_quantity IS NOT NULL
""")


def backtest_verdicts(conn: Connection, run_id: str) -> list[Verdict]:
    """A backtest run's verdicts (records that failed or never decoded are not verdicts)."""
    return [Verdict(*row) for row in conn.execute(_BACKTEST_ROWS, {"run_id": run_id}).all()]


@dataclass(frozen=True)
class ShadowPair:
    shadow: Verdict
    production: Verdict
    topic: str
    shadow_at: datetime
    production_at: datetime


def _shadow_filter(query: Any, deployment: str, version: str, since: datetime | None) -> Any:
    s = shadow_view.c
    query = query.where(s.deployment == deployment, s.model_version == version)
    return query if since is None else query.where(s.processed_at >= since)


def shadow_pairs(conn: Connection, *, deployment: str, version: str,
                 production_version: str | None = None, since: datetime | None = None
                 ) -> list[ShadowPair]:
    """Shadow verdicts of ``version`` next to production's verdict on the same event (the
    production version the shadow row names), oldest shadow row first."""
    s, a = shadow_view.c, verdicts_view.c
    query = _shadow_filter(
        select(s.event_id, s.model_version, s.expected_quantity, s.predicted_quantity,
               s.status, s.discrepancy_score, a.model_version.label("p_version"),
               a.expected_quantity.label("p_expected"),
               a.predicted_quantity.label("p_predicted"), a.status.label("p_status"),
               a.discrepancy_score.label("p_score"), s.topic, s.processed_at.label("s_at"),
               a.processed_at.label("p_at"))
        .select_from(shadow_view.join(verdicts_view, (a.event_id == s.event_id)
                                      & (a.model_version == s.production_version)))
        .order_by(s.processed_at, s.id), deployment, version, since)
    if production_version is not None:
        query = query.where(s.production_version == production_version)
    return [ShadowPair(Verdict(r.event_id, r.model_version, r.expected_quantity,
                               r.predicted_quantity, r.status, r.discrepancy_score),
                       Verdict(r.event_id, r.p_version, r.p_expected, r.p_predicted,
                               r.p_status, r.p_score), r.topic, r.s_at, r.p_at)
            for r in conn.execute(query).all()]


def shadow_version(conn: Connection, deployment: str) -> str | None:
    """The deployment's shadow version now, else the one that wrote its latest shadow row."""
    current = conn.execute(select(deployments_view.c.version).where(
        deployments_view.c.deployment == deployment,
        deployments_view.c.stage == "shadow")).scalar_one_or_none()
    if current is not None:
        return str(current)
    s = shadow_view.c
    latest = conn.execute(select(s.model_version).where(s.deployment == deployment).order_by(
        s.processed_at.desc(), s.id.desc()).limit(1)).scalar_one_or_none()
    return None if latest is None else str(latest)


def _shadow_window(conn: Connection, deployment: str, version: str, since: datetime | None
                   ) -> tuple[int, datetime | None, list[str], list[str]]:
    """The window's shadow rows, the first one's time, and the production versions and
    topics they name."""
    s = shadow_view.c
    n, first = conn.execute(_shadow_filter(select(func.count(), func.min(s.processed_at)),
                                           deployment, version, since)).one()
    named = conn.execute(_shadow_filter(select(s.production_version, s.topic).distinct(),
                                        deployment, version, since)).all()
    return (int(n), first, sorted({r.production_version for r in named}),
            sorted({r.topic for r in named}))


def _production_rows(conn: Connection, versions: Sequence[str], topics: Sequence[str],
                     start: datetime) -> int:
    a = verdicts_view.c
    return int(conn.execute(select(func.count()).select_from(verdicts_view).where(
        a.model_version.in_(versions), a.topic.in_(topics),
        a.processed_at >= start)).scalar_one())


def shadow_comparison(conn: Connection, deployment: str, version: str | None = None,
                      since: datetime | None = None,
                      truth: Mapping[str, TruthEntry] | None = None,
                      *, listed: int = CHANGES_LISTED) -> dict[str, Any]:
    """The shadow report of ``deployment`` (JSON-safe): the shadow ``version`` (default: the
    current one) against production on the same events, and both against the manifests.

    *Coverage* is shadow rows / production rows of the production versions they name, on
    their topics, since the earlier of the first shadow row and the production verdict of
    the first shadowed event (a shadow verdict is written just after production's).
    """
    version = version or shadow_version(conn, deployment)
    if version is None:
        raise EvidenceError(f"deployment {deployment} has no shadow version and no shadow "
                            "verdicts")
    pairs = shadow_pairs(conn, deployment=deployment, version=version, since=since)
    shadow_rows, first_shadow, prod_versions, topics = _shadow_window(conn, deployment,
                                                                      version, since)
    production_rows = 0
    if first_shadow is not None:
        start = min([first_shadow, *(p.production_at for p in pairs)])
        production_rows = _production_rows(conn, prod_versions, topics, start)
    verdicts = [(p.shadow, p.production) for p in pairs]
    classes = class_counts(conn, [version, *prod_versions])
    scoped = in_scope(verdicts, classes)
    shadow_side = side_numbers(version, [s for s, _ in scoped], events=len(pairs), truth=truth)
    prod_side = side_numbers(",".join(prod_versions), [p for _, p in scoped],
                             events=len(pairs), truth=truth)
    report = {
        "deployment": deployment, "version": version, "production_versions": prod_versions,
        "topics": topics, "since": since.isoformat() if since else None,
        "window": {"from": pairs[0].shadow_at.isoformat() if pairs else None,
                   "to": pairs[-1].shadow_at.isoformat() if pairs else None},
        "shadow_rows": shadow_rows, "production_rows": production_rows,
        "coverage": _rate(shadow_rows, production_rows),
        **agreement(verdicts, listed=listed),
        "shadow": shadow_side.as_json(), "production": prod_side.as_json(),
        "audit_quality": None,
    }
    if truth is not None:
        report["audit_quality"] = {name: _quality(rows, truth) for name, rows in (
            ("shadow", [s for s, _ in scoped]), ("production", [p for _, p in scoped]))}
    return dict(json_safe(report))

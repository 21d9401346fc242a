"""What ``binaudit model register|promote|rollback|list|show`` do (no Typer here).

Registration validates an artifact by loading it, records its checksum and, with an upload
prefix, copies it to S3 first. Promotion to production is gated (``core.evidence``): the
candidate's numbers on events that production also answered, from a pair of finished
backtest runs or from its shadow verdicts, must not be worse than production's by more than
``settings.registry``'s margins; a refusal writes nothing, ``force`` promotes anyway and
records it. Every stage change and the evidence behind it land in the append-only history
through ``core.registry.set_stage``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, select, text, update

from core import artifacts, evidence
from core.evidence import Decision, EvidenceError, ModelNumbers
from core.model.artifact import load_artifact
from core.registry import (
    RegistryError,
    Stage,
    StageChange,
    deployment_models,
    previous_production,
    register_version,
    set_stage,
    stage_of,
    version_exists,
)
from core.settings import RegistrySettings, S3Settings
from core.tables import backtest_runs, model_stages, model_versions
from core.truth import TruthEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registered:
    version: str
    artifact_uri: str
    sha256: str
    inserted: bool
    stage: str | None = None  # in the deployment asked for, after registration
    staged_now: bool = False


def _existing(conn: Connection, version: str) -> Any:
    return conn.execute(select(model_versions.c.sha256, model_versions.c.artifact_uri).where(
        model_versions.c.version == version)).first()


def register_artifact(engine: Engine, directory: Path, *, upload_to: str | None = None,
                      s3: S3Settings | None = None, deployment: str | None = None,
                      actor: str = "binaudit", reason: str = "registered") -> Registered:
    """Record the artifact (idempotent on its version and contents); with ``upload_to`` copy
    it to ``<upload_to>/<version>/`` and record that URI; with ``deployment`` make it a
    candidate there unless it already has a stage."""
    directory = directory.resolve()
    _, card = load_artifact(directory)  # refuses anything the worker could not load
    checksum = artifacts.tree_sha256(directory)
    with engine.connect() as conn:
        before = _existing(conn, card.version)
    if before is not None and before.sha256 not in (None, checksum):
        raise RegistryError(f"version {card.version} is already registered with other contents "
                            f"(sha256 {before.sha256[:12]}, this artifact {checksum[:12]}); a "
                            "changed model needs a new version")
    uri = directory.as_uri()
    if upload_to is not None:
        if s3 is None:
            raise ValueError("an upload needs the S3 settings")
        uri = upload_to.rstrip("/") + f"/{card.version}/"
        if artifacts.upload(directory, uri, s3) != checksum:
            raise RegistryError(f"{directory} changed while it was uploaded; upload it again")
    with engine.begin() as conn:
        inserted = register_version(conn, version=card.version, architecture=card.architecture,
                                    artifact_uri=uri, card=card.model_dump(mode="json"),
                                    metrics=card.metrics or None, sha256=checksum)
        if not inserted and artifacts.is_s3(uri):
            # The same contents moved to S3: processes on other machines can now fetch it
            # (the checksum, which they verify, is unchanged).
            conn.execute(update(model_versions).where(model_versions.c.version == card.version)
                         .values(artifact_uri=uri))
        stage, staged = None, False
        if deployment is not None:
            stage = stage_of(conn, deployment, card.version)
            if stage is None:
                set_stage(conn, deployment=deployment, version=card.version,
                          to_stage="candidate", actor=actor, reason=reason)
                stage, staged = "candidate", True
    log.info("registered %s at %s (sha256 %s)", card.version, uri, checksum[:12])
    return Registered(card.version, uri, checksum, inserted, stage, staged)


# ---- the gate -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromotionRequest:
    deployment: str
    version: str
    to_stage: Stage
    reason: str
    actor: str
    topic: str  # where backtest evidence is looked for
    evidence_runs: tuple[str, ...] = ()
    truth: Mapping[str, TruthEntry] | None = field(default=None, repr=False)
    truth_path: str | None = None
    force: bool = False


@dataclass(frozen=True)
class GateResult:
    """The gate's numbers and decision; ``source`` names the evidence (None: none found)."""

    production: str
    source: dict[str, Any] | None
    candidate_numbers: ModelNumbers | None
    production_numbers: ModelNumbers | None
    decision: Decision

    def as_json(self, cfg: RegistrySettings) -> dict[str, Any]:
        return {
            "gate": "passed" if self.decision.passed else "failed",
            "source": self.source, "production_version": self.production,
            "candidate": self.candidate_numbers.as_json() if self.candidate_numbers else None,
            "production": (self.production_numbers.as_json() if self.production_numbers
                           else None),
            "margins": {"accuracy": cfg.accuracy_margin, "quality": cfg.quality_margin,
                        "min_events": cfg.min_evidence_events,
                        "max_age_h": cfg.max_evidence_age_h},
            "failures": self.decision.failures,
        }


class PromotionRefused(RegistryError):
    """The gate refused a promotion to production; ``gate`` holds the numbers."""

    def __init__(self, gate: GateResult) -> None:
        super().__init__("; ".join(gate.decision.failures))
        self.gate = gate


_BACKTEST_PAIR = text("""
SELECT c.run_id AS candidate_run, p.run_id AS production_run, count(*) AS common
FROM backtest_runs c
JOIN backtest_runs p ON p.topic = c.topic
JOIN backtest_results rc ON rc.run_id = c.run_id
JOIN backtest_results rp ON rp.run_id = p.run_id AND rp.event_id = rc.event_id
WHERE c.model_version = :candidate AND p.model_version = :production AND c.topic = :topic
  AND c.status = 'finished' AND p.status = 'finished'
  AND c.finished_at >= :since AND p.finished_at >= :since
  AND rc.status <> 'error' AND rp.status <> 'error'
GROUP BY c.run_id, p.run_id, c.finished_at, p.finished_at
HAVING count(*) >= :min_events
ORDER BY least(c.finished_at, p.finished_at) DESC, c.finished_at DESC, p.finished_at DESC
LIMIT 1
""")


def newest_backtest_pair(conn: Connection, *, candidate: str, production: str, topic: str,
                         since: datetime, min_events: int) -> tuple[str, str] | None:
    """The newest pair of finished runs (candidate, production) on ``topic`` finished since
    ``since`` that share at least ``min_events`` judged events."""
    row = conn.execute(_BACKTEST_PAIR, {"candidate": candidate, "production": production,
                                        "topic": topic, "since": since,
                                        "min_events": min_events}).first()
    return None if row is None else (row.candidate_run, row.production_run)


def checked_runs(conn: Connection, run_ids: tuple[str, ...], *, candidate: str,
                 production: str, since: datetime) -> tuple[str, str]:
    """The (candidate, production) runs among two given run ids, refused unless both are
    finished, recent and of those two versions."""
    if len(run_ids) != 2:
        raise EvidenceError("--evidence takes two backtest run ids: one of the candidate, one "
                            "of the production version")
    runs = {r.run_id: r for r in conn.execute(select(backtest_runs).where(
        backtest_runs.c.run_id.in_(run_ids))).all()}
    for run_id in run_ids:
        run = runs.get(run_id)
        if run is None:
            raise EvidenceError(f"no backtest run {run_id}")
        if run.status != "finished" or run.finished_at is None:
            raise EvidenceError(f"backtest run {run_id} is {run.status}, not finished")
        if run.finished_at < since:
            raise EvidenceError(f"backtest run {run_id} finished at "
                                f"{run.finished_at.isoformat(timespec='minutes')}, before the "
                                f"evidence age limit ({since.isoformat(timespec='minutes')})")
    by_version = {runs[r].model_version: r for r in run_ids}
    if set(by_version) != {candidate, production}:
        raise EvidenceError(f"--evidence runs are of {sorted(by_version)}; expected one of "
                            f"{candidate} and one of {production}")
    return by_version[candidate], by_version[production]


def _backtest_gate(conn: Connection, runs: tuple[str, str]
                   ) -> tuple[dict[str, Any], list[evidence.Verdict], list[evidence.Verdict]]:
    topic = conn.execute(select(backtest_runs.c.topic).where(
        backtest_runs.c.run_id == runs[0])).scalar_one()
    source = {"kind": "backtest", "candidate_run": runs[0], "production_run": runs[1],
              "topic": topic}
    return source, evidence.backtest_verdicts(conn, runs[0]), evidence.backtest_verdicts(
        conn, runs[1])


def evaluate_gate(conn: Connection, req: PromotionRequest, production: str,
                  cfg: RegistrySettings, *, now: datetime | None = None) -> GateResult:
    """Find the evidence (the given runs, else the newest qualifying backtest pair, else the
    shadow window) and compare the candidate with ``production`` on it."""
    since = (now or datetime.now(UTC)) - timedelta(hours=cfg.max_evidence_age_h)
    if req.evidence_runs:
        runs = checked_runs(conn, req.evidence_runs, candidate=req.version,
                            production=production, since=since)
        source, cand, prod = _backtest_gate(conn, runs)
    elif pair := newest_backtest_pair(conn, candidate=req.version, production=production,
                                      topic=req.topic, since=since,
                                      min_events=cfg.min_evidence_events):
        source, cand, prod = _backtest_gate(conn, pair)
    else:
        pairs = evidence.shadow_pairs(conn, deployment=req.deployment, version=req.version,
                                      production_version=production, since=since)
        if len(pairs) < cfg.min_evidence_events:
            return _no_evidence(req, production, cfg, shadowed=len(pairs))
        source = {"kind": "shadow", "deployment": req.deployment, "events": len(pairs),
                  "from": pairs[0].shadow_at.isoformat(), "to": pairs[-1].shadow_at.isoformat()}
        cand = [p.shadow for p in pairs]
        prod = [p.production for p in pairs]
    if req.truth_path is not None:
        source["truth"] = req.truth_path
    numbers = evidence.compare(cand, prod, candidate_version=req.version,
                               production_version=production,
                               classes=evidence.class_counts(conn, [req.version, production]),
                               truth=req.truth)
    return GateResult(production, source, *numbers, evidence.gate_decision(*numbers, cfg))


def _no_evidence(req: PromotionRequest, production: str, cfg: RegistrySettings, *,
                 shadowed: int) -> GateResult:
    why = (f"no evidence: no pair of finished backtest runs of {req.version} and {production} "
           f"on topic {req.topic} sharing {cfg.min_evidence_events} events in the last "
           f"{cfg.max_evidence_age_h:g} h, and {shadowed} shadow verdicts of {req.version} "
           f"next to {production}'s in {req.deployment} (needs {cfg.min_evidence_events})")
    return GateResult(production, None, None, None, Decision(False, [why], []))


def promote(engine: Engine, req: PromotionRequest, cfg: RegistrySettings, *,
            now: datetime | None = None) -> tuple[list[StageChange], GateResult | None]:
    """Move ``req.version`` to ``req.to_stage``; production goes through the gate unless the
    deployment has none yet. Raises :class:`PromotionRefused` (nothing written)."""
    with engine.begin() as conn:
        if not version_exists(conn, req.version):
            raise RegistryError(f"model version {req.version} is not registered "
                                "(binaudit model register ARTIFACT)")
        if stage_of(conn, req.deployment, req.version) == req.to_stage:
            raise RegistryError(f"{req.version} is already {req.to_stage} in {req.deployment}")
        current = deployment_models(conn, req.deployment).production
        if req.to_stage != "production" or current is None:
            note = ({"gate": "none: first production version of the deployment"}
                    if req.to_stage == "production" else None)
            return _set(conn, req, note, forced=False), None
        gate = evaluate_gate(conn, req, current.version, cfg, now=now)
        if not gate.decision.passed and not req.force:
            raise PromotionRefused(gate)
        forced = not gate.decision.passed
        changes = _set(conn, req, {**gate.as_json(cfg), "forced": forced}, forced=forced)
        displaced = [c.version for c in changes if c.from_stage == "production"
                     and c.version != req.version]
        if displaced != [current.version]:  # another promotion got in between: roll back
            raise RegistryError(f"production of {req.deployment} changed while the gate ran "
                                f"(now {displaced}); run the promotion again")
        return changes, gate


def _set(conn: Connection, req: PromotionRequest, note: dict[str, Any] | None, *,
         forced: bool) -> list[StageChange]:
    return set_stage(conn, deployment=req.deployment, version=req.version,
                     to_stage=req.to_stage, actor=req.actor, reason=req.reason,
                     evidence=note, forced=forced)


def rollback(engine: Engine, *, deployment: str, reason: str, actor: str) -> list[StageChange]:
    """Make the previous production version production again (no gate: it was before)."""
    if not reason.strip():
        raise RegistryError("a rollback needs a reason")
    with engine.begin() as conn:
        current = deployment_models(conn, deployment).production
        previous = previous_production(conn, deployment)
        if previous is None:
            raise RegistryError(f"{deployment} has no previous production version to roll "
                                "back to")
        return set_stage(conn, deployment=deployment, version=previous,
                         to_stage="production", actor=actor, reason=f"rollback: {reason}",
                         evidence={"rollback": True,
                                   "from_version": current.version if current else None})


# ---- reading ----------------------------------------------------------------------------------

def versions(conn: Connection, *, deployment: str | None = None, version: str | None = None
             ) -> list[dict[str, Any]]:
    """Registered versions (or the one named), newest first, each with its stages by
    deployment (with ``deployment``: only the versions that have a stage there)."""
    query = select(model_versions).order_by(model_versions.c.registered_at.desc(),
                                            model_versions.c.version)
    if version is not None:
        query = query.where(model_versions.c.version == version)
    rows = conn.execute(query).all()
    stages = stages_by_version(conn)
    out = [{**row._mapping, "stages": stages.get(row.version, {})} for row in rows]
    if deployment is not None:
        out = [v for v in out if deployment in v["stages"]]
    return out


def stages_by_version(conn: Connection) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for r in conn.execute(select(model_stages).order_by(model_stages.c.deployment)).all():
        found.setdefault(r.version, {})[r.deployment] = r.stage
    return found

"""The model registry: versions, their stage in each named deployment, and the history.

A deployment (default: one per topic) has at most one ``production`` and one ``shadow``
version; any number of ``candidate`` and ``archived`` ones. Every stage change is one
transaction that writes the new stages and one ``model_stage_history`` row per version
moved, under a per-deployment advisory lock (two promotions of one deployment never
interleave); a trigger then notifies ``binaudit_model_stages`` with the deployment's name on
commit (migration 0009), which :class:`StageListener` waits for.

Promoting a version to production archives the one it replaces; a new shadow sends the old
shadow back to candidate. A rollback is a promotion of the version that was production before
the current one, found in the history.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, Engine, func, text
from sqlalchemy import select as sql_select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.pool import NullPool

from core.db import make_engine
from core.settings import DatabaseSettings
from core.tables import model_stage_history, model_stages, model_versions

log = logging.getLogger(__name__)

Stage = Literal["candidate", "shadow", "production", "archived"]
CHANNEL = "binaudit_model_stages"
# What the version that held a stage becomes when another version takes it.
DISPLACED_TO: dict[str, Stage] = {"production": "archived", "shadow": "candidate"}


class RegistryError(ValueError):
    """A stage change that cannot be made (unknown version, nothing to roll back to, ...)."""


@dataclass(frozen=True)
class ModelRef:
    version: str
    artifact_uri: str
    sha256: str | None
    card: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class DeploymentModels:
    """What a deployment runs right now."""

    deployment: str
    production: ModelRef | None
    shadow: ModelRef | None

    def versions(self) -> tuple[str | None, str | None]:
        return (self.production.version if self.production else None,
                self.shadow.version if self.shadow else None)


@dataclass(frozen=True)
class StageChange:
    deployment: str
    version: str
    from_stage: str | None
    to_stage: str
    actor: str
    reason: str
    evidence: dict[str, Any] | None = None
    forced: bool = False
    db_user: str | None = None
    at: datetime | None = None
    id: int | None = None


def register_version(conn: Connection, *, version: str, architecture: str, artifact_uri: str,
                     card: dict[str, Any], metrics: dict[str, Any] | None,
                     sha256: str | None = None) -> bool:
    """Record an artifact (idempotent on the version); True if it was new. A checksum learnt
    later (an artifact first registered by path, then uploaded) fills an empty one."""
    stmt = insert(model_versions).values(
        version=version, architecture=architecture, artifact_uri=artifact_uri, card=card,
        metrics=metrics or None, sha256=sha256)
    if sha256 is None:
        inserted = conn.execute(stmt.on_conflict_do_nothing(
            index_elements=[model_versions.c.version])).rowcount == 1
        return bool(inserted)
    result = conn.execute(stmt.on_conflict_do_update(
        index_elements=[model_versions.c.version],
        set_={"sha256": sha256, "artifact_uri": artifact_uri},
        where=model_versions.c.sha256.is_(None)).returning(
            text("xmax = 0 AS inserted")))
    row = result.first()
    return bool(row and row.inserted)


def _lock(conn: Connection, deployment: str) -> None:
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                 {"k": f"binaudit-model-stages:{deployment}"})


def _ref(row: Any) -> ModelRef:
    return ModelRef(version=row.version, artifact_uri=row.artifact_uri, sha256=row.sha256,
                    card=dict(row.card or {}))


def deployment_models(conn: Connection, deployment: str) -> DeploymentModels:
    rows = conn.execute(
        sql_select(model_stages.c.stage, model_versions.c.version, model_versions.c.artifact_uri,
                   model_versions.c.sha256, model_versions.c.card)
        .join(model_versions, model_versions.c.version == model_stages.c.version)
        .where(model_stages.c.deployment == deployment,
               model_stages.c.stage.in_(("production", "shadow")))).all()
    by_stage = {r.stage: _ref(r) for r in rows}
    return DeploymentModels(deployment, by_stage.get("production"), by_stage.get("shadow"))


def stage_of(conn: Connection, deployment: str, version: str) -> str | None:
    return conn.execute(sql_select(model_stages.c.stage).where(
        model_stages.c.deployment == deployment,
        model_stages.c.version == version)).scalar_one_or_none()


def version_exists(conn: Connection, version: str) -> bool:
    return conn.execute(sql_select(func.count()).select_from(model_versions).where(
        model_versions.c.version == version)).scalar_one() > 0


def _move(conn: Connection, change: StageChange) -> StageChange:
    conn.execute(insert(model_stages).values(
        deployment=change.deployment, version=change.version, stage=change.to_stage
    ).on_conflict_do_update(index_elements=[model_stages.c.deployment, model_stages.c.version],
                            set_={"stage": change.to_stage, "updated_at": func.now()}))
    row = conn.execute(insert(model_stage_history).values(
        deployment=change.deployment, version=change.version, from_stage=change.from_stage,
        to_stage=change.to_stage, actor=change.actor, reason=change.reason,
        evidence=change.evidence, forced=change.forced,
    ).returning(model_stage_history.c.id, model_stage_history.c.at,
                model_stage_history.c.db_user)).one()
    return StageChange(**{**change.__dict__, "id": row.id, "at": row.at, "db_user": row.db_user})


def set_stage(conn: Connection, *, deployment: str, version: str, to_stage: Stage, actor: str,
              reason: str, evidence: dict[str, Any] | None = None, forced: bool = False
              ) -> list[StageChange]:
    """Move ``version`` to ``to_stage`` in ``deployment`` (in the caller's transaction); the
    version holding a single-holder stage is displaced. Returns the changes, newest last."""
    if not reason.strip():
        raise RegistryError("a stage change needs a reason")
    _lock(conn, deployment)
    if not version_exists(conn, version):
        raise RegistryError(f"model version {version} is not registered "
                            "(binaudit model register ARTIFACT)")
    current = stage_of(conn, deployment, version)
    if current == to_stage:
        raise RegistryError(f"{version} is already {to_stage} in {deployment}")
    changes: list[StageChange] = []
    if to_stage in DISPLACED_TO:
        holder = conn.execute(sql_select(model_stages.c.version).where(
            model_stages.c.deployment == deployment,
            model_stages.c.stage == to_stage)).scalar_one_or_none()
        if holder is not None:
            changes.append(_move(conn, StageChange(
                deployment, holder, to_stage, DISPLACED_TO[to_stage], actor,
                f"replaced by {version}: {reason}")))
    changes.append(_move(conn, StageChange(deployment, version, current, to_stage, actor,
                                           reason, evidence, forced)))
    return changes


def previous_production(conn: Connection, deployment: str) -> str | None:
    """The version that was production before the current one (None: there was none)."""
    current = deployment_models(conn, deployment).production
    rows = conn.execute(sql_select(model_stage_history.c.version).where(
        model_stage_history.c.deployment == deployment,
        model_stage_history.c.to_stage == "production").order_by(
            model_stage_history.c.id.desc())).scalars().all()
    for version in rows:
        if current is None or version != current.version:
            return str(version)
    return None


def bootstrap_production(conn: Connection, *, deployment: str, version: str, actor: str
                         ) -> bool:
    """Make ``version`` production when the deployment has none yet (the first process that
    runs a deployment records what it was configured with); True if it did."""
    _lock(conn, deployment)
    if deployment_models(conn, deployment).production is not None:
        return False
    set_stage(conn, deployment=deployment, version=version, to_stage="production", actor=actor,
              reason="bootstrap: the deployment had no production version; the first process "
                     "recorded its configured model")
    return True


def history(conn: Connection, *, deployment: str | None = None, version: str | None = None,
            limit: int = 200) -> list[StageChange]:
    """Stage changes, oldest first (the last ``limit``)."""
    h = model_stage_history.c
    query = sql_select(model_stage_history).order_by(h.id.desc()).limit(limit)
    if deployment is not None:
        query = query.where(h.deployment == deployment)
    if version is not None:
        query = query.where(h.version == version)
    rows = conn.execute(query).all()
    return [StageChange(deployment=r.deployment, version=r.version, from_stage=r.from_stage,
                        to_stage=r.to_stage, actor=r.actor, reason=r.reason,
                        evidence=r.evidence, forced=r.forced, db_user=r.db_user, at=r.at,
                        id=r.id) for r in reversed(rows)]


class StageListener:
    """``LISTEN binaudit_model_stages`` on a connection of its own (psycopg2).

    ``wait(timeout)`` returns the deployments announced meanwhile (empty on timeout). A lost
    connection is reopened on the next call; callers poll the registry as well, so a
    notification missed while it was down delays a switch by one poll at most.
    """

    def __init__(self, cfg: DatabaseSettings) -> None:
        self._engine: Engine = make_engine(cfg, poolclass=NullPool,
                                           connect_args={"connect_timeout": 5})
        self._conn: Any = None

    def __enter__(self) -> StageListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
        self._engine.dispose()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                self._conn.close()
            self._conn = None

    def _open(self) -> Any:
        raw = self._engine.raw_connection()
        dbapi = raw.driver_connection
        assert dbapi is not None  # a fresh connection from a NullPool engine
        dbapi.autocommit = True
        with dbapi.cursor() as cur:
            cur.execute(f"LISTEN {CHANNEL}")
        self._conn = raw
        return dbapi

    def wait(self, timeout_s: float) -> set[str]:
        try:
            dbapi = self._conn.driver_connection if self._conn is not None else self._open()
            if not dbapi.notifies and select.select([dbapi], [], [], timeout_s) == ([], [], []):
                return set()
            dbapi.poll()
            names = {n.payload for n in dbapi.notifies}
            dbapi.notifies.clear()
            return names
        except Exception as exc:  # noqa: BLE001 - the poll fallback covers the outage
            log.warning("registry listener lost its connection (%s); polling until it is back",
                        type(exc).__name__)
            self._close()
            time.sleep(min(timeout_s, 5.0))  # a database that is down is not polled hot
            return set()

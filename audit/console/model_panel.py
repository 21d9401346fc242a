"""The overview's *Model* panel: what a deployment runs and how its shadow compares.

Production and shadow versions of the deployment with the stage change that put each there
(``model_stage_history``, newest first), and, while a shadow is set, its shadow report
(``core.evidence.shadow_comparison``: events compared, coverage, count and verdict agreement,
the verdicts that would change by transition, accuracy of both against the manifests).

Reads only the auditors' views (``model_deployments``, ``model_stage_changes`` here; the
shadow report reads ``shadow_verdicts``, ``verdicts`` and ``console_models``), so it runs
under the viewer's read-only role like the rest of the console.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, column, func, select, table

from audit.console.accounts import Account
from audit.console.database import as_account
from core.evidence import shadow_comparison

deployments_view = table("model_deployments", column("deployment"), column("version"),
                         column("stage"), column("updated_at"))
changes_view = table("model_stage_changes", *(column(c) for c in (
    "id", "deployment", "version", "from_stage", "to_stage", "actor", "at", "reason",
    "forced")))
# Deployment names offered as links: the most recently changed ones.
MAX_DEPLOYMENTS_LISTED = 50


@dataclass(frozen=True)
class StageEvent:
    """One row of the stage history: ``version`` went ``from_stage`` -> ``to_stage``."""

    version: str
    from_stage: str | None
    to_stage: str
    at: datetime
    actor: str
    reason: str
    forced: bool


@dataclass(frozen=True)
class ModelPanel:
    deployment: str
    production: str | None
    shadow: str | None
    # The change that made the current production version production: the last promotion
    # (a rollback is a promotion too).
    promoted: StageEvent | None
    shadow_since: StageEvent | None
    report: dict[str, Any] | None  # shadow_comparison's report; None without a shadow
    deployments: tuple[str, ...]  # every deployment the registry knows, for the links

    @property
    def changed_transitions(self) -> list[dict[str, Any]]:
        """The report's (production -> shadow) status pairs that differ, most first."""
        if self.report is None:
            return []
        return [t for t in self.report["transitions"] if t["changed"]]


def _last_change(conn: Connection, deployment: str, version: str, stage: str
                 ) -> StageEvent | None:
    c = changes_view.c
    row = conn.execute(select(c.version, c.from_stage, c.to_stage, c.at, c.actor, c.reason,
                              c.forced)
                       .where(c.deployment == deployment, c.version == version,
                              c.to_stage == stage)
                       .order_by(c.id.desc()).limit(1)).first()
    return None if row is None else StageEvent(*row)


def known_deployments(conn: Connection) -> tuple[str, ...]:
    """The deployments whose stages changed last (at most MAX_DEPLOYMENTS_LISTED), by name."""
    d = deployments_view.c
    rows = conn.execute(select(d.deployment).group_by(d.deployment)
                        .order_by(func.max(d.updated_at).desc())
                        .limit(MAX_DEPLOYMENTS_LISTED)).scalars().all()
    return tuple(sorted(str(r) for r in rows))


def model_panel(conn: Connection, deployment: str) -> ModelPanel:
    """The panel's data for ``deployment`` (one transaction of the caller's)."""
    d = deployments_view.c
    stages = {r.stage: str(r.version) for r in conn.execute(
        select(d.stage, d.version).where(d.deployment == deployment,
                                         d.stage.in_(("production", "shadow"))))}
    production, shadow = stages.get("production"), stages.get("shadow")
    promoted = (_last_change(conn, deployment, production, "production")
                if production else None)
    since = _last_change(conn, deployment, shadow, "shadow") if shadow else None
    # The shadow set now, on all of its verdicts in this deployment; rows of an earlier
    # shadow are the CLI's business (`binaudit shadow report --version`).
    report = shadow_comparison(conn, deployment, shadow) if shadow else None
    return ModelPanel(deployment, production, shadow, promoted, since, report,
                      known_deployments(conn))


def cached_panel(console: Any, account: Account, deployment: str) -> ModelPanel:
    """The panel, cached like the overview's aggregates (``console.overview_cache_s``: the
    shadow report reads every shadow verdict of the version). Only deployments the registry
    knows are cached, so made-up names in the URL cannot grow the cache."""
    cache: dict[str, tuple[float, ModelPanel]] = console.model_cache
    cached = cache.get(deployment)
    if cached and time.monotonic() - cached[0] < console.settings.console.overview_cache_s:
        return cached[1]
    with as_account(console.engine, account) as conn:
        panel = model_panel(conn, deployment)
    if panel.production or panel.shadow:
        cache[deployment] = (time.monotonic(), panel)
    return panel

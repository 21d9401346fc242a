"""The overview's Model panel over HTTP (in-process client, real Postgres, viewer role): the
deployment's production and shadow versions with their last stage change, and the shadow
report's numbers equal to a direct SQL computation from the rows; no shadow, no report."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, insert, text

from audit.console.accounts import upsert_account
from audit.console.app import create_app
from core.registry import register_version, set_stage
from core.settings import Settings
from core.tables import audit_results, shadow_results
from tests.audit.console_client import signed_in
from tests.console_fixtures import PASSWORDS, VIEWER

pytestmark = pytest.mark.services
CLASSES = [1, 2, 3, 4, 5]
STATUSES = ("match", "mismatch", "uncertain")
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Deployment:
    name: str
    production: str
    shadow: str | None


def _register(conn: Connection, version: str) -> None:
    register_version(conn, version=version, architecture="efficientnet_lite0",
                     artifact_uri=f"file:///models/{uuid.uuid4().hex}",
                     card={"class_counts": CLASSES}, metrics=None)


def _verdict(rng: random.Random, expected: int) -> tuple[int, str]:
    if expected not in CLASSES:
        return rng.choice(CLASSES), "unsupported"
    predicted = expected if rng.random() < 0.6 else rng.choice(CLASSES)
    return predicted, rng.choice(STATUSES)


def _seed(conn: Connection, name: str, *, shadowed: bool, events: int = 40,
          seed: int = 7) -> Deployment:
    """Production verdicts on ``events`` events of topic ``name``; with a shadow, shadow
    verdicts on every event but the first five and the last three (partial coverage), some
    of them on counts the cards do not support."""
    suffix = uuid.uuid4().hex[:8]
    production = f"prod-{suffix}"
    # Markup in a version name and a reason must come out as text, never as markup.
    shadow = f"cand-<script>alert(1)</script>-{suffix}" if shadowed else None
    for version in filter(None, (production, shadow)):
        _register(conn, version)
    set_stage(conn, deployment=name, version=production, to_stage="production",
              actor="ops-1", reason="first production <b>bold</b>")
    if shadow:
        set_stage(conn, deployment=name, version=shadow, to_stage="shadow", actor="ops-2",
                  reason="try the candidate on live traffic")
    rng = random.Random(seed)
    for i in range(events):
        event = f"evt-{suffix}-{i}"
        expected = 7 if i % 9 == 0 else rng.choice(CLASSES)
        predicted, status = _verdict(rng, expected)
        at = T0 + timedelta(seconds=10 * i)
        where = {"event_id": event, "bin_id": f"bin-{i}", "expected_quantity": expected,
                 "topic": name, "partition": 0, "offset": i}
        conn.execute(insert(audit_results).values(
            **where, image_uri=f"s3://b/bin-images/{i}.jpg", captured_at=at,
            predicted_quantity=predicted, status=status, model_version=production,
            processed_at=at))
        if shadow and 5 <= i < events - 3:
            s_predicted, s_status = _verdict(rng, expected)
            conn.execute(insert(shadow_results).values(
                **where, deployment=name, model_version=shadow,
                production_version=production, predicted_quantity=s_predicted,
                status=s_status, processed_at=at + timedelta(seconds=1)))
    return Deployment(name, production, shadow)


PAIRS = """
FROM shadow_results s JOIN audit_results a
  ON a.event_id = s.event_id AND a.model_version = s.production_version
WHERE s.deployment = :d AND s.model_version = :v
"""


def _direct(conn: Connection, d: Deployment) -> dict[str, Any]:
    """The shadow report's numbers straight from the tables."""
    params = {"d": d.name, "v": d.shadow}
    row = conn.execute(text(f"""
        SELECT count(*) AS events,
               count(*) FILTER (WHERE s.status = a.status) AS same_status,
               count(*) FILTER (WHERE s.predicted_quantity = a.predicted_quantity) AS same_count,
               count(*) FILTER (WHERE s.expected_quantity = ANY(:classes)) AS scoped,
               count(*) FILTER (WHERE s.expected_quantity = ANY(:classes)
                                AND s.predicted_quantity = s.expected_quantity) AS s_right,
               count(*) FILTER (WHERE a.expected_quantity = ANY(:classes)
                                AND a.predicted_quantity = a.expected_quantity) AS a_right,
               least(min(s.processed_at), min(a.processed_at)) AS start
        {PAIRS}"""), {**params, "classes": CLASSES}).one()
    changed = conn.execute(text(f"""
        SELECT a.status AS production, s.status AS shadow, count(*) AS n {PAIRS}
          AND s.status <> a.status GROUP BY 1, 2"""), params).all()
    production_rows = conn.execute(text(
        "SELECT count(*) FROM audit_results WHERE model_version = :p AND processed_at >= :t"),
        {"p": d.production, "t": row.start}).scalar_one()
    shadow_rows = conn.execute(text(
        "SELECT count(*) FROM shadow_results WHERE deployment = :d AND model_version = :v"),
        params).scalar_one()
    return {"events": row.events, "same_status": row.same_status,
            "same_count": row.same_count, "scoped": row.scoped, "s_right": row.s_right,
            "a_right": row.a_right, "coverage": (shadow_rows, production_rows),
            "changed": {(r.production, r.shadow): r.n for r in changed}}


def pct(hits: int, n: int) -> str:
    return f"{100 * hits / n:.1f}%"


def cell(html: str, ident: str) -> str:
    match = re.search(rf'id="{ident}"[^>]*>(.*?)</', html, re.DOTALL)
    assert match, f"no #{ident} on the page"
    return unescape(match.group(1)).strip()


@pytest.fixture
def viewer(db_engine: Engine) -> None:
    with db_engine.begin() as conn:
        upsert_account(conn, name=VIEWER, role="viewer", password=PASSWORDS[VIEWER])


def test_model_panel_shows_the_shadow_report_of_the_configured_deployment(
        settings_factory: Callable[..., Settings], db_engine: Engine, viewer: None) -> None:
    name = f"dc-{uuid.uuid4().hex[:10]}"
    with db_engine.begin() as conn:
        d = _seed(conn, name, shadowed=True)
    with db_engine.connect() as conn:
        want = _direct(conn, d)
    assert want["events"] == 32 and want["changed"], "the seed compares nothing"

    client = signed_in(create_app(settings_factory(kafka={"topic": name})), VIEWER)
    page = client.get("/overview")
    assert page.status_code == 200
    html = page.text
    assert cell(html, "model-deployment") == name
    assert cell(html, "model-production") == d.production
    assert cell(html, "model-shadow") == d.shadow
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert "<b>bold</b>" not in html and "first production &lt;b&gt;bold&lt;/b&gt;" in html
    with db_engine.connect() as conn:
        promoted = conn.execute(text(
            "SELECT at FROM model_stage_history WHERE deployment = :d AND version = :v "
            "AND to_stage = 'production' ORDER BY id DESC LIMIT 1"),
            {"d": name, "v": d.production}).scalar_one()
    assert cell(html, "model-promoted-at") == promoted.astimezone(UTC).strftime(
        "%Y-%m-%d %H:%M UTC")

    n = want["events"]
    assert cell(html, "shadow-events") == str(n)
    assert cell(html, "shadow-coverage") == pct(*want["coverage"])
    assert cell(html, "shadow-verdict-agreement") == pct(want["same_status"], n)
    assert cell(html, "shadow-count-agreement") == pct(want["same_count"], n)
    assert cell(html, "shadow-changed") == str(sum(want["changed"].values()))
    shown = {(unescape(a), unescape(b)): int(k) for a, b, k in re.findall(
        r'class="transition" data-from="([^"]+)" data-to="([^"]+)">[^<]*<strong>(\d+)<',
        html)}
    assert shown == want["changed"]
    assert cell(html, "shadow-accuracy") == pct(want["s_right"], want["scoped"])
    assert cell(html, "production-accuracy") == pct(want["a_right"], want["scoped"])


def test_a_deployment_without_shadow_shows_no_shadow_report(
        settings_factory: Callable[..., Settings], db_engine: Engine, viewer: None) -> None:
    shadowed, plain = (f"dc-{uuid.uuid4().hex[:10]}" for _ in range(2))
    with db_engine.begin() as conn:
        _seed(conn, shadowed, shadowed=True)
        d = _seed(conn, plain, shadowed=False)
    client = signed_in(create_app(settings_factory(kafka={"topic": plain})), VIEWER)
    html = client.get("/overview").text
    assert cell(html, "model-production") == d.production
    assert cell(html, "model-shadow") == "none"
    assert 'id="shadow-report"' not in html and "Shadow report" not in html
    # The other deployment, chosen in the URL, has one; the page links both.
    other = client.get("/overview", params={"deployment": shadowed}).text
    assert 'id="shadow-report"' in other and cell(other, "shadow-events") == "32"
    assert f"deployment={plain}" in other and f"deployment={shadowed}" in other
    # A deployment nobody registered: no versions, no report, and still a page.
    unknown = client.get("/overview", params={"deployment": "<i>nowhere</i>"})
    assert unknown.status_code == 200 and "<i>nowhere</i>" not in unknown.text
    assert cell(unknown.text, "model-production") == "none recorded"
    # A shadow just set, before any worker wrote its verdicts: the report says so.
    fresh = f"fresh-{uuid.uuid4().hex[:8]}"
    with db_engine.begin() as conn:
        _register(conn, fresh)
        set_stage(conn, deployment=plain, version=fresh, to_stage="shadow", actor="ops-3",
                  reason="new candidate")
    later = signed_in(create_app(settings_factory(kafka={"topic": plain})), VIEWER)
    html = later.get("/overview").text
    assert cell(html, "model-shadow") == fresh and 'id="shadow-empty"' in html
    assert 'id="shadow-events"' not in html

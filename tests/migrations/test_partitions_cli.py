"""``binaudit db partitions ensure|list|drop`` on a throwaway database at head."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql import insert
from typer.testing import CliRunner, Result

from binaudit.cli import app
from core.partitions import DEFAULT_PARTITION, Month, ensure, list_partitions, partition_name
from core.settings import Settings
from core.tables import audit_results

pytestmark = pytest.mark.services


def _cli(settings: Settings, *args: str) -> Result:
    env = {"BINAUDIT_DB__URL": settings.db.url.get_secret_value(),
           "BINAUDIT_ENVIRONMENT": "test"}
    return CliRunner().invoke(app, ["db", "partitions", *args], env=env)


def _names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {p.name for p in list_partitions(conn)}


def test_list_ensure_and_drop(own_db: Settings, own_engine: Engine) -> None:
    listed = _cli(own_db, "list")
    assert listed.exit_code == 0 and DEFAULT_PARTITION in listed.output, listed.output
    assert "WARNING" not in listed.output
    with own_engine.begin() as conn:  # a row for a month far ahead waits in the default
        conn.execute(insert(audit_results).values(
            event_id=f"evt-{uuid.uuid4().hex}", bin_id="b", image_uri="s3://b/k",
            captured_at=datetime(2040, 1, 1, tzinfo=UTC), expected_quantity=1,
            status="match", model_version="m", topic="t", partition=0, offset=0))
    listed = _cli(own_db, "list")
    assert "WARNING" in listed.output and "holds 1 rows" in listed.output, listed.output

    ensured = _cli(own_db, "ensure", "--months-ahead", "3")
    assert ensured.exit_code == 0, ensured.output
    current = Month.of(datetime.now(UTC))
    assert partition_name(current.plus(3)) in ensured.output  # the migration made up to +2
    assert partition_name(current.plus(3)) in _names(own_engine)

    with own_engine.begin() as conn:  # an old month to retire
        ensure(conn, datetime(2020, 1, 15, tzinfo=UTC), 0)
    dry = _cli(own_db, "drop", "--before", "2020-02")
    assert dry.exit_code == 0 and "would drop audit_results_y2020m01" in dry.output, dry.output
    assert "audit_results_y2020m01" in _names(own_engine)
    refused = _cli(own_db, "drop", "--before", str(current.plus(1)), "--yes")
    assert refused.exit_code == 2 and "refusing" in refused.output, refused.output
    bad = _cli(own_db, "drop", "--before", "2020-1", "--yes")
    assert bad.exit_code == 2 and "YYYY-MM" in bad.output, bad.output
    dropped = _cli(own_db, "drop", "--before", "2020-02", "--yes")
    assert dropped.exit_code == 0 and "dropped audit_results_y2020m01" in dropped.output
    assert "audit_results_y2020m01" not in _names(own_engine)

"""The overview's queries on the real Postgres (the seeded console stack): each window is
chosen from the days that have data, and the rates and reviews land on their UTC days."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import Engine, text

from audit.console.queries import newest_days, overview
from tests.console_fixtures import Seeded

pytestmark = pytest.mark.services
CAPTURED = date(2026, 11, 30)  # the seed's capture day


def test_windows_follow_the_data(console_seed: Seeded, db_engine: Engine) -> None:
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE discrepancies SET review_state = 'dismissed', reviewer = 'r',"
                          " reviewed_at = '2026-12-01T23:30:00-05:00' WHERE id = :i"),
                     {"i": console_seed.ids["second"]})
        conn.execute(text("UPDATE audit_results SET processed_at = '2026-11-30T10:00:00Z'"))
    with db_engine.connect() as conn:
        conn.execute(text("SET TIME ZONE 'Asia/Tokyo'"))  # days stay UTC days
        assert newest_days(conn)[0] == CAPTURED
        recent = overview(conn, days=14, now=datetime(2026, 12, 4, 12, tzinfo=UTC))
        months_later = overview(conn, days=14, now=datetime(2027, 3, 1, tzinfo=UTC))
        pinned = overview(conn, days=7, now=datetime(2027, 3, 1, tzinfo=UTC),
                          captured_last=date(2026, 6, 30))
    assert recent["captured"].reason == "recent" and recent["captured"].last == date(2026, 12, 4)
    assert months_later["captured"].reason == "newest data"
    assert months_later["captured"].last == CAPTURED
    for data in (recent, months_later):
        days = {r["day"] for r in data["rates"]["station"]}
        assert days == {CAPTURED}
        assert sum(r["mismatch"] for r in data["rates"]["station"]) == 4
    # the review was made on 2026-12-02 UTC (23:30 at UTC-5 on the 1st), after processing
    assert months_later["processed"].last == date(2026, 12, 2)
    assert months_later["events"] == {CAPTURED: 4}
    assert [(r["day"], r["n"]) for r in months_later["reviews"]] == [(date(2026, 12, 2), 1)]
    assert pinned["captured"].reason == "chosen" and pinned["rates"]["station"] == []

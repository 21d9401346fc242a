"""The console over HTTP (in-process client) against the real Postgres and S3: sign-in, CSRF,
queue filters and keyset paging, bin page, review by a reviewer, refusal for a viewer (in the
app and in Postgres), image placeholders, SSO header, export, accounts."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from audit.console.app import create_app
from audit.console.queries import Cursor, QueueFilter, probability_bars
from core.settings import Settings
from tests.audit.console_client import csrf_of, signed_in
from tests.conftest import REPO_ROOT
from tests.console_fixtures import PASSWORDS, REVIEWER, VIEWER, Seeded

pytestmark = pytest.mark.services


@pytest.fixture
def console_app(console_seed: Seeded) -> Iterator[Any]:
    app = create_app(console_seed.settings)
    yield app


def _ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-id="(\d+)"', html)]


def test_sign_in_wrong_password_and_csrf(console_app: Any) -> None:
    client = signed_in(console_app)
    assert client.get("/queue").headers["location"] == "/login"
    page = client.get("/login")
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    wrong = client.post("/login", data={"name": REVIEWER, "password": "nope-nope-nope",
                                        "csrf": csrf_of(page.text)})
    assert wrong.status_code == 401 and "Wrong name or password" in wrong.text
    unknown = client.post("/login", data={"name": "nobody", "password": "x" * 12,
                                          "csrf": csrf_of(page.text)})
    assert unknown.status_code == 401
    no_csrf = client.post("/login", data={"name": REVIEWER, "password": PASSWORDS[REVIEWER]})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
    ok = client.post("/login", data={"name": REVIEWER, "password": PASSWORDS[REVIEWER],
                                     "csrf": csrf_of(page.text)})
    assert ok.status_code == 303 and ok.headers["location"] == "/queue"
    queue = client.get("/queue")
    assert queue.status_code == 200 and "default-src 'self'" in queue.headers[
        "content-security-policy"]


def test_queue_order_filters_and_keyset_pages(console_seed: Seeded, console_app: Any) -> None:
    ids = console_seed.ids
    client = signed_in(console_app, VIEWER)
    order = [ids["top"], ids["other_station"], ids["second"], ids["missing_image"]]
    assert _ids(client.get("/queue").text) == order
    assert _ids(client.get("/queue", params={"station": "st-2"}).text) == [
        ids["other_station"]]
    assert _ids(client.get("/queue", params={"min_score": "0.85"}).text) == order[:2]
    assert _ids(client.get("/queue", params={"robot": "robot-1"}).text) == [ids["second"]]
    assert _ids(client.get("/queue", params={"state": "confirmed"}).text) == []
    bad = client.get("/queue", params={"min_score": "lots"})
    assert bad.status_code == 400 and "min_score must be a number" in bad.text
    # keyset: two rows a page, across the scored/unscored boundary, no repeats
    small = create_app(console_seed.settings.model_copy(update={
        "console": console_seed.settings.console.model_copy(update={"page_size": 1})}))
    pager = signed_in(small, VIEWER)
    seen, url = [], "/queue"
    while url:
        html = pager.get(url).text
        seen += _ids(html)
        found = re.search(r'id="next-page" href="([^"]+)"', html)
        url = found.group(1).replace("&amp;", "&") if found else ""
    assert seen == order


def test_keyset_cursor_round_trip() -> None:
    for cursor in (Cursor(0.25, 7), Cursor(None, 9), Cursor(1e-17, 3)):
        assert Cursor.decode(cursor.encode()) == cursor
    filters = QueueFilter.from_params({"station": "st-1", "state": "any", "min_score": "0.5"})
    assert QueueFilter.from_params(dict(
        x.split("=") for x in filters.query_string().split("&"))) == filters


def test_probability_bars_accept_both_shapes() -> None:
    assert probability_bars({"2": 0.25, "10": 0.5, "1": 0.25}, None) == [
        ("1", 0.25), ("2", 0.25), ("10", 0.5)]
    assert probability_bars([0.1, 0.9], [3, 4]) == [("3", 0.1), ("4", 0.9)]
    assert probability_bars([0.1, 0.9], None) == [("class 0", 0.1), ("class 1", 0.9)]
    assert probability_bars("garbage", None) == [] and probability_bars(None, None) == []


def test_bin_page_shows_manifest_bars_history(console_seed: Seeded, console_app: Any) -> None:
    client = signed_in(console_app, REVIEWER)
    page = client.get(f"/bins/{console_seed.ids['top']}")
    assert page.status_code == 200
    assert 'id="manifest"' in page.text and 'id="review-form"' in page.text
    assert page.text.count('class="bar-row') == 5
    assert f'/bins/{console_seed.ids["other_station"]}' in page.text  # next bin link
    image = client.get(f"/bins/{console_seed.ids['top']}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content[:3] == b"\xff\xd8\xff"
    assert "private" in image.headers["cache-control"]
    thumb = client.get(f"/bins/{console_seed.ids['top']}/thumb")
    assert thumb.headers["content-type"] == "image/jpeg" and len(thumb.content) < len(
        image.content)
    missing = client.get(f"/bins/{console_seed.ids['missing_image']}")
    assert missing.status_code == 200 and 'id="no-manifest"' in missing.text
    for kind in ("image", "thumb"):
        placeholder = client.get(f"/bins/{console_seed.ids['missing_image']}/{kind}")
        assert placeholder.status_code == 200
        assert placeholder.headers["content-type"] == "image/svg+xml"
        assert placeholder.headers["x-binaudit-image"] == "missing"
    assert client.get("/bins/999999").status_code == 404
    assert client.get("/bins/999999/image").headers["x-binaudit-image"] == "missing"


def test_review_confirms_and_opens_the_next_bin(console_seed: Seeded, console_app: Any,
                                                db_engine: Engine) -> None:
    ids = console_seed.ids
    client = signed_in(console_app, REVIEWER)
    page = client.get(f"/bins/{ids['top']}", params={"q": "station=st-1"})
    form = {"csrf": csrf_of(page.text), "decision": "confirmed", "count": "7",
            "note": "two hidden behind the box", "q": "station=st-1", "reviewer": "mallory"}
    done = client.post(f"/bins/{ids['top']}/review", data=form)
    assert done.status_code == 303
    # next open bin in the same filtered queue (station st-1): "second"
    assert done.headers["location"].startswith(f"/bins/{ids['second']}?")
    with db_engine.connect() as conn:
        row = conn.execute(text("SELECT review_state, reviewer, reviewed_quantity, note, "
                                "reviewed_at FROM discrepancies WHERE id = :i"),
                           {"i": ids["top"]}).one()
    assert row[:4] == ("confirmed", REVIEWER, 7, "two hidden behind the box")
    assert row.reviewed_at.utcoffset().total_seconds() == 0 or row.reviewed_at.tzinfo
    assert ids["top"] not in _ids(client.get("/queue").text)
    # a confirmation needs a count different from the manifest
    again = client.post(f"/bins/{ids['second']}/review", data={**form, "count": ""})
    assert again.status_code == 303 and again.headers["location"].startswith(
        f"/bins/{ids['second']}")
    assert "needs --count" in client.get(again.headers["location"]).text
    # out-of-range or hostile form fields: a message on the page, never a 500
    for bad in ({"count": str(10**30)}, {"count": "-1"}, {"note": "nul\x00byte"}):
        refused = client.post(f"/bins/{ids['second']}/review", data={**form, **bad})
        assert refused.status_code == 303, (bad, refused.status_code)
        assert refused.headers["location"].startswith(f"/bins/{ids['second']}")
    # missing CSRF token: refused, nothing written
    forged = client.post(f"/bins/{ids['second']}/review",
                         data={"decision": "dismissed", "count": ""})
    assert forged.status_code == 403
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT review_state FROM discrepancies WHERE id = :i"),
                            {"i": ids["second"]}).scalar_one() == "open"


def test_viewer_cannot_review_in_app_or_database(console_seed: Seeded, console_app: Any,
                                                 db_engine: Engine) -> None:
    ident = console_seed.ids["second"]
    client = signed_in(console_app, VIEWER)
    page = client.get(f"/bins/{ident}")
    assert 'id="review-form"' not in page.text and 'id="viewer-note"' in page.text
    forged = client.post(f"/bins/{ident}/review", data={
        "csrf": csrf_of(page.text), "decision": "dismissed", "note": "forged"})
    assert forged.status_code == 403
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT review_state FROM discrepancies WHERE id = :i"),
                            {"i": ident}).scalar_one() == "open"
    # the same update under the viewer's database role is refused by Postgres
    engine = console_app.state.console.engine
    with engine.connect() as conn, conn.begin():
        conn.execute(text("SET LOCAL ROLE binaudit_auditor"))
        with pytest.raises(Exception) as refused:
            conn.execute(text("UPDATE discrepancies SET review_state = 'dismissed', "
                              "reviewer = 'victor' WHERE id = :i"), {"i": ident})
        assert getattr(refused.value.orig, "pgcode", None) == "42501"  # type: ignore[attr-defined]


def test_sso_header_only_from_trusted_proxy(console_seed: Seeded) -> None:
    cfg = console_seed.settings.console.model_copy(update={
        "trusted_user_header": "X-Forwarded-User", "trusted_proxies": ("testclient",)})
    app = create_app(console_seed.settings.model_copy(update={"console": cfg}))
    client = TestClient(app, follow_redirects=False)
    assert client.get("/queue", headers={"X-Forwarded-User": VIEWER}).status_code == 200
    assert client.get("/queue", headers={"X-Forwarded-User": "stranger"}).status_code == 303
    untrusted = create_app(console_seed.settings.model_copy(update={
        "console": cfg.model_copy(update={"trusted_proxies": ("10.0.0.1",)})}))
    assert TestClient(untrusted, follow_redirects=False).get(
        "/queue", headers={"X-Forwarded-User": VIEWER}).status_code == 303


def test_overview_and_export(console_seed: Seeded, console_app: Any) -> None:
    client = signed_in(console_app, REVIEWER)
    page = client.get(f"/bins/{console_seed.ids['second']}")
    client.post(f"/bins/{console_seed.ids['second']}/review",
                data={"csrf": csrf_of(page.text), "decision": "dismissed", "note": "ok"})
    overview = client.get("/overview", params={"days": 366})
    assert overview.status_code == 200 and overview.text.count("<svg") == 7
    assert "1/1" not in overview.text or "confirmed" in overview.text
    token = csrf_of(client.get("/export").text)
    csv = client.post("/export", data={"csrf": token})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert lines[0].startswith("id,image_path,expected_quantity") and len(lines) == 2
    assert lines[1].startswith(console_seed.image_ids["second"] + ",")
    archive = client.post("/export", data={"csrf": token, "images": "true"})
    assert archive.status_code == 200 and archive.content[:2] == b"PK"


def test_user_add_command(services: Settings, clean_db: Engine) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "binaudit", "console", "user", "add", "carol", "--role",
         "reviewer", "--password", "carol-password-1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    with clean_db.connect() as conn:
        role, hashed = conn.execute(text("SELECT role, password_hash FROM console_users "
                                         "WHERE name = 'carol'")).one()
    assert role == "reviewer" and hashed.startswith("$argon2id$")
    short = subprocess.run(
        [sys.executable, "-m", "binaudit", "console", "user", "add", "dave", "--password", "x"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert short.returncode == 2 and "at least" in short.stderr


def test_presigned_image_delivery(console_seed: Seeded) -> None:
    cfg = console_seed.settings.console.model_copy(update={
        "image_delivery": "presigned", "presigned_url_ttl_s": 120})
    app = create_app(console_seed.settings.model_copy(update={"console": cfg}))
    client = signed_in(app, VIEWER)
    page = client.get("/queue")
    assert console_seed.settings.s3.endpoint_url in page.headers["content-security-policy"]
    moved = client.get(f"/bins/{console_seed.ids['top']}/image")
    assert moved.status_code == 307
    url = moved.headers["location"]
    assert url.startswith(f"{console_seed.settings.s3.endpoint_url}/") and "Expires" in url
    import httpx

    fetched = httpx.get(url, timeout=30)
    assert fetched.status_code == 200 and fetched.content[:3] == b"\xff\xd8\xff"
    missing = client.get(f"/bins/{console_seed.ids['missing_image']}/image")
    assert missing.status_code == 200 and missing.headers["x-binaudit-image"] == "missing"

"""The console locked down (issue 21), over HTTP against the real Postgres and S3: no cookie
signed with the old public placeholder opens it, configured secrets and production cookies
are checked, sign-in is throttled, the export is a bounded one-at-a-time CSRF POST, and the
database (not the client) names the reviewer and keeps every review."""

from __future__ import annotations

import json
import tempfile
import threading
from base64 import b64encode
from pathlib import Path
from typing import Any

import httpx
import itsdangerous
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from audit.console.app import ConsoleConfigError, create_app
from core.settings import PLACEHOLDER_SESSION_SECRET, ConsoleSettings, Settings
from tests.audit.console_client import csrf_of, signed_in
from tests.console_fixtures import PASSWORDS, REVIEWER, VIEWER, Seeded

pytestmark = pytest.mark.services
INSUFFICIENT_PRIVILEGE = "42501"


def _with_console(seed: Seeded, **update: Any) -> Settings:
    return seed.settings.model_copy(update={
        "console": seed.settings.console.model_copy(update=update)})


@pytest.fixture
def console_app(console_seed: Seeded) -> Any:
    return create_app(console_seed.settings)


def _state(engine: Engine, ident: int) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT review_state FROM discrepancies WHERE id = :i"),
                                {"i": ident}).scalar_one())


# ---- session secret and cookies ----------------------------------------------------------------

def _forged_cookie(secret: str, session: dict[str, Any]) -> str:
    """A session cookie signed as Starlette's SessionMiddleware signs one."""
    signer = itsdangerous.TimestampSigner(secret)
    return signer.sign(b64encode(json.dumps(session).encode())).decode()


def test_cookie_signed_with_the_old_placeholder_is_rejected(console_seed: Seeded,
                                                            db_engine: Engine) -> None:
    # the default console settings, in the default environment
    settings = console_seed.settings.model_copy(update={"environment": "development"})
    client = TestClient(create_app(settings), follow_redirects=False)
    client.cookies.set("binaudit_console", _forged_cookie(
        PLACEHOLDER_SESSION_SECRET, {"user": REVIEWER, "csrf": "x"}))
    queue = client.get("/queue")
    assert queue.status_code == 303 and queue.headers["location"] == "/login"
    ident = console_seed.ids["top"]
    forged = client.post(f"/bins/{ident}/review", data={"csrf": "x", "decision": "dismissed"})
    assert forged.status_code in (303, 403) and forged.headers.get("location") in (None,
                                                                                  "/login")
    assert _state(db_engine, ident) == "open"


def test_configured_secrets_are_checked(console_seed: Seeded) -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        ConsoleSettings(session_secret=PLACEHOLDER_SESSION_SECRET)
    for environment in ("development", "production"):
        with pytest.raises(ValidationError, match="at least 32"):
            Settings(environment=environment, console={"session_secret": "short"})
    assert Settings(environment="test", console={"session_secret": "short"}).console
    assert Settings(environment="production", console={"session_secret": "s" * 32}).console
    # model_copy skips validation: the console checks again when it is built
    for secret, why in ((PLACEHOLDER_SESSION_SECRET, "placeholder"), ("short", "at least 32")):
        bad = _with_console(console_seed, session_secret=SecretStr(secret)).model_copy(
            update={"environment": "development"})
        with pytest.raises(ConsoleConfigError, match=why):
            create_app(bad)


def test_production_cookies_are_secure(console_seed: Seeded) -> None:
    with pytest.raises(ValidationError, match="BINAUDIT_CONSOLE__SECURE_COOKIES"):
        Settings(environment="production",
                 console={"session_secret": "s" * 40, "secure_cookies": False})
    prod = _with_console(console_seed, session_secret=SecretStr("s" * 40)).model_copy(
        update={"environment": "production"})
    client = TestClient(create_app(prod), base_url="https://testserver",
                        follow_redirects=False)
    cookie = client.get("/login").headers["set-cookie"].lower()
    assert "; secure" in cookie and "httponly" in cookie
    dev = TestClient(create_app(console_seed.settings), follow_redirects=False)
    assert "; secure" not in dev.get("/login").headers["set-cookie"].lower()


# ---- sign-in throttling ------------------------------------------------------------------------

def _try(client: TestClient, name: str, password: str) -> httpx.Response:
    page = client.get("/login")
    return client.post("/login", data={"name": name, "password": password,
                                       "csrf": csrf_of(page.text)})


def test_sign_in_throttled_per_name_success_resets(console_app: Any) -> None:
    client = TestClient(console_app, follow_redirects=False)
    for _ in range(4):
        assert _try(client, REVIEWER, "wrong-password-1").status_code == 401
    assert _try(client, REVIEWER, PASSWORDS[REVIEWER]).status_code == 303  # clears the count
    for _ in range(5):
        assert _try(client, REVIEWER, "wrong-password-1").status_code == 401
    refused = _try(client, REVIEWER, PASSWORDS[REVIEWER])
    assert refused.status_code == 429 and "Too many failed sign-ins" in refused.text
    assert 250 <= int(refused.headers["retry-after"]) <= 300
    assert _try(client, REVIEWER.upper(), "wrong-password-1").status_code == 429
    # another account from the same address still signs in
    assert _try(client, VIEWER, PASSWORDS[VIEWER]).status_code == 303


def test_sign_in_throttled_per_address(console_seed: Seeded) -> None:
    app = create_app(_with_console(console_seed, login_max_failures_per_address=3))
    client = TestClient(app, follow_redirects=False)
    for name in ("ghost-1", "ghost-2", "ghost-3"):
        assert _try(client, name, "wrong-password-1").status_code == 401
    refused = _try(client, VIEWER, PASSWORDS[VIEWER])
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1


def test_password_checks_are_bounded(console_seed: Seeded, console_app: Any) -> None:
    throttle = console_app.state.console.throttle
    client = TestClient(console_app, follow_redirects=False)
    with throttle.password_check(), throttle.password_check():  # login_concurrency = 2
        busy = _try(client, VIEWER, PASSWORDS[VIEWER])
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert _try(client, VIEWER, PASSWORDS[VIEWER]).status_code == 303
    # real concurrency: one slot, six argon2 checks started together
    app = create_app(_with_console(console_seed, login_concurrency=1))
    clients = [TestClient(app, follow_redirects=False) for _ in range(6)]
    tokens = [csrf_of(c.get("/login").text) for c in clients]
    start, statuses = threading.Barrier(len(clients)), []

    def attempt(i: int) -> None:
        start.wait()
        statuses.append(clients[i].post("/login", data={
            "name": f"ghost-{i}", "password": "wrong-password-1", "csrf": tokens[i]}).status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert 503 in statuses and set(statuses) <= {401, 503}, statuses


def test_login_throttle_window() -> None:
    from audit.console.throttle import LoginThrottle

    now = [0.0]
    throttle = LoginThrottle(max_failures=2, max_failures_per_address=3, window_s=60,
                             concurrency=1, clock=lambda: now[0])
    throttle.failed("ann", "10.0.0.1")
    now[0] = 10
    throttle.failed("Ann", "10.0.0.2")
    assert throttle.retry_after("ann", "10.0.0.9") == pytest.approx(50)
    assert throttle.retry_after("bob", "10.0.0.1") is None
    now[0] = 65
    assert throttle.retry_after("ann", "10.0.0.9") is None  # the first failure has aged out
    throttle.failed("bob", "10.0.0.1")
    throttle.failed("cy", "10.0.0.1")
    assert throttle.retry_after("dee", "10.0.0.1") is None  # 10.0.0.1's first one aged out
    throttle.failed("dee", "10.0.0.1")
    assert throttle.retry_after("eve", "10.0.0.1") == pytest.approx(60)
    throttle.succeeded("ANN")
    assert throttle.retry_after("ann", "10.0.0.9") is None


# ---- export ------------------------------------------------------------------------------------

def _review(client: TestClient, ident: int, decision: str, count: str = "",
            note: str = "") -> None:
    page = client.get(f"/bins/{ident}")
    done = client.post(f"/bins/{ident}/review", data={
        "csrf": csrf_of(page.text), "decision": decision, "count": count, "note": note})
    # on success the next bin (or the queue) opens; a refusal goes back to this bin
    assert done.status_code == 303 and not done.headers["location"].startswith(
        f"/bins/{ident}?"), done.headers["location"]


@pytest.fixture
def export_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the console's export work folders go (to see that none is left behind)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_export_is_a_csrf_post(console_seed: Seeded, console_app: Any,
                               export_tmp: Path) -> None:
    _review(signed_in(console_app, REVIEWER), console_seed.ids["second"], "dismissed")
    viewer = signed_in(console_app, VIEWER)  # viewers may export, as before
    page = viewer.get("/export", params={"images": "true"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="export-images"' in page.text and 'method="post"' in page.text
    assert list(export_tmp.iterdir()) == []  # a GET starts nothing
    assert viewer.post("/export", data={"images": "true"}).status_code == 403
    token = csrf_of(page.text)
    csv = viewer.post("/export", data={"csrf": token})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith(console_seed.image_ids["second"] + ",")
    archive = viewer.post("/export", data={"csrf": token, "images": "true"})
    assert archive.status_code == 200 and archive.content[:2] == b"PK"
    assert list(export_tmp.iterdir()) == []


def test_one_export_at_a_time(console_app: Any) -> None:
    client = signed_in(console_app, VIEWER)
    token = csrf_of(client.get("/export").text)
    with console_app.state.console.export_lock:  # as while another export is being built
        busy = client.post("/export", data={"csrf": token})
    assert busy.status_code == 409 and "Another export is running" in busy.text
    assert client.post("/export", data={"csrf": token}).status_code == 200


@pytest.mark.parametrize(("limit", "images", "named"), [
    ({"export_max_rows": 1}, False, "EXPORT_MAX_ROWS"),
    ({"export_max_images": 1}, True, "EXPORT_MAX_IMAGES"),
    ({"export_max_mb": 0.03}, True, "EXPORT_MAX_MB"),  # two ABID images: ~56 KB
])
def test_export_limits(console_seed: Seeded, export_tmp: Path, limit: dict[str, Any],
                       images: bool, named: str) -> None:
    app = create_app(_with_console(console_seed, **limit))
    reviewer = signed_in(app, REVIEWER)
    _review(reviewer, console_seed.ids["second"], "dismissed")
    _review(reviewer, console_seed.ids["top"], "dismissed")
    token = csrf_of(reviewer.get("/export").text)
    form = {"csrf": token, **({"images": "true"} if images else {})}
    refused = reviewer.post("/export", data=form)
    assert refused.status_code == 413 and named in refused.text
    assert list(export_tmp.iterdir()) == []  # the work folder went with the failure
    if images:  # the CSV alone is within the limits, and the lock was released
        assert reviewer.post("/export", data={"csrf": token}).status_code == 200


# ---- who reviewed, and every review ------------------------------------------------------------

def _update_sqlstate(conn: Any, sql: str, **params: Any) -> str | None:
    savepoint = conn.begin_nested()
    try:
        conn.execute(text(sql), params)
    except DBAPIError as exc:
        savepoint.rollback()
        return getattr(exc.orig, "pgcode", None) or "?"
    savepoint.commit()
    return None


def test_the_database_names_the_reviewer(console_seed: Seeded, console_app: Any,
                                         db_engine: Engine) -> None:
    ident = console_seed.ids["top"]
    spoof = ("UPDATE discrepancies SET review_state = 'dismissed', reviewer = 'mallory', "
             "reviewed_quantity = expected_quantity, reviewed_at = now() WHERE id = :i")
    login = console_app.state.console.engine  # the console's own database login
    with login.connect() as conn, conn.begin():
        conn.execute(text("SET LOCAL ROLE binaudit_reviewer"))
        # without the signed-in account's name the console login cannot review at all
        assert _update_sqlstate(conn, spoof, i=ident) == INSUFFICIENT_PRIVILEGE
        conn.execute(text("SELECT set_config('binaudit.reviewer', :n, true)"), {"n": REVIEWER})
        assert _update_sqlstate(conn, spoof, i=ident) is None
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT reviewer FROM discrepancies WHERE id = :i"),
                            {"i": ident}).scalar_one() == REVIEWER
    with db_engine.begin() as conn:  # psql / `binaudit review`: the database login
        conn.execute(text(spoof), {"i": ident})
        who = conn.execute(text("SELECT reviewer FROM discrepancies WHERE id = :i"),
                           {"i": ident}).scalar_one()
    assert who == make_url(console_seed.settings.db.url.get_secret_value()).username


def test_every_review_is_kept_and_shown(console_seed: Seeded, console_app: Any,
                                        db_engine: Engine) -> None:
    ident = console_seed.ids["second"]
    with db_engine.connect() as conn:
        expected = conn.execute(text("SELECT expected_quantity FROM discrepancies "
                                     "WHERE id = :i"), {"i": ident}).scalar_one()
    reviewer = signed_in(console_app, REVIEWER)
    _review(reviewer, ident, "confirmed", count=str(expected + 5), note="first look")
    _review(reviewer, ident, "dismissed", note="second look")
    with db_engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT reviewer, db_user, review_state, reviewed_quantity, note, previous_state, "
            "previous_quantity, previous_note FROM discrepancy_reviews "
            "WHERE discrepancy_id = :i ORDER BY id"), {"i": ident}).all()
    assert [tuple(r) for r in rows] == [
        (REVIEWER, "binaudit_console", "confirmed", expected + 5, "first look", "open", None,
         None),
        (REVIEWER, "binaudit_console", "dismissed", expected, "second look", "confirmed",
         expected + 5, "first look")]
    for client in (reviewer, signed_in(console_app, VIEWER)):
        page = client.get(f"/bins/{ident}").text
        table = page[page.index('id="review-history"'):]
        assert "first look" in table and "second look" in table and REVIEWER in table
    # history cannot be rewritten: not by the reviewer role, not even by the admin login
    with console_app.state.console.engine.connect() as conn, conn.begin():
        conn.execute(text("SET LOCAL ROLE binaudit_reviewer"))
        for sql in ("UPDATE discrepancy_reviews SET note = 'x'",
                    "DELETE FROM discrepancy_reviews",
                    "INSERT INTO discrepancy_reviews (discrepancy_id, db_user, review_state) "
                    "VALUES (1, 'x', 'open')"):
            assert _update_sqlstate(conn, sql) == INSUFFICIENT_PRIVILEGE, sql
    with db_engine.connect() as conn, conn.begin():
        for sql in ("UPDATE discrepancy_reviews SET note = 'x'",
                    "DELETE FROM discrepancy_reviews"):
            assert _update_sqlstate(conn, sql) == INSUFFICIENT_PRIVILEGE, sql

"""The console in a real browser: headless Debian Chromium driven by Selenium against the app
served by uvicorn over real HTTP, on the real Postgres and S3 (nothing downloaded: the system
chromium and chromedriver are used). Without Chromium the tests skip locally and FAIL in CI
(CI=true). Screenshots of the queue and the bin page go to $BINAUDIT_SCREENSHOT_DIR (default
test-artifacts/console)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from audit.console.app import create_app
from tests.conftest import REPO_ROOT
from tests.console_fixtures import PASSWORDS, REVIEWER, VIEWER, Seeded

pytestmark = pytest.mark.services

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = Path(os.environ.get("BINAUDIT_SCREENSHOT_DIR", REPO_ROOT / "test-artifacts" / "console"))
XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    message = (f"{', '.join(missing)} not installed (bash scripts/system-deps.sh installs "
               "Debian's chromium and chromium-driver)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    _need_browser()
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def server(console_seed: Seeded) -> Iterator[str]:
    """The console app on a real port (uvicorn in a thread)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(console_seed.settings), host="127.0.0.1", port=port,
                            log_config=None, lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "console did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def _wait(driver: Any, predicate: Any, what: str, timeout: float = 20) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: predicate(d), message=what)


def _sign_in(driver: Any, base: str, name: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "sign-in").click()


def _queue_ids(driver: Any) -> list[int]:
    from selenium.webdriver.common.by import By

    return [int(r.get_attribute("data-id"))
            for r in driver.find_elements(By.CSS_SELECTOR, "#queue tbody tr[data-id]")]


def _post(driver: Any, path: str, fields: dict[str, str]) -> int:
    """A forged form POST from inside the signed-in page (same origin, session cookie)."""
    return int(driver.execute_async_script(
        "const done = arguments[arguments.length - 1]; const body = new FormData();"
        "for (const [k, v] of Object.entries(arguments[1])) body.append(k, v);"
        "fetch(arguments[0], {method: 'POST', body, redirect: 'manual'})"
        ".then(r => done(r.status)).catch(e => done(-1));", path, fields))


def _image_loaded(driver: Any) -> bool:
    return bool(driver.execute_script(
        "const i = document.getElementById('bin-image');"
        "return i && i.complete && i.naturalWidth > 0;"))


def test_reviewer_works_the_queue(browser: Any, server: str, console_seed: Seeded,
                                  db_engine: Engine) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    ids, driver = console_seed.ids, browser
    SHOTS.mkdir(parents=True, exist_ok=True)
    # wrong password
    _sign_in(driver, server, REVIEWER, "not-the-password")
    assert "Wrong name or password" in driver.find_element(By.ID, "login-error").text
    # sign in
    _sign_in(driver, server, REVIEWER, PASSWORDS[REVIEWER])
    _wait(driver, lambda d: d.current_url.endswith("/queue"), "the queue after sign-in")
    assert REVIEWER in driver.find_element(By.ID, "who").text
    assert _queue_ids(driver) == [ids["top"], ids["other_station"], ids["second"],
                                  ids["missing_image"]]
    _wait(driver, lambda d: d.execute_script(
        "return [...document.querySelectorAll('img.thumb')].every(i => i.complete "
        "&& i.naturalWidth > 0)"), "thumbnails (and the placeholder) loaded")
    driver.save_screenshot(str(SHOTS / "console-queue.png"))
    # filter the queue
    station = driver.find_element(By.NAME, "station")
    station.send_keys("st-1")
    driver.find_element(By.ID, "apply").click()
    _wait(driver, lambda d: "station=st-1" in d.current_url, "the filtered queue")
    assert _queue_ids(driver) == [ids["top"], ids["second"], ids["missing_image"]]
    # open the first bin: its image actually loads
    driver.find_element(By.CSS_SELECTOR, f'#queue tr[data-id="{ids["top"]}"] a').click()
    _wait(driver, lambda d: f"/bins/{ids['top']}" in d.current_url, "the bin page")
    _wait(driver, _image_loaded, "the bin image to load (naturalWidth > 0)")
    assert driver.find_element(By.ID, "manifest").is_displayed()
    assert len(driver.find_elements(By.CSS_SELECTOR, "#prob-bars .bar-row")) == 5
    driver.save_screenshot(str(SHOTS / "console-bin.png"))
    # the image zooms (z) and back
    zoom = driver.find_element(By.ID, "zoom")
    driver.find_element(By.TAG_NAME, "body").send_keys("z")
    assert "zoomed" in zoom.get_attribute("class")
    driver.find_element(By.TAG_NAME, "body").send_keys("z")
    assert "zoomed" not in zoom.get_attribute("class")
    # confirm with a count using the keyboard: digit, then c; the next bin opens
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys("7")
    assert driver.find_element(By.ID, "count").get_attribute("value") == "7"
    driver.find_element(By.ID, "count").send_keys(Keys.ESCAPE)
    body.send_keys("c")
    _wait(driver, lambda d: f"/bins/{ids['second']}" in d.current_url,
          "the next bin of the filtered queue after the decision")
    assert f"Discrepancy {ids['top']}" in driver.find_element(By.ID, "flash").text
    with db_engine.connect() as conn:
        row = conn.execute(text("SELECT review_state, reviewer, reviewed_quantity, reviewed_at,"
                                " now() - reviewed_at AS age FROM discrepancies WHERE id = :i"),
                           {"i": ids["top"]}).one()
    assert row[:3] == ("confirmed", REVIEWER, 7)
    assert row.age.total_seconds() < 120
    driver.get(f"{server}/queue")
    assert ids["top"] not in _queue_ids(driver)
    # an XSS attempt in a note is shown as text, never run
    driver.get(f"{server}/bins/{ids['second']}")
    driver.find_element(By.ID, "note").send_keys(XSS)
    driver.find_element(By.ID, "dismiss").click()
    _wait(driver, lambda d: f"/bins/{ids['second']}" not in d.current_url, "the dismissal")
    driver.get(f"{server}/bins/{ids['second']}")
    assert driver.find_element(By.ID, "note-text").text == XSS
    assert driver.execute_script("return window.__xss === undefined")
    assert not driver.find_elements(By.CSS_SELECTOR, "#note-text script, #note-text img")
    # a form without its CSRF token is refused
    status = _post(driver, f"/bins/{ids['other_station']}/review",
                   {"decision": "dismissed", "note": "no token"})
    assert status == 403
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT review_state FROM discrepancies WHERE id = :i"),
                            {"i": ids["other_station"]}).scalar_one() == "open"


def test_viewer_reads_but_cannot_review(browser: Any, server: str, console_seed: Seeded,
                                        db_engine: Engine) -> None:
    from selenium.webdriver.common.by import By

    ident, driver = console_seed.ids["top"], browser
    _sign_in(driver, server, VIEWER, PASSWORDS[VIEWER])
    _wait(driver, lambda d: d.current_url.endswith("/queue"), "the queue after sign-in")
    driver.get(f"{server}/bins/{ident}")
    _wait(driver, _image_loaded, "the bin image to load for a viewer")
    assert not driver.find_elements(By.ID, "review-form")
    assert driver.find_element(By.ID, "viewer-note").is_displayed()
    token = driver.execute_script(
        "return document.querySelector('input[name=csrf]').value")  # the sign-out form's
    status = _post(driver, f"/bins/{ident}/review",
                   {"csrf": token, "decision": "dismissed", "note": "forged by a viewer"})
    assert status == 403
    # and the database role a viewer's requests run as refuses the same update
    from audit.console.database import make_console_engine

    engine = make_console_engine(console_seed.settings)
    try:
        with engine.connect() as conn, conn.begin():
            conn.execute(text("SET LOCAL ROLE binaudit_auditor"))
            with pytest.raises(DBAPIError) as refused:
                conn.execute(text("UPDATE discrepancies SET review_state = 'dismissed', "
                                  "reviewer = :r WHERE id = :i"), {"r": VIEWER, "i": ident})
            assert getattr(refused.value.orig, "pgcode", None) == "42501"
    finally:
        engine.dispose()
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT review_state FROM discrepancies WHERE id = :i"),
                            {"i": ident}).scalar_one() == "open"
    driver.get(f"{server}/overview?days=366")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#charts svg.chart")) == 7


def test_review_history_shown_and_export_through_the_form(
        browser: Any, server: str, console_seed: Seeded, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    ident, driver = console_seed.ids["second"], browser
    _sign_in(driver, server, REVIEWER, PASSWORDS[REVIEWER])
    _wait(driver, lambda d: d.current_url.endswith("/queue"), "the queue after sign-in")
    driver.get(f"{server}/bins/{ident}")
    assert driver.find_element(By.ID, "no-reviews").is_displayed()
    driver.find_element(By.ID, "note").send_keys("looked twice")
    driver.find_element(By.ID, "dismiss").click()
    _wait(driver, lambda d: f"/bins/{ident}" not in d.current_url, "the dismissal")
    driver.get(f"{server}/bins/{ident}")
    rows = driver.find_elements(By.CSS_SELECTOR, "#review-history tbody tr")
    assert len(rows) == 1
    assert rows[0].find_element(By.CSS_SELECTOR, ".reviewer").text == REVIEWER
    assert "looked twice" in rows[0].text and "dismissed" in rows[0].text
    # the nav link opens the export page; the download is a POST of its form
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(tmp_path)})
    driver.find_element(By.CSS_SELECTOR, 'header nav a[href="/export"]').click()
    _wait(driver, lambda d: d.current_url.endswith("/export"), "the export page")
    form = driver.find_element(By.ID, "export-csv")
    assert form.get_attribute("method") == "post"
    driver.find_element(By.ID, "export-csv-button").click()
    done = _wait(driver, lambda d: [p for p in tmp_path.glob("binaudit-reviewed-*.csv")],
                 "the CSV download", timeout=30)
    lines = done[0].read_text().strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith(console_seed.image_ids["second"] + ",")

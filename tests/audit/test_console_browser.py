"""The console in a real browser: headless Debian Chromium driven by Selenium against the app
served by uvicorn over real HTTP, on the real Postgres and S3 (nothing downloaded: the system
chromium and chromedriver are used). Without Chromium the tests skip locally and FAIL in CI
(CI=true). Screenshots of the queue and the bin page go to $BINAUDIT_SCREENSHOT_DIR (default
test-artifacts/console); the demo data-path test regenerates docs/console-{queue,bin,overview}.png
($BINAUDIT_DOCS_SCREENSHOT_DIR)."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from audit.console.accounts import upsert_account
from audit.console.app import create_app
from core.settings import Settings
from core.timewindow import choose_day_window
from robots.manifests import WrongManifests
from robots.publisher import EventPlan, PublishOptions, publish
from tests.conftest import REPO_ROOT
from tests.console_fixtures import PASSWORDS, REVIEWER, VIEWER, Seeded
from worker.app import Worker

pytestmark = pytest.mark.services

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = Path(os.environ.get("BINAUDIT_SCREENSHOT_DIR", REPO_ROOT / "test-artifacts" / "console"))
DOCS = Path(os.environ.get("BINAUDIT_DOCS_SCREENSHOT_DIR", REPO_ROOT / "docs"))
SHIPPED = REPO_ROOT / "models" / "counter"
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


@contextmanager
def _serving(settings: Settings) -> Iterator[str]:
    """The console app on a real port (uvicorn in a thread)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                            log_config=None, lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "console did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def server(console_seed: Seeded) -> Iterator[str]:
    with _serving(console_seed.settings) as base:
        yield base


def _wait(driver: Any, predicate: Any, what: str, timeout: float = 20) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # A key press that submits a form navigates while the predicate may hold an element of the
    # page being left: that element goes stale, which means "not yet", not a failure.
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)) \
        .until(lambda d: predicate(d), message=what)


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


# ---- the demo's data path: publish the sample, run the worker, look at the console ---------

@pytest.fixture
def demo_console(settings_factory: Callable[..., Settings], clean_db: Engine,
                 bucket_factory: Callable[..., str], sample_dir: Path) -> Settings:
    """What `make demo` leaves behind, on the test services: the whole real sample (350 bins)
    published by the real publisher with 10 % wrong manifests at the publisher's fixed start
    time (2026-01-01), judged by a real worker with the shipped counter, a reviewer account."""
    bucket, topic = bucket_factory("demo"), f"test-demo-{uuid.uuid4().hex[:10]}"
    settings = settings_factory(
        s3={"bucket": bucket, "allowed_buckets": (bucket,)},
        kafka={"topic": topic, "group_id": f"g-{topic}"},
        inference={"model": str(SHIPPED), "device": "cpu"},
        worker={"exit_when_idle_s": 2.0, "metrics_port": None})
    sent = publish(settings, PublishOptions(
        source=sample_dir, topic=topic, progress=False,
        plan=EventPlan(bucket=bucket, with_metadata=True),
        wrong_manifests=WrongManifests(rate=0.1)))
    assert sent.valid == 350
    Worker(settings).run()
    with clean_db.begin() as conn:
        upsert_account(conn, name=REVIEWER, role="reviewer", password=PASSWORDS[REVIEWER])
    return settings


def _texts(figure: Any, selector: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.get_attribute("textContent") for e in figure.find_elements(By.CSS_SELECTOR,
                                                                          selector)]


def _check_chart(figure: Any) -> None:
    """At least one drawn point or bar, distinct tick labels, a unit on every axis."""
    from selenium.webdriver.common.by import By

    name = figure.get_attribute("id")
    assert not figure.find_elements(By.CSS_SELECTOR, ".chart-empty"), name
    marks = figure.find_elements(By.CSS_SELECTOR, "svg circle.point, svg rect.bar")
    assert any(float(m.get_attribute("r") or m.get_attribute("width")) > 0 for m in marks), name
    for axis in ("tick-y", "tick-x"):
        labels = _texts(figure, f"text.{axis}")
        assert len(labels) == len(set(labels)), (name, axis, labels)
    titles = _texts(figure, "text.axis-title")
    assert all(t.strip() for t in titles), name
    if name == "chart-agreement":
        assert len(titles) == 1 and "%" in titles[0]
        return
    assert len(titles) == 2 and len(_texts(figure, "text.tick-y")) >= 2, name
    assert "(UTC)" in titles[1]
    ticks = _texts(figure, "text.tick-y")
    assert all(t.endswith(" %") for t in ticks) or all(t.isdigit() for t in ticks), ticks


def _full_page_shot(driver: Any, path: Path) -> None:
    """The whole page, below the fold too (Chromium's DevTools capture)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))


def test_demo_data_path_overview(browser: Any, demo_console: Settings) -> None:
    """`make demo`, then the console as a newcomer sees it: the queue of the demo's mismatches,
    a bin, two reviews, and an overview whose every chart draws the demo's data with legible
    axes. Regenerates the screenshots in docs/."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    DOCS.mkdir(parents=True, exist_ok=True)
    with _serving(demo_console) as base:
        _sign_in(driver, base, REVIEWER, PASSWORDS[REVIEWER])
        _wait(driver, lambda d: d.current_url.endswith("/queue"), "the queue after sign-in")
        ids = _queue_ids(driver)
        assert len(ids) >= 2, "the shipped counter flags some of the demo's bins"
        # Thumbnails load lazily: at the end of the queue every one has been requested (the
        # first ones on arrival); then back to the top for the screenshot.
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        _wait(driver, lambda d: d.execute_script(
            "return [...document.querySelectorAll('img.thumb')].every(i => i.complete "
            "&& i.naturalWidth > 0)"), "thumbnails loaded")
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(DOCS / "console-queue.png"))
        driver.find_element(By.CSS_SELECTOR, f'#queue tr[data-id="{ids[0]}"] a').click()
        _wait(driver, _image_loaded, "the bin image to load")
        assert driver.find_element(By.ID, "manifest").is_displayed()
        driver.save_screenshot(str(DOCS / "console-bin.png"))
        # confirm with the model's count (a mismatch's prediction is not the manifest's)
        count = driver.find_element(By.ID, "count")
        count.send_keys(driver.find_element(By.ID, "predicted").text)
        count.send_keys(Keys.ESCAPE)
        driver.find_element(By.TAG_NAME, "body").send_keys("c")  # the next bin opens
        _wait(driver, lambda d: f"/bins/{ids[0]}" not in d.current_url, "the next bin")
        _wait(driver, _image_loaded, "the next bin's image")
        driver.find_element(By.TAG_NAME, "body").send_keys("d")  # dismiss
        _wait(driver, lambda d: "flash" in d.page_source and "dismissed" in d.find_element(
            By.ID, "flash").text, "the dismissal")

        driver.get(f"{base}/overview")
        today = datetime.now(UTC).date()
        shown = choose_day_window(date(2026, 1, 1), days=14, today=today)  # the capture day
        assert driver.find_element(By.ID, "captured-window").text == \
            f"{shown.first} – {shown.last}"
        assert shown.contains(date(2026, 1, 1))
        assert driver.find_element(By.ID, "processed-window").text.endswith(f"{today}")
        figures = driver.find_elements(By.CSS_SELECTOR, "#charts figure")
        assert len(figures) == 7
        for figure in figures:
            _check_chart(figure)
        reviews = driver.find_element(By.ID, "chart-reviews")
        assert len(reviews.find_elements(By.CSS_SELECTOR, "rect.bar")) == 2  # confirmed, dismissed
        _full_page_shot(driver, DOCS / "console-overview.png")

        # A window without data says so and links to the one that has it.
        driver.get(f"{base}/overview?days=14&captured_last=2026-06-14")
        empty = driver.find_element(By.CSS_SELECTOR, "#chart-mismatch-station .chart-empty")
        assert "no verdicts between 2026-06-01 and 2026-06-14" in empty.text
        empty.find_element(By.TAG_NAME, "a").click()
        _wait(driver, lambda d: "captured_last=2026-01-01" in d.current_url, "the data's window")
        _check_chart(driver.find_element(By.ID, "chart-mismatch-station"))
        assert date.fromisoformat(driver.find_element(By.ID, "captured-window").text[-10:]) \
            == date(2026, 1, 1)

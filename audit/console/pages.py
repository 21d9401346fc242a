"""The console's pages: queue, bin, review, images, overview and export. Each request reads
the account again and runs its SQL in one transaction as that account's database role."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, RedirectResponse
from sqlalchemy.exc import DBAPIError
from starlette.background import BackgroundTask
from starlette.responses import Response

from audit.console import charts
from audit.console.accounts import Account
from audit.console.database import as_account
from audit.console.queries import (
    Cursor,
    QueryError,
    QueueFilter,
    bin_history,
    class_counts,
    discrepancy,
    filter_choices,
    next_open,
    overview,
    probability_bars,
    queue_page,
    verdict_of,
)
from audit.console.security import Forbidden, check_csrf, current_account
from audit.queries import (
    AuditError,
    ExportLimits,
    ExportTooLarge,
    ReviewDecision,
    export_reviewed,
    record_review,
    review_history,
)

log = logging.getLogger(__name__)
router = APIRouter()
INSUFFICIENT_PRIVILEGE = "42501"
MAX_NOTE = 2000


def _account(request: Request) -> Account:
    console = request.app.state.console
    account = current_account(request, console.engine, console.settings.console)
    request.state.account = account
    return account


def _filters(raw: str) -> QueueFilter:
    try:
        return QueueFilter.from_params(dict(parse_qsl(raw[:2000])))
    except QueryError:
        return QueueFilter()


@router.get("/")
def home() -> Response:
    return RedirectResponse("/queue", status_code=303)


@router.get("/queue")
def queue(request: Request, after: str | None = Query(None)) -> Response:
    console = request.app.state.console
    account = _account(request)
    error = None
    try:
        filters = QueueFilter.from_params(request.query_params)
        cursor = Cursor.decode(after) if after else None
    except QueryError as exc:
        filters, cursor, error = QueueFilter(), None, str(exc)
    with as_account(console.engine, account) as conn:
        page = queue_page(conn, filters, cursor, console.settings.console.page_size)
        choices = filter_choices(conn)
    return console.render(request, "queue.html", status_code=400 if error else 200,
                          page=page, filters=filters, qs=filters.query_string(),
                          choices=choices, error=error, first_page=cursor is None)


@router.get("/bins/{discrepancy_id}")
def bin_page(request: Request, discrepancy_id: int, q: str = Query("")) -> Response:
    console = request.app.state.console
    account = _account(request)
    filters = _filters(q)
    with as_account(console.engine, account) as conn:
        row = discrepancy(conn, discrepancy_id)
        if row is None:
            return console.render(request, "error.html", status_code=404, title="Not found",
                                  message=f"No discrepancy {discrepancy_id}.")
        verdict = verdict_of(conn, row["event_id"], row["model_version"])
        probabilities = verdict["class_probabilities"] if verdict else None
        counts = class_counts(conn, row["model_version"]) if isinstance(probabilities,
                                                                          list) else None
        history = bin_history(conn, row["bin_id"])
        reviews = review_history(conn=conn, discrepancy_id=discrepancy_id)
        following = next_open(conn, filters, Cursor.of(row))
    bars = probability_bars(probabilities, counts)
    manifest = console.images.manifest(row["image_uri"])
    return console.render(request, "bin.html", row=row, bars=bars, history=history,
                          reviews=reviews, manifest=manifest, next_id=following,
                          qs=filters.query_string(),
                          expected_label=str(row["expected_quantity"]),
                          predicted_label=str(row["predicted_quantity"]))


@router.post("/bins/{discrepancy_id}/review")
def review(request: Request, discrepancy_id: int, csrf: str = Form(""),
           decision: str = Form(""), count: str = Form(""), note: str = Form(""),
           q: str = Form("")) -> Response:
    console = request.app.state.console
    account = _account(request)
    check_csrf(request, csrf)
    if not account.can_review:
        raise Forbidden(f"{account.name} is a viewer: viewers cannot review")
    filters = _filters(q)
    back = f"/bins/{discrepancy_id}?{_q(filters)}"
    try:
        quantity = int(count) if count.strip() else None
    except ValueError:
        request.session["flash"] = "The count must be a whole number."
        return RedirectResponse(back, status_code=303)
    choice = ReviewDecision(state=decision, reviewer=account.name, at=datetime.now(UTC),
                            note=note.strip()[:MAX_NOTE] or None, count=quantity)
    try:
        with as_account(console.engine, account) as conn:
            _, after = record_review(conn=conn, discrepancy_id=discrepancy_id, decision=choice)
            following = next_open(conn, filters, Cursor(after["discrepancy_score"],
                                                        int(after["id"])))
    except AuditError as exc:
        request.session["flash"] = str(exc)
        return RedirectResponse(back, status_code=303)
    except DBAPIError as exc:
        if getattr(exc.orig, "pgcode", None) == INSUFFICIENT_PRIVILEGE:
            raise Forbidden("the database refused this review for your role") from exc
        raise
    request.session["flash"] = (f"Discrepancy {discrepancy_id} (bin {after['bin_id']}) "
                                f"{after['review_state']}, count {after['reviewed_quantity']}.")
    target = f"/bins/{following}?{_q(filters)}" if following else f"/queue?{_q(filters)}"
    return RedirectResponse(target, status_code=303)


def _q(filters: QueueFilter) -> str:
    qs = filters.query_string()
    return urlencode({"q": qs}) if qs else ""


def _picture(request: Request, discrepancy_id: int, thumb: bool) -> Response:
    console = request.app.state.console
    account = _account(request)
    with as_account(console.engine, account) as conn:
        row = discrepancy(conn, discrepancy_id)
    uri = row["image_uri"] if row else None
    store = console.images
    picture = store.thumbnail(uri) if thumb else store.image(uri)
    age = console.settings.console.image_max_age_s if picture.found else 30
    return Response(picture.body, media_type=picture.media_type,
                    headers={"Cache-Control": f"private, max-age={age}",
                             "X-Binaudit-Image": "found" if picture.found else "missing"})


@router.get("/bins/{discrepancy_id}/image")
def image(request: Request, discrepancy_id: int) -> Response:
    console = request.app.state.console
    if console.settings.console.image_delivery != "presigned":
        return _picture(request, discrepancy_id, thumb=False)
    account = _account(request)
    with as_account(console.engine, account) as conn:
        row = discrepancy(conn, discrepancy_id)
    url = console.images.presigned_url(row["image_uri"] if row else None)
    if url is None:
        return _picture(request, discrepancy_id, thumb=False)  # the placeholder
    return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})


@router.get("/bins/{discrepancy_id}/thumb")
def thumbnail(request: Request, discrepancy_id: int) -> Response:
    return _picture(request, discrepancy_id, thumb=True)


@router.get("/overview")
def overview_page(request: Request, days: int = Query(14, ge=1, le=366)) -> Response:
    console = request.app.state.console
    account = _account(request)
    cache = console.overview_cache
    cached = cache.get(days)
    if cached and time.monotonic() - cached[0] < console.settings.console.overview_cache_s:
        data = cached[1]
    else:
        with as_account(console.engine, account) as conn:
            data = overview(conn, days=days)
        cache[days] = (time.monotonic(), data)
    return console.render(request, "overview.html", days=days, data=data,
                          charts=_charts(data))


def _charts(data: dict[str, Any]) -> dict[str, Any]:
    since: datetime = data["since"]
    days = [since + timedelta(days=i) for i in range(data["days"] + 1)]
    out: dict[str, Any] = {}
    for key, label in (("station", "station"), ("model", "model version")):
        for status in ("mismatch", "uncertain"):
            series: dict[str, dict[datetime, float]] = defaultdict(dict)
            for r in data["rates"][key]:
                series[r["series"]][r["day"]] = r[status] / r["total"] if r["total"] else 0.0
            out[f"{status}_{key}"] = charts.rate_lines(f"{status} rate by {label}", days, series)
    dead = {d: n / (n + data["events"].get(d, 0)) for d, n in data["dead"].items()}
    out["dead"] = charts.rate_lines("dead-letter rate", days, {"all events": dead})
    stacks: dict[str, dict[datetime, int]] = {"confirmed": {}, "dismissed": {}}
    for r in data["reviews"]:
        stacks[r["review_state"]][r["day"]] = r["n"]
    out["reviews"] = charts.stacked_bars("reviews per day", days, stacks)
    rows = []
    for r in data["agreement"]:
        n = r["reviewed"]
        rows.append((r["model_version"], r["confirmed"] / n,
                     f"{r['confirmed']}/{n} confirmed, {r['exact']} exact count"))
    out["agreement"] = charts.hbars("reviews that confirmed the model", rows)
    return out


@router.get("/export")
def export_page(request: Request) -> Response:
    """The export forms (an export is a POST: a link or an image tag cannot start one)."""
    console = request.app.state.console
    _account(request)
    return console.render(request, "export.html", limits=console.settings.console)


@router.post("/export")
def export(request: Request, csrf: str = Form(""), images: bool = Form(False)) -> Response:
    """Reviewed bins as the trainer's auditors' CSV (``binaudit review export``), or a zip of
    that CSV with the images: one export at a time per console process, within the limits
    of ``console.export_max_*``; the work folder is removed whatever happens."""
    console = request.app.state.console
    account = _account(request)
    check_csrf(request, csrf)
    if not console.export_lock.acquire(blocking=False):
        return console.render(request, "error.html", status_code=409, title="Export running",
                              message="Another export is running: try again when it is done.")
    work = Path(tempfile.mkdtemp(prefix="binaudit-export-"))
    try:
        response = _build_export(request, account, work, images)
    except ExportTooLarge as exc:
        _remove(work)
        log.warning("console export by %s refused: %s", account.name, exc)
        return console.render(request, "error.html", status_code=413, title="Export too large",
                              message=str(exc))
    except BaseException:
        _remove(work)
        raise
    finally:
        console.export_lock.release()
    return response


def _build_export(request: Request, account: Account, work: Path, images: bool) -> Response:
    console = request.app.state.console
    cfg = console.settings.console
    limits = ExportLimits(max_rows=cfg.export_max_rows, max_images=cfg.export_max_images,
                          max_bytes=int(cfg.export_max_mb * 1024 * 1024))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with as_account(console.engine, account) as conn:
        report = export_reviewed(console.settings, conn=conn,
                                 out=work / "data" / "reviewed.csv",
                                 download=images, limits=limits)
    log.info("console export by %s: %d rows%s", account.name, report.rows,
             " with images" if images else "")
    cleanup = BackgroundTask(_remove, work)
    if not images:
        return FileResponse(report.path, media_type="text/csv", background=cleanup,
                            filename=f"binaudit-reviewed-{stamp}.csv")
    archive = shutil.make_archive(str(work / f"binaudit-reviewed-{stamp}"), "zip",
                                  root_dir=work / "data")
    return FileResponse(archive, media_type="application/zip", background=cleanup,
                        filename=Path(archive).name)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

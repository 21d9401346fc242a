"""The console's pages: queue, bin, review, images, overview and export. Each request reads
the account again and runs its SQL in one transaction as that account's database role."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, RedirectResponse
from markupsafe import Markup
from sqlalchemy.exc import DBAPIError
from starlette.background import BackgroundTask
from starlette.responses import Response

from audit.console import charts
from audit.console.accounts import Account
from audit.console.database import as_account
from audit.console.model_panel import cached_panel
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
from core.timewindow import DayWindow

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
def overview_page(request: Request, days: int = Query(14, ge=1, le=366),
                  captured_last: Annotated[date | None, Query()] = None,
                  processed_last: Annotated[date | None, Query()] = None,
                  deployment: Annotated[str | None, Query(max_length=200)] = None
                  ) -> Response:
    """Charts over whole UTC days: by default the last ``days`` days, or the ``days`` days
    ending at the newest day with data when the recent ones hold none; ``captured_last`` /
    ``processed_last`` pin each window's last day (the empty charts' links set them). The
    Model panel shows ``deployment`` (default: the one of the configured topic)."""
    console = request.app.state.console
    account = _account(request)
    settings = console.settings
    chosen = deployment or settings.inference.deployment_for(settings.kafka.topic)
    model = cached_panel(console, account, chosen)
    cache = console.overview_cache
    pinned = captured_last is not None or processed_last is not None
    cached = None if pinned else cache.get(days)
    if cached and time.monotonic() - cached[0] < console.settings.console.overview_cache_s:
        data = cached[1]
    else:
        with as_account(console.engine, account) as conn:
            data = overview(conn, days=days, captured_last=captured_last,
                            processed_last=processed_last)
        if not pinned:  # the default view is the busy one; pinned views are one-off links
            cache[days] = (time.monotonic(), data)
    return console.render(request, "overview.html", days=days, data=data, model=model,
                          deployment_qs=urlencode({"deployment": deployment})
                          if deployment else "",
                          charts=_charts(data, _links(data, days, captured_last,
                                                      processed_last)))


@dataclass(frozen=True)
class ChartView:
    """One overview chart: its SVG and, when nothing falls in its window, why and where to
    look instead."""

    svg: Markup
    empty: str | None = None
    link: str | None = None
    link_text: str | None = None


def _span(window: DayWindow) -> str:
    return f"{window.first:%Y-%m-%d} – {window.last:%Y-%m-%d}"


def _links(data: dict[str, Any], days: int, captured_last: date | None,
           processed_last: date | None) -> dict[str, str | None]:
    """For each axis, a link to the window ending at its newest day with data (None: the
    window already ends there, or there is no data)."""
    out: dict[str, str | None] = {}
    pins = {"captured": captured_last, "processed": processed_last}
    for axis in ("captured", "processed"):
        newest: date | None = data[f"newest_{axis}"]
        if newest is None or data[axis].contains(newest):
            out[axis] = None
            continue
        params = {"days": str(days)} | {f"{k}_last": f"{v:%Y-%m-%d}"
                                         for k, v in pins.items() if v is not None}
        params[f"{axis}_last"] = f"{newest:%Y-%m-%d}"
        out[axis] = f"/overview?{urlencode(params)}"
    return out


def _view(svg: Markup, has_data: bool, what: str, window: DayWindow, newest: date | None,
          link: str | None) -> ChartView:
    if has_data:
        return ChartView(svg)
    note = f"no {what} between {window.first:%Y-%m-%d} and {window.last:%Y-%m-%d}"
    if link is None or newest is None:
        return ChartView(svg, note)
    return ChartView(svg, note, link, f"show the {len(window.days)} days ending "
                                      f"{newest:%Y-%m-%d}, the newest with data")


def _charts(data: dict[str, Any], links: dict[str, str | None]) -> dict[str, ChartView]:
    cw: DayWindow = data["captured"]
    pw: DayWindow = data["processed"]
    cap_x = f"capture day (UTC), {_span(cw)}"
    proc_x = f"processing day (UTC), {_span(pw)}"
    out: dict[str, ChartView] = {}
    for key, label in (("station", "station"), ("model", "model version")):
        for status in ("mismatch", "uncertain"):
            series: dict[str, dict[date, float]] = defaultdict(dict)
            for r in data["rates"][key]:
                series[r["series"]][r["day"]] = r[status] / r["total"] if r["total"] else 0.0
            svg = charts.rate_lines(f"{status} rate by {label}", cw.days, series,
                                    x_title=cap_x, y_title=f"{status} (% of verdicts)")
            out[f"{status}_{key}"] = _view(svg, bool(series), "verdicts", cw,
                                           data["newest_captured"], links["captured"])
    judged: dict[date, int] = data["events"]
    dead = {d: data["dead"].get(d, 0) / (data["dead"].get(d, 0) + judged.get(d, 0))
            for d in set(judged) | set(data["dead"])}
    svg = charts.rate_lines("dead-letter rate", pw.days, {"all events": dead},
                            x_title=proc_x, y_title="dead letters (% of events)")
    out["dead"] = _view(svg, bool(dead), "events processed", pw, data["newest_processed"],
                        links["processed"])
    stacks: dict[str, dict[date, int]] = {"confirmed": {}, "dismissed": {}}
    for r in data["reviews"]:
        stacks[r["review_state"]][r["day"]] = r["n"]
    svg = charts.stacked_bars("reviews per day", pw.days, stacks, x_title=f"review day "
                              f"(UTC), {_span(pw)}", y_title="reviews (decisions)")
    out["reviews"] = _view(svg, bool(data["reviews"]), "reviews", pw, data["newest_processed"],
                           links["processed"])
    rows = []
    for r in data["agreement"]:
        n = r["reviewed"]
        rows.append((r["model_version"], r["confirmed"] / n,
                     f"{r['confirmed']}/{n} confirmed, {r['exact']} exact count"))
    out["agreement"] = ChartView(charts.hbars("reviews that confirmed the model", rows,
                                              x_title="reviewed mismatches confirmed (%)"))
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

"""`binaudit mismatches`, `binaudit review <id>` and `binaudit review export` (glue only)."""

from __future__ import annotations

import csv
import getpass
import io
import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from audit.queries import (
    MISMATCH_COLUMNS,
    AuditError,
    MismatchFilter,
    PageRequest,
    ReviewDecision,
    export_reviewed,
    list_mismatches,
    record_review,
)
from audit.summary import load_summary, render, write_quality
from core.cliutil import console, settings_of
from core.db import open_engine
from core.timewindow import parse_time
from core.truth import read_truth

Opt = typer.Option
# view column -> short header (the table is for people; csv/json carry every column)
TABLE_COLUMNS = {"discrepancy_id": "id", "captured_at": "captured (UTC)", "bin_id": "bin",
                 "station_id": "station", "expected_quantity": "exp",
                 "predicted_quantity": "pred", "discrepancy_score": "score",
                 "confidence": "conf", "model_version": "model",
                 "review_state": "review", "reviewer": "reviewer"}


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class Decision(StrEnum):
    confirmed = "confirmed"
    dismissed = "dismissed"


class _ReviewGroup(TyperGroup):
    """``review <id> ...`` runs the hidden ``mark`` command; ``review export`` the export."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["mark", *args]
        return super().parse_args(ctx, args)


review_app = typer.Typer(cls=_ReviewGroup, no_args_is_help=True,
                         help="Review a discrepancy (`review ID --status ...`) or export the "
                              "reviewed ones as training data (`review export`).")


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(2)


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _render(rows: list[dict[str, Any]], fmt: OutputFormat, limit: int) -> None:
    if fmt is OutputFormat.json:
        typer.echo(json.dumps([{k: _jsonable(v) for k, v in r.items()} for r in rows], indent=1))
    elif fmt is OutputFormat.csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=MISMATCH_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _jsonable(v) for k, v in r.items()} for r in rows)
        typer.echo(buf.getvalue(), nl=False)
    else:
        table = Table(*TABLE_COLUMNS.values())
        for r in rows:
            table.add_row(*(_cell(r[c]) for c in TABLE_COLUMNS))
        console.print(table)
        if len(rows) == limit:
            console.print(f"more: --after-id {rows[-1]['discrepancy_id']}")


def mismatches_command(
    ctx: typer.Context,
    since: Annotated[str | None, Opt(help="captured_at >= this ISO time.")] = None,
    until: Annotated[str | None, Opt(help="captured_at < this ISO time.")] = None,
    bin_id: Annotated[str | None, Opt("--bin", help="Bin id.")] = None,
    station: Annotated[str | None, Opt(help="Station id.")] = None,
    status: Annotated[str | None, Opt(help="Verdict status.")] = None,
    min_confidence: Annotated[float | None, Opt(help="confidence >= this.")] = None,
    max_confidence: Annotated[float | None, Opt(help="confidence <= this.")] = None,
    min_score: Annotated[float | None, Opt(help="discrepancy_score >= this (0..1).")] = None,
    model_version: Annotated[str | None, Opt(help="Model version that judged.")] = None,
    review_state: Annotated[str | None, Opt(help="open | confirmed | dismissed")] = None,
    output: Annotated[OutputFormat, Opt("--format", help="table | csv | json")
                      ] = OutputFormat.table,
    limit: Annotated[int, Opt(help="Rows per page.")] = 50,
    page: Annotated[int, Opt(help="Page number (from 1).")] = 1,
    after_id: Annotated[int | None, Opt(help="Keyset: rows after this discrepancy id (in "
                                             "the chosen order).")] = None,
    order: Annotated[str, Opt(help="score (highest discrepancy score first) | id")
                     ] = "score",
) -> None:
    """List mismatches (through the auditors' `mismatches` view), highest discrepancy score
    first: the score is the calibrated probability that the manifest's count is wrong."""
    settings = settings_of(ctx)
    try:
        filters = MismatchFilter(
            since=parse_time(since) if since else None,
            until=parse_time(until) if until else None, bin_id=bin_id, station_id=station,
            status=status, min_confidence=min_confidence, max_confidence=max_confidence,
            min_score=min_score, model_version=model_version, review_state=review_state)
        paging = PageRequest(limit=limit, page=page, after_id=after_id, order=order)
        filters.clauses()  # validates the vocabularies before connecting
    except (AuditError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    with open_engine(settings.db) as engine, engine.connect() as conn:
        rows = list_mismatches(conn=conn, filters=filters, page=paging)
    _render(rows, output, limit)


@review_app.command("mark", hidden=True)
def review_command(
    ctx: typer.Context,
    discrepancy_id: Annotated[int, typer.Argument(help="Discrepancy id (see `mismatches`).")],
    status: Annotated[Decision, Opt(help="confirmed | dismissed")],
    note: Annotated[str | None, Opt(help="Free text for the record.")] = None,
    count: Annotated[int | None, Opt(help="The true count (required to confirm).")] = None,
) -> None:
    """Record a review: when (UTC), the decision and the true count. The reviewer recorded is
    the database login of BINAUDIT_DB__URL (set by the database: review under your own login)."""
    # The OS user only goes to the log; the database names the reviewer (migration 0006).
    decision = ReviewDecision(state=status.value, reviewer=getpass.getuser(),
                              at=datetime.now(UTC), note=note, count=count)
    try:
        with open_engine(settings_of(ctx).db) as engine, engine.begin() as conn:
            before, after = record_review(conn=conn, discrepancy_id=discrepancy_id,
                                          decision=decision)
    except AuditError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"discrepancy {discrepancy_id} (bin {after['bin_id']}): "
               f"{before['review_state']} -> {after['review_state']} by {after['reviewer']} at "
               f"{after['reviewed_at'].isoformat()}; true count {after['reviewed_quantity']}")


@review_app.command("export")
def export_command(
    ctx: typer.Context,
    out: Annotated[Path, Opt(help="CSV to write (id,image_path,expected_quantity,...).")],
    images_dir: Annotated[Path | None, Opt(help="Where images go (default <out dir>/images).")
                          ] = None,
    download: Annotated[bool, Opt(help="Download the images (else image_path is empty and "
                                       "the trainer uses its source folder).")] = True,
) -> None:
    """Reviewed discrepancies → a manifest `binaudit train prepare --labels` accepts."""
    settings = settings_of(ctx)
    with open_engine(settings.db) as engine, engine.connect() as conn:
        report = export_reviewed(settings, conn=conn, out=out, images_dir=images_dir,
                                 download=download)
    typer.echo(f"exported {report.rows} reviewed images to {out}"
               + (f" ({len(report.failed)} images unavailable)" if report.failed else ""))
    typer.echo(f"next: binaudit train prepare --labels {out} --source-dir {out.parent}")


def summary(
    ctx: typer.Context,
    topic: Annotated[str, typer.Option(help="Topic whose verdicts to summarise")],
    model_version: Annotated[str | None, typer.Option(help="Only this model version")] = None,
    truth: Annotated[Path | None, Opt(help="Truth CSV from `publish --wrong-manifest-rate`: "
                                           "add the audit quality against it.")] = None,
    report: Annotated[Path | None, Opt(help="With --truth: write the audit quality JSON here "
                                            "(+ a precision-recall PNG next to it).")] = None,
) -> None:
    """Summarise verdicts for a topic: statuses, accuracy and RMSE, top mismatches, and with
    --truth the audit quality (false alarms, recall, precision, AUROC, review budgets)."""
    try:
        known = read_truth(truth) if truth is not None else None
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    with open_engine(settings_of(ctx).db) as engine:
        result = load_summary(engine, topic, model_version, truth=known)
    render(result, console)
    if report is not None and result.quality is not None:
        paths = write_quality(result, report, topic)
        console.print("audit quality: " + ", ".join(str(p) for p in paths))


console_app = typer.Typer(invoke_without_command=True,
                          help="The auditors' web console (`binaudit console` serves it).")
user_app = typer.Typer(no_args_is_help=True, help="Console accounts.")
console_app.add_typer(user_app, name="user")


class ConsoleRole(StrEnum):
    viewer = "viewer"
    reviewer = "reviewer"


@console_app.callback()
def console_command(
    ctx: typer.Context,
    host: Annotated[str | None, Opt(help="Bind address (default: console.host).")] = None,
    port: Annotated[int | None, Opt(help="Port (default: console.port).")] = None,
) -> None:
    """Serve the console (review queue, bin pages, overview, export) until interrupted."""
    if ctx.invoked_subcommand is not None:
        return
    # The web stack (FastAPI, uvicorn, Jinja2) loads only for console commands, not for every
    # `binaudit` invocation.
    import uvicorn

    from audit.console.app import ConsoleConfigError, create_app

    settings = settings_of(ctx)
    try:
        app = create_app(settings)
    except ConsoleConfigError as exc:
        raise _fail(str(exc)) from exc
    cfg = settings.console
    uvicorn.run(app, host=host or cfg.host, port=port if port is not None else cfg.port,
                log_config=None, proxy_headers=False, server_header=False)


@user_app.command("add")
def user_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Account name (shown as the reviewer).")],
    role: Annotated[ConsoleRole, Opt(help="viewer | reviewer")] = ConsoleRole.viewer,
    password: Annotated[str | None, Opt(
        help="Default: asked for. Use --sso-only for accounts that sign in only through the "
             "trusted SSO header.", envvar="BINAUDIT_CONSOLE_PASSWORD")] = None,
    sso_only: Annotated[bool, Opt(help="No password (SSO header sign-in only).")] = False,
) -> None:
    """Create an account, or change its role and password (argon2id hash)."""
    from audit.console.accounts import AccountError, upsert_account

    if password is None and not sso_only:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        with open_engine(settings_of(ctx).db) as engine, engine.begin() as conn:
            account = upsert_account(conn, name=name, role=role.value,
                                     password=None if sso_only else password)
    except AccountError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"console account {account.name}: {account.role}")


@user_app.command("disable")
def user_disable(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Disable an account (its sessions stop working at the next request)."""
    from audit.console.accounts import disable_account

    with open_engine(settings_of(ctx).db) as engine, engine.begin() as conn:
        found = disable_account(conn, name)
    if not found:
        raise _fail(f"no console account {name!r}")
    typer.echo(f"console account {name}: disabled")


@console_app.command("db-login")
def db_login(ctx: typer.Context) -> None:
    """Give the console's database login role the password BINAUDIT_CONSOLE__DB_PASSWORD."""
    from audit.console.database import set_login_password

    settings = settings_of(ctx)
    try:
        with open_engine(settings.db) as engine, engine.begin() as conn:
            set_login_password(conn, settings)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"password set for database role {settings.console.db_user}")


def register(app: typer.Typer) -> None:
    """Mount the audit room's commands on the root app."""
    app.command("summary")(summary)
    app.command("mismatches")(mismatches_command)
    app.add_typer(review_app, name="review")
    app.add_typer(console_app, name="console")

"""`binaudit db upgrade|downgrade`: the schema, only through Alembic; `binaudit db partitions
ensure|list|drop`: the monthly partitions of ``audit_results`` (``core/partitions.py``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated

import typer

from core import partitions
from core.cliutil import console, fail, settings_of
from core.db import open_engine
from migrations.runner import downgrade, upgrade

log = logging.getLogger(__name__)

db_app = typer.Typer(help="Database schema (Alembic).")
partitions_app = typer.Typer(help="Monthly partitions of audit_results (UTC months of "
                                  "captured_at).", no_args_is_help=True)
db_app.add_typer(partitions_app, name="partitions")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = "head") -> None:
    """Apply migrations up to REVISION."""
    upgrade(settings_of(ctx), revision)


@db_app.command("downgrade")
def db_downgrade(ctx: typer.Context, revision: str = "base") -> None:
    """Revert migrations down to REVISION."""
    downgrade(settings_of(ctx), revision)


@partitions_app.command("ensure")
def partitions_ensure(ctx: typer.Context, months_ahead: Annotated[int, typer.Option(
        min=0, max=24, help="Months after the current one to create.")] = 2) -> None:
    """Create the current month's partition and MONTHS_AHEAD more (run it monthly, e.g. from
    a CronJob); rows of those months waiting in the default partition move into them."""
    with open_engine(settings_of(ctx).db) as engine, engine.begin() as conn:
        created = partitions.ensure(conn, datetime.now(UTC), months_ahead)
    for name, moved in created.items():
        console.print(f"created {name}" + (f" (moved {moved} rows from the default partition)"
                                           if moved else ""))
    if not created:
        console.print("nothing to create")


@partitions_app.command("list")
def partitions_list(ctx: typer.Context) -> None:
    """Each partition with its bounds and rows (the planner's estimate; exact for default)."""
    with open_engine(settings_of(ctx).db) as engine, engine.connect() as conn:
        found = partitions.list_partitions(conn)
    for p in found:
        bound = p.bound.removeprefix("FOR VALUES ")
        console.print(f"{p.name:26} {bound:60} {'=' if p.default else '~'}{p.rows:,} rows",
                      highlight=False, soft_wrap=True)
    default = next((p for p in found if p.default), None)
    if default is None:
        console.print("[red bold]WARNING: no default partition: an insert whose month has "
                      "no partition fails[/red bold]")
    elif default.rows:
        log.warning("default partition %s holds %d rows", default.name, default.rows)
        console.print(f"[red bold]WARNING: {default.name} holds {default.rows:,} rows: months "
                      f"without a partition (run `binaudit db partitions ensure`, or look for "
                      f"clock skew)[/red bold]")


@partitions_app.command("drop")
def partitions_drop(ctx: typer.Context,
                    before: Annotated[str, typer.Option(
                        help="YYYY-MM: drop whole months strictly before this one.")],
                    yes: Annotated[bool, typer.Option(
                        "--yes", help="Drop them (otherwise only list them).")] = False,
                    ) -> None:
    """Detach and drop month partitions strictly before --before (retention); never the
    current month or later, never the default partition."""
    try:
        month = partitions.Month.parse(before)
    except ValueError as exc:
        fail(f"invalid option: --before: {exc}")
    now = datetime.now(UTC)
    with open_engine(settings_of(ctx).db) as engine, engine.begin() as conn:
        try:
            names = (partitions.drop_before if yes else partitions.would_drop)(conn, month, now)
        except ValueError as exc:
            fail(str(exc))
    verb = "dropped" if yes else "would drop"
    for name in names:
        console.print(f"{verb} {name}")
    if not names:
        console.print(f"no partitions before {month}")
    elif not yes:
        console.print("(nothing dropped: add --yes)")


def register(app: typer.Typer) -> None:
    """Mount the schema commands on the root app."""
    app.add_typer(db_app, name="db")

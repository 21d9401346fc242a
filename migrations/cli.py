"""`binaudit db upgrade|downgrade`: the schema, only through Alembic."""

from __future__ import annotations

import typer

from core.cliutil import settings_of
from migrations.runner import downgrade, upgrade

db_app = typer.Typer(help="Database schema (Alembic).")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = "head") -> None:
    """Apply migrations up to REVISION."""
    upgrade(settings_of(ctx), revision)


@db_app.command("downgrade")
def db_downgrade(ctx: typer.Context, revision: str = "base") -> None:
    """Revert migrations down to REVISION."""
    downgrade(settings_of(ctx), revision)


def register(app: typer.Typer) -> None:
    """Mount the schema commands on the root app."""
    app.add_typer(db_app, name="db")

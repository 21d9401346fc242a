"""The ``binaudit`` console script: one typer app, subcommand groups contributed per package."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from binaudit.logging_setup import configure_logging
from binaudit.services import LocalServices, ServiceError
from binaudit.settings import Settings

app = typer.Typer(help="binaudit: streaming inventory audit of bin images.", no_args_is_help=True)
services_app = typer.Typer(help="Local Kafka (KRaft), PostgreSQL 15 and moto S3.")
db_app = typer.Typer(help="Database schema (Alembic).")
app.add_typer(services_app, name="services")
app.add_typer(db_app, name="db")
console = Console()


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Build the one Settings object and hand it to every subcommand."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    ctx.obj = settings


def settings_of(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings), "root callback did not run"
    return obj


@services_app.command("up")
def services_up(ctx: typer.Context) -> None:
    """Start every service that is not already running (idempotent)."""
    try:
        LocalServices(settings_of(ctx)).up()
    except ServiceError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    if not _print_status(settings_of(ctx)):
        raise typer.Exit(3)


@services_app.command("down")
def services_down(ctx: typer.Context) -> None:
    """Stop the services that `up` started (by pid)."""
    LocalServices(settings_of(ctx)).down()
    _print_status(settings_of(ctx))


@services_app.command("status")
def services_status(ctx: typer.Context) -> None:
    """Show each service, its pid, port and log file. Exit 3 if any is down."""
    if not _print_status(settings_of(ctx)):
        raise typer.Exit(3)


def _print_status(settings: Settings) -> bool:
    states = LocalServices(settings).status()
    table = Table("service", "state", "pid", "port", "log")
    for s in states:
        table.add_row(s.name, "[green]up[/green]" if s.up else "[red]down[/red]",
                      str(s.pid or "-"), str(s.port), str(s.log))
    console.print(table)
    return all(s.up for s in states)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, revision: str = "head") -> None:
    """Apply migrations up to REVISION."""
    from migrations.runner import upgrade

    upgrade(settings_of(ctx), revision)


@db_app.command("downgrade")
def db_downgrade(ctx: typer.Context, revision: str = "base") -> None:
    """Revert migrations down to REVISION."""
    from migrations.runner import downgrade

    downgrade(settings_of(ctx), revision)


def _register_packages() -> None:
    # Each package contributes its own commands; imported here so `binaudit --help` lists all.
    from trainer.cli import register as register_trainer
    from worker.cli import register as register_worker

    register_worker(app)
    register_trainer(app)


_register_packages()

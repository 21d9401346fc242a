"""`binaudit services up|down|status`: the local development stack."""

from __future__ import annotations

import shlex

import typer
from rich.table import Table

from core.cliutil import console, fail, settings_of
from core.settings import Settings
from devstack.clientenv import local_env
from devstack.services import LocalServices, ServiceError

services_app = typer.Typer(help="Local Kafka (KRaft), PostgreSQL 15 and moto S3.")


@services_app.command("up")
def services_up(ctx: typer.Context) -> None:
    """Start every service that is not already running (idempotent)."""
    try:
        LocalServices(settings_of(ctx)).up()
    except ServiceError as exc:
        fail(str(exc), code=1)
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


@services_app.command("env")
def services_env(ctx: typer.Context) -> None:
    """Print `export` lines that point binaudit at the local S3 (moto endpoint and keys);
    use as `eval "$(binaudit services env)"`. Production leaves them unset (AWS defaults)."""
    for name, value in local_env(settings_of(ctx)).items():
        typer.echo(f"export {name}={shlex.quote(value)}")


def _print_status(settings: Settings) -> bool:
    states = LocalServices(settings).status()
    table = Table("service", "state", "pid", "port", "log")
    for s in states:
        table.add_row(s.name, "[green]up[/green]" if s.up else "[red]down[/red]",
                      str(s.pid or "-"), str(s.port), str(s.log))
    console.print(table)
    return all(s.up for s in states)


def register(app: typer.Typer) -> None:
    """Mount the dev stack's commands on the root app."""
    app.add_typer(services_app, name="services")

"""The ``binaudit`` console script: builds the one Settings object and mounts each room's
command group. Nothing else lives here, so no room ever imports it."""

from __future__ import annotations

import typer

import audit.cli
import devstack.cli
import migrations.cli
import replay.cli
import robots.cli
import serve.cli
import trainer.cli
import worker.cli
from core.logging_setup import configure_logging
from core.settings import Settings

app = typer.Typer(help="binaudit: streaming inventory audit of bin images.", no_args_is_help=True)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Build the one Settings object and hand it to every subcommand."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    ctx.obj = settings


for room in (devstack.cli, migrations.cli, robots.cli, worker.cli, serve.cli, replay.cli,
             audit.cli, trainer.cli):
    room.register(app)

"""Commands contributed by the worker package (glue only: each calls a named module)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount the worker package's commands on the root app."""
    # Each feature module owns its typer commands; add one line per module.
    from worker.run_cli import worker

    app.command("worker")(worker)

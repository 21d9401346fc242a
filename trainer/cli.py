"""Commands contributed by the trainer package: `binaudit train ...`, `binaudit model ...`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount the trainer package's commands on the root app."""
    _ = app

"""`binaudit serve`: the SageMaker-compatible HTTP endpoint."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from core.cliutil import check_device, settings_of, with_overrides
from core.model.artifact import ArtifactError
from serve.server import ModelServer, run_server

log = logging.getLogger(__name__)


def serve_command(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="Listen port (SageMaker: 8080)")] = None,
    host: Annotated[str | None, typer.Option(
        help="Listen address (default serve.host: 127.0.0.1; 0.0.0.0 in containers)")] = None,
    model: Annotated[Path | None, typer.Option(
        help="Model artifact directory (default settings.worker.model_path)")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Close a batch at this size")] = None,
    max_wait_ms: Annotated[int | None, typer.Option(help="...or after this wait")] = None,
) -> None:
    """Serve the model over HTTP (SageMaker's /ping and /invocations); SIGTERM exits 0."""
    settings = with_overrides(
        settings_of(ctx),
        worker={"model_path": model, "device": device},
        serve={"port": port, "host": host, "max_batch_size": max_batch_size,
               "max_wait_ms": max_wait_ms},
    )
    check_device(settings.worker.device)
    try:
        asyncio.run(run_server(ModelServer(settings)))
    except ArtifactError as exc:
        log.error("model artifact problem: %s", exc)
        raise typer.Exit(2) from exc


def register(app: typer.Typer) -> None:
    """Mount the serving room's commands on the root app."""
    app.command("serve")(serve_command)

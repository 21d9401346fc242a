"""`binaudit serve`: the SageMaker-compatible HTTP endpoint."""

from __future__ import annotations

import asyncio
import logging
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
    model: Annotated[str | None, typer.Option(
        help="Model artifact (directory or s3:// URI; default settings.inference.model). "
             "Given here, it is pinned: the registry is not followed unless "
             "--follow-registry says so.")] = None,
    deployment: Annotated[str | None, typer.Option(
        help="Registry deployment to follow (default: the topic's name, like the worker)")
    ] = None,
    follow_registry: Annotated[bool | None, typer.Option(
        "--follow-registry/--pin",
        help="Serve the deployment's production model and switch without restart on "
             "promotion or rollback; --pin serves --model only, without a database "
             "(default settings.inference.follow_registry)")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Close a batch at this size")] = None,
    max_wait_ms: Annotated[int | None, typer.Option(help="...or after this wait")] = None,
) -> None:
    """Serve the model over HTTP (SageMaker's /ping and /invocations); SIGTERM exits 0."""
    settings = with_overrides(
        settings_of(ctx),
        inference={"model": model, "device": device, "deployment": deployment,
                   "follow_registry": _follow(follow_registry, model)},
        serve={"port": port, "host": host, "max_batch_size": max_batch_size,
               "max_wait_ms": max_wait_ms},
    )
    check_device(settings.inference.device)
    try:
        asyncio.run(run_server(ModelServer(settings)))
    except ArtifactError as exc:
        log.error("model artifact problem: %s", exc)
        raise typer.Exit(2) from exc


def _follow(flag: bool | None, model: str | None) -> bool | None:
    """An explicit --model is what the caller wants to serve: pinned unless told otherwise
    (the worker's rule)."""
    if flag is not None:
        return flag
    return False if model is not None else None


def register(app: typer.Typer) -> None:
    """Mount the serving room's commands on the root app."""
    app.command("serve")(serve_command)

"""`binaudit worker`: run one consumer-group member until stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.cliutil import console, fail, settings_of, with_overrides
from core.model.card import ArtifactError
from worker.app import Worker


def worker(
    ctx: typer.Context,
    model: Annotated[Path | None, typer.Option(help="Model artifact directory")] = None,
    topic: Annotated[str | None, typer.Option(help="Topic to consume")] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group id")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Close a batch at this size")] = None,
    max_wait_ms: Annotated[int | None, typer.Option(help="...or after this wait")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus/health port")] = None,
    exit_when_idle: Annotated[float | None, typer.Option(
        help="Stop after the topic is drained and idle this many seconds")] = None,
) -> None:
    """Consume bin events, count items, write verdicts; SIGTERM drains and exits 0."""
    settings = with_overrides(
        settings_of(ctx),
        kafka={"topic": topic, "group_id": group},
        worker={"model_path": model, "max_batch_size": max_batch_size,
                "max_wait_ms": max_wait_ms, "device": device, "metrics_port": metrics_port,
                "exit_when_idle_s": exit_when_idle},
    )
    try:
        stats = Worker(settings).run()
    except ArtifactError as exc:
        fail(f"model artifact problem: {exc}")
    rate = stats.events / stats.seconds if stats.seconds else 0.0
    console.print(f"processed {stats.events} events in {stats.seconds:.1f}s ({rate:.1f}/s); "
                  f"verdicts {stats.verdicts}; dead letters {stats.dead_letters}")


def register(app: typer.Typer) -> None:
    """Mount the worker room's commands on the root app."""
    app.command("worker")(worker)

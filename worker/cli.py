"""`binaudit worker` (one consumer-group member until stopped) and `binaudit dlq redrive`."""

from __future__ import annotations

from typing import Annotated

import typer

from core.cliutil import check_device, console, fail, settings_of, with_overrides
from core.db import open_engine
from core.model.card import ArtifactError
from core.timewindow import parse_time
from schemas.records import ErrorKind
from worker.app import Worker
from worker.redrive import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_REDRIVES,
    RETRYABLE_KINDS,
    RedriveFilter,
    redrive,
)

dlq_app = typer.Typer(help="Dead letters: re-drive them once their cause is fixed.")


def worker(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(
        help="Model artifact (directory or s3:// URI; default settings.inference.model). "
             "Given here, it is pinned: the registry is not followed unless "
             "--follow-registry says so.")] = None,
    deployment: Annotated[str | None, typer.Option(
        help="Registry deployment to follow (default: the topic's name)")] = None,
    follow_registry: Annotated[bool | None, typer.Option(
        "--follow-registry/--pin",
        help="Run the deployment's production (and shadow) model and switch on promotion; "
             "--pin runs --model only (default settings.inference.follow_registry)")] = None,
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
        inference={"model": model, "max_batch_size": max_batch_size,
                   "max_wait_ms": max_wait_ms, "device": device, "deployment": deployment,
                   "follow_registry": _follow(follow_registry, model)},
        worker={"metrics_port": metrics_port, "exit_when_idle_s": exit_when_idle},
    )
    check_device(settings.inference.device)
    try:
        stats = Worker(settings).run()
    except ArtifactError as exc:
        fail(f"model artifact problem: {exc}")
    rate = stats.events / stats.seconds if stats.seconds else 0.0
    console.print(f"processed {stats.events} events in {stats.seconds:.1f}s ({rate:.1f}/s); "
                  f"verdicts {stats.verdicts}; dead letters {stats.dead_letters}")


def _follow(flag: bool | None, model: str | None) -> bool | None:
    """An explicit --model is what the caller wants to run: pinned unless told otherwise."""
    if flag is not None:
        return flag
    return False if model is not None else None


@dlq_app.command("redrive")
def dlq_redrive(
    ctx: typer.Context,
    kind: Annotated[list[str] | None, typer.Option(
        help="Only this error kind (repeatable; any of "
             f"{', '.join(k.value for k in ErrorKind)}). Default: the retryable kinds, "
             f"whose cause can be fixed outside the event: "
             f"{', '.join(k.value for k in RETRYABLE_KINDS)}")] = None,
    since: Annotated[str | None, typer.Option(help="First seen at or after (ISO 8601)")] = None,
    until: Annotated[str | None, typer.Option(help="First seen before (ISO 8601)")] = None,
    source_topic: Annotated[str | None, typer.Option(
        help="Only letters that came from this topic")] = None,
    topic: Annotated[str | None, typer.Option(
        help="Republish to this topic (default: the topic each letter came from)")] = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would be sent; send nothing")] = False,
    max_redrives: Annotated[int, typer.Option(
        min=1, help="Skip letters already re-driven this many times")] = DEFAULT_MAX_REDRIVES,
    batch_size: Annotated[int, typer.Option(
        min=1, help="Letters per transaction (selected, sent, confirmed, marked)")
    ] = DEFAULT_BATCH_SIZE,
) -> None:
    """Republish stored dead-letter payloads (after a fix) and mark them re-driven; a second
    run sends nothing again."""
    settings = settings_of(ctx)
    try:
        kinds = tuple(ErrorKind(k) for k in kind or ())
        flt = RedriveFilter(kinds=kinds, since=parse_time(since) if since else None,
                            until=parse_time(until) if until else None,
                            source_topic=source_topic)
    except ValueError as exc:
        fail(f"invalid option: {exc}")
    with open_engine(settings.db) as engine:
        report = redrive(engine, settings.kafka, flt, to_topic=topic, dry_run=dry_run,
                         max_redrives=max_redrives, batch_size=batch_size)
    verb = "would re-drive" if dry_run else "re-drove"
    batches = "" if dry_run else f" in {report.batches} batches"
    console.print(f"{verb} {report.sent if not dry_run else sum(report.by_kind.values())} "
                  f"dead letters {dict(report.by_kind)}{batches}; {report.unsendable} without "
                  f"a complete payload left as they are; {report.over_limit} re-driven "
                  f"{max_redrives} times already skipped")


def register(app: typer.Typer) -> None:
    """Mount the worker room's commands on the root app."""
    app.command("worker")(worker)
    app.add_typer(dlq_app, name="dlq")

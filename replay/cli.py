"""`binaudit replay`: backtest a candidate model on recorded traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from core.cliutil import check_device, console, fail, settings_of, with_overrides
from core.db import open_engine
from core.model.artifact import ArtifactError
from core.quality import headline
from core.timewindow import WindowRequest
from core.truth import read_truth
from replay.backtest import Replay, ReplayError, ReplayOptions
from replay.report import load_run, quality_section, report_for_run

Opt = typer.Option


def replay_command(
    ctx: typer.Context,
    model: Annotated[Path, Opt(help="Candidate model artifact directory.")],
    topic: Annotated[str | None, Opt(help="Topic to replay (default settings.kafka.topic).")
                     ] = None,
    from_: Annotated[str | None, Opt("--from", help="Window start: ISO time (record timestamp "
                                                     "= captured_at) or 'earliest'.")] = None,
    to: Annotated[str | None, Opt(help="Window end, exclusive: ISO time "
                                       "(default: the end offsets at start).")] = None,
    from_offset: Annotated[str | None, Opt(help="Start offsets: N or P:N,P:N.")] = None,
    to_offset: Annotated[str | None, Opt(help="End offsets, exclusive: N or P:N,P:N.")] = None,
    run_id: Annotated[str | None, Opt(help="Default: derived from model, topic and window.")
                      ] = None,
    report: Annotated[Path | None, Opt(help="Write the report JSON here (+ .md and .png).")
                      ] = None,
    compare_to: Annotated[str | None, Opt(help="Production model version in audit_results "
                                               "(default: the one that saw most events).")
                          ] = None,
    truth: Annotated[Path | None, Opt(help="Truth CSV from `publish --wrong-manifest-rate`: "
                                           "report audit quality against it.")] = None,
    device: Annotated[str | None, Opt(help="auto | cpu | cuda")] = None,
    max_batch_size: Annotated[int | None, Opt(help="Close a batch at this size.")] = None,
    progress: Annotated[bool, Opt(help="Show a progress bar.")] = True,
) -> None:
    """Backtest a candidate model on recorded traffic (production offsets untouched)."""

    settings = with_overrides(settings_of(ctx), worker={"device": device,
                                                        "max_batch_size": max_batch_size})
    check_device(settings.worker.device)
    try:
        window = WindowRequest.from_cli(from_=from_, to=to, from_offset=from_offset,
                                        to_offset=to_offset)
        known = read_truth(truth) if truth is not None else None
        options = ReplayOptions(topic=topic or settings.kafka.topic, window=window,
                                model_path=model, run_id=run_id, progress=progress)
        summary = Replay(settings, options).run()
    except (ValueError, ReplayError, ArtifactError, OSError) as exc:
        fail(str(exc))
    console.print(f"run {summary.run_id}: model {summary.model_version}, {summary.events} "
                  f"events ({summary.added} new rows, {summary.errors} errors, "
                  f"{summary.skipped} outside the window) in {summary.seconds:.1f}s; "
                  f"{summary.by_status}")
    if report is not None:
        with open_engine(settings.db) as engine:
            paths = report_for_run(engine, summary.run_id, report, compare_to=compare_to,
                                   truth=known)
        console.print("report: " + ", ".join(str(p) for p in paths))
    if known is not None:
        with open_engine(settings.db) as engine, engine.connect() as conn:
            _, rows = load_run(conn=conn, run_id=summary.run_id)
        quality = quality_section(rows, known)
        table = Table("audit quality vs the truth file", "value")
        for name, value in headline(quality):
            table.add_row(name, value)
        console.print(table)


def register(app: typer.Typer) -> None:
    """Mount the replay room's commands on the root app."""
    app.command("replay")(replay_command)

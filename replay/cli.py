"""`binaudit replay`: backtest a candidate model on recorded traffic, alone or as one of N
processes of a run (``--run-id`` + ``--shard i/N`` or ``--partitions``), and
`binaudit replay report RUN`: the report merged over every process of a run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from core.cliutil import check_device, console, fail, settings_of, with_overrides
from core.db import open_engine
from core.model.artifact import ArtifactError
from core.quality import headline
from core.settings import Settings
from core.timewindow import WindowRequest
from core.truth import TruthEntry, read_truth
from replay.backtest import Replay, ReplayError, ReplayOptions
from replay.report import load_report, write_report
from replay.shards import PartitionSelection, format_partitions

Opt = typer.Option

replay_app = typer.Typer(help="Backtest a candidate model on recorded traffic.")


@replay_app.callback(invoke_without_command=True)
def replay_command(
    ctx: typer.Context,
    model: Annotated[Path | None, Opt(help="Candidate model artifact directory (required "
                                           "unless a subcommand is given).")] = None,
    topic: Annotated[str | None, Opt(help="Topic to replay (default settings.kafka.topic).")
                     ] = None,
    from_: Annotated[str | None, Opt("--from", help="Window start: ISO time (record timestamp "
                                                     "= captured_at) or 'earliest'.")] = None,
    to: Annotated[str | None, Opt(help="Window end, exclusive: ISO time "
                                       "(default: the end offsets at start).")] = None,
    from_offset: Annotated[str | None, Opt(help="Start offsets: N or P:N,P:N.")] = None,
    to_offset: Annotated[str | None, Opt(help="End offsets, exclusive: N or P:N,P:N.")] = None,
    run_id: Annotated[str | None, Opt(help="Run id, shared by every process of one run "
                                           "(default: derived from model, topic and window).")
                      ] = None,
    shard: Annotated[str | None, Opt(help="I/N: replay partitions I, I+N, I+2N, ... (process "
                                          "I of N; 0-based, like a Kubernetes Indexed Job).")
                     ] = None,
    partitions: Annotated[str | None, Opt(help="Replay only these partitions: P-Q,R,...")
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

    if ctx.invoked_subcommand is not None:
        return
    if model is None:
        fail("missing option --model (or a subcommand: replay report RUN)")
    settings = with_overrides(settings_of(ctx), inference={"device": device,
                                                           "max_batch_size": max_batch_size})
    check_device(settings.inference.device)
    try:
        window = WindowRequest.from_cli(from_=from_, to=to, from_offset=from_offset,
                                        to_offset=to_offset)
        selection = PartitionSelection.from_cli(partitions=partitions, shard=shard)
        known = read_truth(truth) if truth is not None else None
        options = ReplayOptions(topic=topic or settings.kafka.topic, window=window,
                                model_path=model, run_id=run_id, progress=progress,
                                selection=selection)
        summary = Replay(settings, options).run()
    except (ValueError, ReplayError, ArtifactError, OSError) as exc:
        fail(str(exc))
    share = "" if shard is None and partitions is None else (
        f"; {selection.label}: partitions {format_partitions(summary.bounds) or 'none'}")
    console.print(f"run {summary.run_id}: model {summary.model_version}, {summary.events} "
                  f"events ({summary.added} new rows, {summary.read} records read, "
                  f"{summary.errors} errors, "
                  f"{summary.skipped} outside the window) in {summary.seconds:.1f}s; "
                  f"{summary.by_status}{share}")
    if not summary.complete:
        console.print(f"[yellow]run {summary.run_id} is not complete yet: other partitions "
                      f"are still to be replayed (`binaudit replay report {summary.run_id}` "
                      "says which)[/yellow]")
    if report is not None or known is not None:
        _report(settings, summary.run_id, report, compare_to=compare_to, truth=known)


@replay_app.command("report")
def report_command(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run id the replay processes shared.")],
    out: Annotated[Path | None, Opt(help="Write the report JSON here (+ .md and .png; "
                                         "default reports/RUN.json).")] = None,
    compare_to: Annotated[str | None, Opt(help="Production model version in audit_results "
                                               "(default: the one that saw most events).")
                          ] = None,
    truth: Annotated[Path | None, Opt(help="Truth CSV: report audit quality against it.")
                     ] = None,
    fail_incomplete: Annotated[bool, Opt(help="Exit 1 when partitions of the window are not "
                                              "finished yet.")] = False,
) -> None:
    """The report of a run, merged over every process that wrote it."""
    settings = settings_of(ctx)
    try:
        known = read_truth(truth) if truth is not None else None
    except (ValueError, OSError) as exc:
        fail(str(exc))
    data = _report(settings, run_id, out or Path("reports") / f"{run_id}.json",
                   compare_to=compare_to, truth=known)
    if fail_incomplete and not data["coverage"]["complete"]:
        raise typer.Exit(1)


def _report(settings: Settings, run_id: str, path: Path | None, *, compare_to: str | None,
            truth: Mapping[str, TruthEntry] | None) -> dict[str, Any]:
    """Load the merged report of ``run_id``, write it to ``path`` and print its headline."""
    with open_engine(settings.db) as engine:
        try:
            data = load_report(engine, run_id, compare_to=compare_to, truth=truth)
        except LookupError as exc:
            fail(str(exc))
    if path is not None:
        console.print("report: " + ", ".join(str(p) for p in write_report(data, path)))
    cover = data["coverage"]
    console.print(f"run {run_id}: {data['events']} events, {data['errors']} errors, accuracy "
                  f"{_fmt(data['accuracy'])}; {len(cover['finished'])} of "
                  f"{cover['partitions']} partitions finished")
    if not cover["complete"]:
        console.print(f"[yellow]incomplete: unfinished partitions "
                      f"{format_partitions(int(p) for p in cover['unfinished']) or '-'}, "
                      f"not started {format_partitions(cover['not_started']) or '-'}[/yellow]")
    quality = data.get("audit_quality")
    if quality is not None:
        table = Table("audit quality vs the truth file", "value")
        for name, value in headline(quality):
            table.add_row(name, value)
        console.print(table)
    return data


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "-"


def register(app: typer.Typer) -> None:
    """Mount the replay room's commands on the root app."""
    app.add_typer(replay_app, name="replay")

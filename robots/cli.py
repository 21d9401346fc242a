"""`binaudit publish`: the robots' side, simulated from a folder of ABID images."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from core.cliutil import console, fail, settings_of
from core.truth import WRONG_MANIFEST_KINDS
from robots.manifests import WrongManifests
from robots.publisher import (
    DEFAULT_SOURCE,
    FAULT_NAMES,
    EventPlan,
    PublishError,
    PublishOptions,
    publish,
)

Opt = typer.Option


def publish_command(
    ctx: typer.Context,
    source: Annotated[Path, Opt(help="ABID-format folder (images/, metadata/).")] = DEFAULT_SOURCE,
    source_bucket: Annotated[str | None, Opt(
        help="Images already in this bucket (metadata/ listed): upload nothing.")] = None,
    topic: Annotated[str | None, Opt(help="Default: settings.kafka.topic.")] = None,
    bucket: Annotated[str | None, Opt(help="Upload bucket (default settings.s3.bucket).")] = None,
    count: Annotated[int | None, Opt(min=0, help="Events to publish (default: all).")] = None,
    loop: Annotated[bool, Opt(help="Cycle through the samples (until --count or Ctrl-C).")] = False,
    shuffle: Annotated[bool, Opt(help="Shuffle the order (per pass, seeded).")] = False,
    seed: Annotated[int, Opt(help="Seed of --shuffle, --faults and wrong manifests.")] = 0,
    rate: Annotated[float | None, Opt(min=0.0, help="Events/s (default: max speed).")] = None,
    start_time: Annotated[str, Opt(help="captured_at of event 0 (ISO 8601; naive = UTC).")] = (
        "2026-01-01T00:00:00Z"),
    interval_s: Annotated[float, Opt(help="captured_at step between events (s).")] = 1.0,
    with_metadata: Annotated[bool, Opt(help="Also upload metadata/<id>.json.")] = False,
    faults: Annotated[str, Opt(help=f"Comma list of: {', '.join(FAULT_NAMES)}.")] = "",
    fault_rate: Annotated[float, Opt(min=0.0, max=1.0,
                                     help="Share of events followed by a fault.")] = 0.1,
    wrong_manifest_rate: Annotated[float, Opt(
        min=0.0, max=1.0, help="Share of events whose EXPECTED_QUANTITY is made wrong "
                               "(seeded by --seed); the truth goes to --truth.")] = 0.0,
    wrong_manifest_kinds: Annotated[str, Opt(
        help=f"Comma list of: {', '.join(WRONG_MANIFEST_KINDS)} (missing_item: manifest = "
             "true + 1; extra_item: true - 1; swapped: another bin's count).")] = ",".join(
        WRONG_MANIFEST_KINDS),
    truth: Annotated[Path | None, Opt(
        help="Truth CSV (event_id,bin_id,true_count,manifest_count,perturbation); default "
             "<topic>.truth.csv when --wrong-manifest-rate > 0.")] = None,
    progress: Annotated[bool, Opt(help="Show progress bars.")] = True,
) -> None:
    """Simulate robots: upload bin images to S3 and publish one BinEvent per image."""

    start = datetime.fromisoformat(start_time)
    plan = EventPlan(bucket="", count=count, loop=loop, shuffle=shuffle, seed=seed,
                     start_time=start if start.tzinfo else start.replace(tzinfo=UTC),
                     interval_s=interval_s, with_metadata=with_metadata)
    settings = settings_of(ctx)
    if truth is None and wrong_manifest_rate > 0:
        truth = Path(f"{topic or settings.kafka.topic}.truth.csv")
    try:
        wrong = WrongManifests(rate=wrong_manifest_rate, truth_path=truth,
                               kinds=tuple(k for k in wrong_manifest_kinds.split(",") if k))
        options = PublishOptions(
            source=source, source_bucket=source_bucket, topic=topic, bucket=bucket, plan=plan,
            rate=rate or None, faults=tuple(f for f in faults.split(",") if f),
            fault_rate=fault_rate, wrong_manifests=wrong, progress=progress)
        report = publish(settings, options)
    except (ValueError, FileNotFoundError, PublishError) as exc:
        fail(str(exc), code=1)
    console.print(f"published {report.published} records to {report.topic} ({report.valid} "
                  f"events, {report.fault_count} faults); uploaded {report.uploaded} objects to "
                  f"s3://{report.bucket} ({report.upload_skipped} already there)")
    if report.truth_path is not None:
        console.print(f"  wrong manifests: {sum(report.wrong_manifests.values())} "
                      f"{report.wrong_manifests}; truth in {report.truth_path}")
    for name, records in sorted(report.faults.items()):
        where = ", ".join(f"{r.partition}@{r.offset}" for r in records[:10])
        console.print(f"  {name}: {len(records)} ({where}{', ...' if len(records) > 10 else ''})")


def register(app: typer.Typer) -> None:
    """Mount the robots room's commands on the root app."""
    app.command("publish")(publish_command)

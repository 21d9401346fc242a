"""`binaudit data fetch`: download a subset of the Amazon Bin Image Dataset."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from core.cliutil import console, fail, settings_of
from core.settings import AbidSourceSettings, Settings
from trainer.fetch import fetch_with_settings, id_range, ids_from_file_list, parse_ids

data_app = typer.Typer(help="The Amazon Bin Image Dataset: download a subset.",
                       no_args_is_help=True)
Opt = typer.Option


@data_app.command("fetch")
def fetch_command(
    ctx: typer.Context,
    ids: Annotated[str | None, Opt(help="Comma list of ids, exactly as keyed.")] = None,
    id_range_spec: Annotated[str | None, Opt("--id-range", help="e.g. 1-500.")] = None,
    zero_pad: Annotated[bool, Opt(help="--id-range ids zero-padded to 5 digits.")] = True,
    file_list: Annotated[Path | None, Opt(help="file_list.json subset.")] = None,
    source_dir: Annotated[Path | None, Opt(help="Copy from a local ABID folder.")] = None,
    out: Annotated[Path, Opt(help="Output folder.")] = Path("data/abid"),
    endpoint_url: Annotated[str | None, Opt(help="S3 endpoint (default: AWS).")] = None,
    bucket: Annotated[str | None, Opt(help="Default: settings.abid.bucket.")] = None,
    anonymous: Annotated[bool | None, Opt("--anonymous/--no-anonymous",
                                          help="Unsigned requests.")] = None,
    concurrency: Annotated[int | None, Opt(min=1, help="Ids in flight.")] = None,
    progress: Annotated[bool, Opt(help="Show a progress bar.")] = True,
) -> None:
    """Download ABID images and metadata (resumable; missing ids are listed, not fatal)."""
    try:
        wanted = _select_ids(ids, id_range_spec, file_list, pad=5 if zero_pad else 0)
    except ValueError as exc:
        fail(str(exc))
    cfg = _abid_settings(settings_of(ctx), endpoint_url=endpoint_url, bucket=bucket,
                         anonymous=anonymous, concurrency=concurrency)
    summary = asyncio.run(fetch_with_settings(cfg, wanted, out_dir=out, source_dir=source_dir,
                                              progress=progress))
    console.print(f"{len(wanted)} ids: {summary.downloaded} downloaded, {summary.skipped} "
                  f"already complete, {len(summary.missing)} missing, {len(summary.failed)} "
                  f"failed; {summary.bytes / 1e6:.1f} MB transferred; {summary.manifest_path}")
    if summary.missing:
        console.print(f"missing: {', '.join(summary.missing)}")
    if summary.failed:
        console.print(f"[red]failed: {', '.join(summary.failed)}[/red]")
        raise typer.Exit(1)


def _select_ids(ids: str | None, range_spec: str | None, file_list: Path | None, *,
                pad: int) -> list[str]:
    chosen = [x for x in (ids, range_spec, file_list) if x is not None]
    if len(chosen) != 1:
        raise ValueError("give exactly one of --ids, --id-range, --file-list")
    if ids is not None:
        return parse_ids(ids)
    if range_spec is not None:
        return id_range(range_spec, pad=pad)
    assert file_list is not None
    return ids_from_file_list(json.loads(file_list.read_text()))


def _abid_settings(settings: Settings, *, endpoint_url: str | None, bucket: str | None,
                   anonymous: bool | None, concurrency: int | None) -> AbidSourceSettings:
    updates: dict[str, object] = {"endpoint_url": endpoint_url, "bucket": bucket,
                                  "anonymous": anonymous, "concurrency": concurrency}
    return settings.abid.model_copy(update={k: v for k, v in updates.items() if v is not None})

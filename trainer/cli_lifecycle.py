"""``binaudit model register|list|show|history|promote|rollback`` and ``binaudit shadow
report``: the model registry from the command line (glue: the work is in trainer.registry
and core.evidence)."""

from __future__ import annotations

import getpass
import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine

from core import registry as core_registry
from core.cliutil import console, fail, settings_of
from core.db import open_engine
from core.evidence import TABLE_HEADER, EvidenceError, shadow_comparison
from core.model.card import ArtifactError
from core.quality import headline
from core.settings import Settings
from core.timewindow import parse_time
from core.truth import TruthEntry, read_truth
from trainer import registry

Opt = typer.Option
shadow_app = typer.Typer(help="The shadow model: how it compares with production.",
                         no_args_is_help=True)
DeploymentOpt = Annotated[str | None, Opt(
    help="Named deployment (default: inference.deployment, else the topic's name)")]
KEY_METRICS = ("accuracy", "auroc")  # card metrics `model list` shows (names containing)


def add_commands(model_app: typer.Typer, app: typer.Typer) -> None:
    """Mount the registry's commands on ``binaudit model`` and ``binaudit shadow``."""
    for name, command in (("register", register_cmd), ("list", list_cmd), ("show", show_cmd),
                          ("history", history_cmd), ("promote", promote_cmd),
                          ("rollback", rollback_cmd)):
        model_app.command(name)(command)
    shadow_app.command("report")(shadow_report_cmd)
    app.add_typer(shadow_app, name="shadow")


def actor() -> str:
    """Who changes a stage, as the history records it (the database adds its own role)."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _deployment(settings: Settings, given: str | None) -> str:
    return given or settings.inference.deployment_for(settings.kafka.topic)


def _truth(path: Path | None) -> dict[str, TruthEntry] | None:
    if path is None:
        return None
    try:
        return read_truth(path)
    except (OSError, ValueError) as exc:
        fail(escape(f"cannot read the truth file: {exc}"))


def register_cmd(
    ctx: typer.Context,
    artifact: Annotated[Path, typer.Argument(help="Artifact directory (model.pt + model.json)")],
    deployment: Annotated[str | None, Opt(help="Also make it a candidate in this deployment.")
                          ] = None,
    upload: Annotated[str | None, Opt(help="Copy it to s3://bucket/prefix/<version>/ and "
                                           "register that URI.")] = None,
    reason: Annotated[str, Opt(help="Reason recorded with the candidate stage.")
                      ] = "registered",
) -> None:
    """Record an artifact in the registry, validated and checksummed (idempotent)."""
    settings = settings_of(ctx)
    if upload is not None and not upload.startswith("s3://"):
        fail(f"--upload needs an s3://bucket/prefix/ URI, not {upload}")
    try:
        with open_engine(settings.db) as engine:
            done = registry.register_artifact(engine, artifact, upload_to=upload,
                                              s3=settings.s3, deployment=deployment,
                                              actor=actor(), reason=reason)
    except (ArtifactError, core_registry.RegistryError) as exc:
        fail(escape(str(exc)))
    console.print(f"{done.version}: {'registered' if done.inserted else 'already registered'} "
                  f"at {done.artifact_uri} (sha256 {done.sha256[:12]})")
    if deployment is not None:
        state = "now candidate" if done.staged_now else f"already {done.stage}"
        console.print(f"{deployment}: {done.version} {state}")


def _metrics(card_metrics: dict[str, Any] | None) -> str:
    shown = [(k, v) for k, v in (card_metrics or {}).items()
             if any(m in k for m in KEY_METRICS) and isinstance(v, int | float)]
    return "\n".join(f"{k} {v:.3f}" for k, v in shown[:3])


def list_cmd(ctx: typer.Context, deployment: Annotated[str | None, Opt(
        help="Only versions that have a stage in this deployment.")] = None) -> None:
    """Registered versions with their stage in each deployment."""
    with open_engine(settings_of(ctx).db) as engine, engine.connect() as conn:
        rows = registry.versions(conn, deployment=deployment)
    table = Table("version", "architecture", "registered (UTC)", "sha256", "stages",
                  "card metrics", title="model versions")
    for v in rows:
        stages = v["stages"] if deployment is None else {deployment: v["stages"][deployment]}
        table.add_row(v["version"], v["architecture"],
                      _utc(v["registered_at"]), (v["sha256"] or "-")[:12],
                      "\n".join(f"{d}: {s}" for d, s in stages.items()) or "-",
                      _metrics(v["metrics"]))
    console.print(table)


def show_cmd(ctx: typer.Context, version: str) -> None:
    """A version's card, artifact, stages and history."""
    with open_engine(settings_of(ctx).db) as engine, engine.connect() as conn:
        found = registry.versions(conn, version=version)
        changes = core_registry.history(conn, version=version)
    if not found:
        fail(f"model version {version} is not registered")
    v, card = found[0], found[0]["card"]
    decision = card.get("decision") or {}
    for name, value in (
            ("version", v["version"]), ("architecture", v["architecture"]),
            ("counts", card.get("class_counts")), ("input size", card.get("input_size")),
            ("created", card.get("created_at")), ("code", card.get("code_version")),
            ("data fingerprint", (card.get("data_fingerprint") or "-")[:12]),
            ("thresholds", f"match P >= {decision.get('match_min_p')}, mismatch score >= "
                           f"{decision.get('mismatch_min_score')}"),
            ("artifact", v["artifact_uri"]), ("sha256", v["sha256"] or "-"),
            ("registered (UTC)", _utc(v["registered_at"])),
            ("stages", ", ".join(f"{d}: {s}" for d, s in v["stages"].items()) or "none")):
        console.print(f"[bold]{name}[/bold]: {value}")
    metrics = Table("card metric", "value")
    for k, val in (card.get("metrics") or {}).items():
        metrics.add_row(k, f"{val:.4f}" if isinstance(val, float) else str(val))
    console.print(metrics)
    console.print(_history_table(changes, f"history of {version}"))


def _evidence_note(ev: dict[str, Any] | None) -> str:
    """One line about a history row's evidence."""
    if not ev:
        return ""
    if ev.get("rollback"):
        return f"rollback from {ev.get('from_version')}"
    source = ev.get("source") or {}
    if source.get("kind") == "backtest":
        return (f"backtest {source.get('candidate_run')} vs {source.get('production_run')}; "
                f"gate {ev.get('gate')}")
    if source.get("kind") == "shadow":
        return f"shadow, {source.get('events')} events; gate {ev.get('gate')}"
    return str(ev.get("gate", ""))


def _utc(moment: datetime | None) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if moment else ""


def _history_table(changes: list[core_registry.StageChange], title: str) -> Table:
    table = Table("#", "at (UTC)", "deployment", "version", "from -> to", "actor (db role)",
                  "forced", "reason", "evidence", title=title)
    for c in changes:
        table.add_row(str(c.id), _utc(c.at), c.deployment,
                      c.version, f"{c.from_stage or '-'} -> {c.to_stage}",
                      f"{c.actor} ({c.db_user})", "FORCED" if c.forced else "", escape(c.reason),
                      _evidence_note(c.evidence))
    return table


def history_cmd(ctx: typer.Context, deployment: Annotated[str | None, Opt(
        help="Only this deployment's changes.")] = None,
                limit: int = 200) -> None:
    """Every stage change (append-only), oldest first."""
    with open_engine(settings_of(ctx).db) as engine, engine.connect() as conn:
        changes = core_registry.history(conn, deployment=deployment, limit=limit)
    console.print(_history_table(changes, "model stage history"))


def _gate_table(gate: registry.GateResult, candidate: str) -> Table:
    header = list(TABLE_HEADER)
    header[1], header[2] = f"candidate {candidate}", f"production {gate.production}"
    table = Table(*header, title="promotion gate")
    for row in gate.decision.table:
        table.add_row(*row[:4], f"[red]{row[4]}[/red]" if row[4] == "FAILED" else row[4])
    return table


def _print_gate(gate: registry.GateResult, candidate: str) -> None:
    source = gate.source or {}
    console.print(escape(f"evidence: {json.dumps(source) if source else 'none found'}"))
    if gate.decision.table:
        console.print(_gate_table(gate, candidate))
    for failure in gate.decision.failures:
        console.print(f"[red]- {escape(failure)}[/red]")


def _topic(settings: Settings, deployment: str, given: str | None) -> str:
    """Where a deployment's backtests ran: the configured topic for the configured
    deployment, else the deployment's name (one deployment per topic by default)."""
    if given is not None:
        return given
    topic = settings.kafka.topic
    return topic if deployment == settings.inference.deployment_for(topic) else deployment


def promote_cmd(
    ctx: typer.Context,
    version: str,
    to: Annotated[str, Opt("--to", help="candidate | shadow | production | archived")],
    reason: Annotated[str, Opt(help="Why (recorded in the history).")],
    deployment: DeploymentOpt = None,
    evidence: Annotated[list[str] | None, Opt(
        help="Backtest run ids, one of the candidate and one of production (default: the "
             "newest qualifying pair, else the shadow verdicts).")] = None,
    truth: Annotated[Path | None, Opt(help="Truth CSV (binaudit publish --truth): gate on "
                                           "audit quality (AUROC).")] = None,
    topic: Annotated[str | None, Opt(help="Topic of the backtest evidence (default: the "
                                          "deployment's).")] = None,
    force: Annotated[bool, Opt(help="Promote even if the gate refuses (recorded).")] = False,
) -> None:
    """Move VERSION to a stage; production must pass the gate against the current one."""
    if to not in ("candidate", "shadow", "production", "archived"):
        fail(f"--to must be candidate, shadow, production or archived, not {to}")
    settings = settings_of(ctx)
    name = _deployment(settings, deployment)
    request = registry.PromotionRequest(
        deployment=name, version=version, to_stage=cast(core_registry.Stage, to),
        reason=reason, actor=actor(), topic=_topic(settings, name, topic),
        evidence_runs=tuple(evidence or ()), truth=_truth(truth),
        truth_path=str(truth) if truth else None, force=force)
    try:
        with open_engine(settings.db) as engine:
            changes, gate = registry.promote(engine, request, settings.registry)
    except registry.PromotionRefused as refused:
        _print_gate(refused.gate, version)
        fail(f"refused: {version} not promoted to production in {name} (nothing written; "
             "--force --reason ... promotes anyway and records it)")
    except (core_registry.RegistryError, EvidenceError) as exc:
        fail(escape(str(exc)))
    if gate is not None:
        _print_gate(gate, version)
    _print_changes(changes)


def _print_changes(changes: list[core_registry.StageChange]) -> None:
    for c in changes:
        forced = " [red](forced)[/red]" if c.forced else ""
        console.print(f"{c.deployment}: {c.version} {c.from_stage or '-'} -> {c.to_stage}"
                      f"{forced}")


def rollback_cmd(
    ctx: typer.Context,
    reason: Annotated[str, Opt(help="Why (recorded as 'rollback: ...').")],
    deployment: DeploymentOpt = None,
) -> None:
    """Make the previous production version production again."""
    settings = settings_of(ctx)
    try:
        with open_engine(settings.db) as engine:
            changes = registry.rollback(engine, deployment=_deployment(settings, deployment),
                                        reason=reason, actor=actor())
    except core_registry.RegistryError as exc:
        fail(escape(str(exc)))
    _print_changes(changes)


def shadow_report_cmd(
    ctx: typer.Context,
    deployment: DeploymentOpt = None,
    version: Annotated[str | None, Opt(help="Shadow version (default: the current one).")
                       ] = None,
    since: Annotated[str | None, Opt(help="Only shadow verdicts since (ISO 8601, UTC if "
                                          "naive).")] = None,
    truth: Annotated[Path | None, Opt(help="Truth CSV: audit quality of both.")] = None,
    out: Annotated[Path | None, Opt(help="Write the report here as JSON and, next to it, "
                                         "Markdown (.md).")] = None,
) -> None:
    """Shadow vs production on the same events: agreement, changed verdicts, accuracy.

    Also the shadow's coverage of production's events and, with --truth, both audit
    qualities."""
    settings = settings_of(ctx)
    try:
        start = parse_time(since) if since else None
    except ValueError as exc:
        fail(f"--since: {exc}")
    try:
        with open_engine(settings.db) as engine:
            report = _shadow_report(engine, _deployment(settings, deployment), version, start,
                                    _truth(truth))
    except EvidenceError as exc:
        fail(escape(str(exc)))
    console.print(_report_table(report))
    if out is not None:
        json_path = out if out.suffix == ".json" else out.with_suffix(".json")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        json_path.with_suffix(".md").write_text(report_markdown(report))
        console.print(f"written to {json_path} and {json_path.with_suffix('.md')}")


def _shadow_report(engine: Engine, deployment: str, version: str | None, since: Any,
                   truth: dict[str, TruthEntry] | None) -> dict[str, Any]:
    with engine.connect() as conn:
        return shadow_comparison(conn, deployment, version, since, truth)


def _num(value: Any, pct: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if pct else f"{value:.3f}" if isinstance(value, float) \
        else str(value)


def report_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, value) rows of a shadow report, for the console and the Markdown file."""
    s, p = r["shadow"], r["production"]
    rows = [("deployment", r["deployment"]), ("shadow version", r["version"]),
            ("production version(s)", ", ".join(r["production_versions"]) or "-"),
            ("window", f"{r['window']['from']} .. {r['window']['to']}"),
            ("events compared", str(r["events"])),
            ("shadow coverage", f"{_num(r['coverage'], True)} ({r['shadow_rows']} shadow / "
                                f"{r['production_rows']} production rows)"),
            ("count agreement", _num(r["count_agreement"], True)),
            ("verdict agreement", _num(r["verdict_agreement"], True)),
            ("verdicts that would change", str(r["changed_verdicts"])),
            ("events in scope (both cards' counts)", str(s["scoped"])),
            ("accuracy vs manifest: shadow / production",
             f"{_num(s['accuracy'], True)} / {_num(p['accuracy'], True)}"),
            ("decided (match|mismatch): shadow / production",
             f"{_num(s['decided_rate'], True)} / {_num(p['decided_rate'], True)}")]
    rows += [(f"change: {t['production']} -> {t['shadow']}", str(t["events"]))
             for t in r["transitions"] if t["changed"]]
    if r["audit_quality"] is not None:
        prod = dict(headline(r["audit_quality"]["production"]))
        rows += [(f"audit quality: {k} (shadow / production)", f"{v} / {prod.get(k, 'n/a')}")
                 for k, v in headline(r["audit_quality"]["shadow"])]
    return rows


def _report_table(report: dict[str, Any]) -> Table:
    table = Table("shadow report", "value")
    for row in report_rows(report):
        table.add_row(*row)
    return table


def report_markdown(report: dict[str, Any]) -> str:
    """The shadow report for people: the numbers, then the first changed verdicts."""
    lines = [f"# Shadow report: {report['version']} in {report['deployment']}", "",
             "| what | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in report_rows(report)]
    lines += ["", "## Verdicts that would change (first listed)", "",
              "| event | manifest | production | shadow |", "|---|---|---|---|"]
    lines += [f"| {c['event_id']} | {c['expected_quantity']} | {c['production_status']} "
              f"({c['production_predicted']}) | {c['shadow_status']} ({c['shadow_predicted']}) |"
              for c in report["changed_events"]]
    return "\n".join(lines) + "\n"

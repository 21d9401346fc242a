"""Backtest reports: numbers computed from ``backtest_results`` rows by pure functions, then
written as JSON (machine-readable), Markdown (people) and a PNG confusion matrix.

Metrics reuse ``core.scoring.counting_metrics``. Two scopes: every event with a prediction
(``accuracy``, ``rmse``, ...) and only events whose expected count the model supports
(``accuracy_1_5``, ``rmse_1_5``, ... for classes 1..5). Agreement with production compares the
verdict status per event with ``audit_results`` of one production model version.

A run may be written by N processes (``replay --shard i/N``): the report reads every row of
the run id, in (partition, offset) order so that it does not depend on which process wrote
what when, and its ``coverage`` says which of the topic's partitions are not finished yet.
"""

from __future__ import annotations

import json
import math
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from core.quality import audit_quality, markdown, pr_curve
from core.scoring import counting_metrics
from core.tables import (
    audit_results,
    backtest_results,
    backtest_run_partitions,
    backtest_runs,
)
from core.truth import TruthEntry, truth_rows

SCALARS = ("accuracy", "rmse", "mae", "off_by_one_accuracy")
MAX_LISTED_CHANGES = 200  # per list in the Markdown report (the JSON keeps them all)


@dataclass(frozen=True)
class ResultRow:
    event_id: str | None
    bin_id: str | None
    image_uri: str | None
    expected_quantity: int | None
    predicted_quantity: int | None
    status: str
    error_kind: str | None = None
    p_expected: float | None = None
    discrepancy_score: float | None = None


@dataclass(frozen=True)
class ProductionRow:
    event_id: str
    predicted_quantity: int | None
    status: str


def scope_suffix(class_counts: Sequence[int]) -> str:
    """``[1,2,3,4,5]`` → ``"1_5"``; a non-contiguous set → ``"0_2_4"``."""
    counts = sorted(class_counts)
    if counts == list(range(counts[0], counts[-1] + 1)) and len(counts) > 1:
        return f"{counts[0]}_{counts[-1]}"
    return "_".join(str(c) for c in counts)


def _clean(value: Any) -> Any:
    """NaN → None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def backtest_metrics(rows: Sequence[ResultRow], class_counts: Sequence[int]) -> dict[str, Any]:
    """Counting metrics over the predicted rows, overall and on the supported counts."""
    predicted = [r for r in rows if r.status != "error" and r.predicted_quantity is not None
                 and r.expected_quantity is not None]
    y_true = [int(r.expected_quantity) for r in predicted if r.expected_quantity is not None]
    y_pred = [int(r.predicted_quantity) for r in predicted if r.predicted_quantity is not None]
    classes = sorted(set(y_true) | set(y_pred) | set(class_counts))
    overall = counting_metrics(y_true, y_pred, classes)
    supported = set(class_counts)
    pairs = [(t, p) for t, p in zip(y_true, y_pred, strict=True) if t in supported]
    scoped = counting_metrics([t for t, _ in pairs], [p for _, p in pairs], sorted(supported))
    suffix = scope_suffix(class_counts)
    out: dict[str, Any] = {
        "events": len(rows),
        "predicted": len(predicted),
        "errors": sum(r.status == "error" for r in rows),
        "statuses": dict(sorted(Tally(r.status for r in rows).items())),
        "error_kinds": dict(sorted(Tally(r.error_kind for r in rows if r.error_kind).items())),
        **{k: overall[k] for k in SCALARS},
        "per_class_accuracy": overall["per_class_accuracy"],
        "support": overall["support"],
        "classes": overall["classes"],
        "confusion_matrix": overall["confusion_matrix"],
        f"n_{suffix}": scoped["n"],
        **{f"{k}_{suffix}": scoped[k] for k in SCALARS},
        f"per_class_accuracy_{suffix}": scoped["per_class_accuracy"],
    }
    return _clean(out)


def _change(row: ResultRow, prod: ProductionRow) -> dict[str, Any]:
    return {"event_id": row.event_id, "bin_id": row.bin_id, "image_uri": row.image_uri,
            "expected_quantity": row.expected_quantity,
            "production_predicted": prod.predicted_quantity, "production_status": prod.status,
            "candidate_predicted": row.predicted_quantity, "candidate_status": row.status}


def compare_with_production(rows: Sequence[ResultRow], production: Sequence[ProductionRow],
                            *, version: str, class_counts: Sequence[int]) -> dict[str, Any]:
    """Verdict agreement on the events both models judged, and the verdicts that change."""
    prod = {p.event_id: p for p in production}
    both = [(r, prod[r.event_id]) for r in rows
            if r.status != "error" and r.event_id is not None and r.event_id in prod]
    n = len(both)
    same_status = sum(r.status == p.status for r, p in both)
    same_count = sum(r.predicted_quantity == p.predicted_quantity for r, p in both)
    new = [_change(r, p) for r, p in both if r.status == "mismatch" and p.status != "mismatch"]
    resolved = [_change(r, p) for r, p in both
                if p.status == "mismatch" and r.status != "mismatch"]
    as_rows = [ResultRow(r.event_id, r.bin_id, r.image_uri, r.expected_quantity,
                         p.predicted_quantity, p.status) for r, p in both]
    prod_metrics = backtest_metrics(as_rows, class_counts)
    suffix = scope_suffix(class_counts)
    return _clean({
        "model_version": version,
        "events": n,
        "verdict_agreement": same_status / n if n else math.nan,
        "count_agreement": same_count / n if n else math.nan,
        "changed_verdicts": n - same_status,
        "production_accuracy": prod_metrics["accuracy"],
        f"production_accuracy_{suffix}": prod_metrics[f"accuracy_{suffix}"],
        "new_mismatches": new,
        "resolved_mismatches": resolved,
    })


def quality_section(rows: Sequence[ResultRow], truth: Mapping[str, TruthEntry]
                    ) -> dict[str, Any]:
    """Audit quality of the run's verdicts against a truth file (errors are not verdicts)."""
    verdicts = [{"event_id": r.event_id, "expected_quantity": r.expected_quantity,
                 "status": r.status, "discrepancy_score": r.discrepancy_score}
                for r in rows if r.status != "error" and r.event_id is not None]
    joined, unknown = truth_rows(verdicts, truth)
    return {**audit_quality(joined), "not_in_truth": unknown, "pr_curve": pr_curve(joined)}


@dataclass(frozen=True)
class PartitionDone:
    """One partition a replay process took up for the run."""

    partition: int
    start_offset: int
    stop_offset: int
    next_offset: int
    finished: bool


def coverage(topic_partitions: Sequence[int], taken: Sequence[PartitionDone]
             ) -> dict[str, Any]:
    """Which of the topic's partitions the run's processes finished, are still on (with the
    records left), or never took up. Complete when all are finished."""
    by_partition = {t.partition: t for t in taken}
    finished = sorted(p for p, t in by_partition.items() if t.finished)
    unfinished = {str(p): {"next_offset": t.next_offset, "stop_offset": t.stop_offset,
                           "records_left": t.stop_offset - t.next_offset}
                  for p, t in sorted(by_partition.items()) if not t.finished}
    untouched = sorted(set(topic_partitions) - set(by_partition))
    return {"complete": not unfinished and not untouched,
            "partitions": len(set(topic_partitions) | set(by_partition)),
            "finished": finished, "unfinished": unfinished, "not_started": untouched}


def build_report(run: dict[str, Any], rows: Sequence[ResultRow],
                 production: tuple[str, Sequence[ProductionRow]] | None,
                 truth: Mapping[str, TruthEntry] | None = None,
                 taken: Sequence[PartitionDone] | None = None) -> dict[str, Any]:
    """The whole report of one run (pure); with ``truth``, its audit quality too, and with
    the partitions its processes ``taken`` up, its coverage."""
    class_counts = list(run["class_counts"])
    report = {"run": run, **backtest_metrics(rows, class_counts)}
    report["coverage"] = None if taken is None else coverage(
        run.get("partitions") or [int(p) for p in run["resolved_offsets"]], taken)
    report["audit_quality"] = _clean(quality_section(rows, truth)) if truth is not None else None
    comparison = None
    if production is not None:
        comparison = compare_with_production(rows, production[1], version=production[0],
                                             class_counts=class_counts)
    report["agreement_with_production"] = comparison["verdict_agreement"] if comparison else None
    report["production"] = comparison
    return report


# ---- loading (thin) ------------------------------------------------------------------------

def load_run(*, conn: Connection, run_id: str) -> tuple[dict[str, Any], list[ResultRow]]:
    run = conn.execute(select(backtest_runs).where(backtest_runs.c.run_id == run_id)
                       ).mappings().one_or_none()
    if run is None:
        raise LookupError(f"no backtest run {run_id!r}")
    r = backtest_results.c
    rows = conn.execute(select(r.event_id, r.bin_id, r.image_uri, r.expected_quantity,
                               r.predicted_quantity, r.status, r.error_kind, r.p_expected,
                               r.discrepancy_score)
                        .where(r.run_id == run_id).order_by(r.partition, r.offset)).all()
    meta = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in run.items()}
    return meta, [ResultRow(*row) for row in rows]


def load_partitions(*, conn: Connection, run_id: str) -> list[PartitionDone]:
    """The partitions the run's processes took up, with their progress."""
    t = backtest_run_partitions.c
    found = conn.execute(select(t.partition, t.start_offset, t.stop_offset, t.next_offset,
                                t.finished_at.is_not(None))
                         .where(t.run_id == run_id).order_by(t.partition)).all()
    return [PartitionDone(*row) for row in found]


def load_production(*, conn: Connection, run_id: str, version: str | None
                    ) -> tuple[str, list[ProductionRow]] | None:
    """Production verdicts for the run's events: of ``version``, or of the version that judged
    most of them. None when production never saw these events."""
    a, b = audit_results.c, backtest_results.c
    joined = audit_results.join(backtest_results, (a.event_id == b.event_id)
                                & (b.run_id == run_id))
    if version is None:
        version = conn.execute(
            select(a.model_version).select_from(joined).group_by(a.model_version)
            .order_by(func.count().desc(), a.model_version).limit(1)).scalar_one_or_none()
        if version is None:
            return None
    rows = conn.execute(select(a.event_id, a.predicted_quantity, a.status).select_from(joined)
                        .where(a.model_version == version)).all()
    return version, [ProductionRow(*row) for row in rows]


def load_report(engine: Engine, run_id: str, *, compare_to: str | None = None,
                truth: Mapping[str, TruthEntry] | None = None) -> dict[str, Any]:
    """The report of ``run_id`` over every process's rows (one snapshot of the database)."""
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, \
            conn.begin():
        run, rows = load_run(conn=conn, run_id=run_id)
        production = load_production(conn=conn, run_id=run_id, version=compare_to)
        taken = load_partitions(conn=conn, run_id=run_id)
    return build_report(run, rows, production, truth, taken)


# ---- rendering -------------------------------------------------------------------------------

def write_report(report: dict[str, Any], path: Path) -> list[Path]:
    # matplotlib costs a second to import: only runs that write a report pay for it.
    from core.plots import confusion, precision_recall

    path.parent.mkdir(parents=True, exist_ok=True)
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    png = confusion(report["confusion_matrix"], report["classes"],
                    path.with_name(f"{path.stem}-confusion.png"),
                    title=f"{report['run']['model_version']} vs EXPECTED_QUANTITY")
    written = [json_path, path.with_suffix(".md"), png]
    quality = report.get("audit_quality")
    if quality is not None:
        written.append(precision_recall(
            quality["pr_curve"], path.with_name(f"{path.stem}-pr.png"),
            base_rate=quality["wrong_rate_judged"],
            operating_point=(quality["recall"], quality["mismatch_precision"]),
            title=f"{report['run']['model_version']}: discrepancy score"))
    written[1].write_text(render_markdown(report, png.name, pr_png=(
        written[3].name if quality is not None else None)))
    return written


def _coverage_lines(cover: dict[str, Any] | None) -> list[str]:
    if cover is None:
        return []
    if cover["complete"]:
        return [f"- coverage: complete ({cover['partitions']} partitions)"]
    left = ", ".join(f"{p} ({u['records_left']} records left)"
                     for p, u in cover["unfinished"].items())
    return [f"- coverage: **incomplete**, {len(cover['finished'])} of {cover['partitions']} "
            f"partitions finished; unfinished: {left or '-'}; not started: "
            f"{', '.join(map(str, cover['not_started'])) or '-'}"]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render_markdown(report: dict[str, Any], png_name: str, *,
                    pr_png: str | None = None) -> str:
    run = report["run"]
    suffix = scope_suffix(run["class_counts"])
    lines = [
        f"# Backtest {run['run_id']}", "",
        f"- model: `{run['model_version']}`  topic: `{run['topic']}`",
        f"- window: `{json.dumps(run['requested_window'])}`",
        f"- offsets: `{json.dumps(run['resolved_offsets'])}`",
        f"- events: {report['events']} (predicted {report['predicted']}, errors "
        f"{report['errors']} {report['error_kinds']})",
        f"- statuses: {report['statuses']}",
        *_coverage_lines(report.get("coverage")), "",
        f"| metric | all counts | counts {suffix.replace('_', '..')} |", "|---|---|---|",
        f"| events | {report['predicted']} | {report[f'n_{suffix}']} |",
        *(f"| {k} | {_fmt(report[k])} | {_fmt(report[f'{k}_{suffix}'])} |" for k in SCALARS),
        "", "| count | support | accuracy |", "|---|---|---|",
        *(f"| {c} | {report['support'][c]} | {_fmt(report['per_class_accuracy'][c])} |"
          for c in report["per_class_accuracy"]),
        "", f"![confusion matrix]({png_name})", "",
    ]
    quality = report.get("audit_quality")
    if quality is not None:
        lines += ["## Audit quality (against the truth file)", "",
                  f"Verdicts not in the truth file: {quality['not_in_truth']}.", "",
                  markdown(quality)]
        if pr_png is not None:
            lines += [f"![precision-recall]({pr_png})", ""]
    prod = report["production"]
    if prod is None:
        lines.append("No production verdicts for these events.")
        return "\n".join(lines) + "\n"
    lines += [
        f"## Against production `{prod['model_version']}`", "",
        f"- events judged by both: {prod['events']}",
        f"- verdict agreement: {_fmt(prod['verdict_agreement'])}; count agreement: "
        f"{_fmt(prod['count_agreement'])}; changed verdicts: {prod['changed_verdicts']}",
        f"- production accuracy {_fmt(prod['production_accuracy'])}, on counts "
        f"{suffix.replace('_', '..')}: {_fmt(prod[f'production_accuracy_{suffix}'])}",
    ]
    for title, key in (("New mismatches", "new_mismatches"),
                       ("Resolved mismatches", "resolved_mismatches")):
        items = prod[key]
        lines += ["", f"### {title} ({len(items)})", ""]
        if items:
            lines += ["| event | bin | expected | production | candidate | image |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {c['event_id']} | {c['bin_id']} | {c['expected_quantity']} | "
                      f"{c['production_predicted']} ({c['production_status']}) | "
                      f"{c['candidate_predicted']} ({c['candidate_status']}) | {c['image_uri']} |"
                      for c in items[:MAX_LISTED_CHANGES]]
    return "\n".join(lines) + "\n"


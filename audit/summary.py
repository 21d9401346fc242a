"""`binaudit summary`: what the worker decided for one topic (the demo's closing table)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, text

from core.quality import audit_quality, headline, json_safe, pr_curve
from core.scoring import counting_metrics
from core.truth import TruthEntry, truth_rows


@dataclass(frozen=True)
class TopicSummary:
    events: int
    by_status: dict[str, int]
    dead_letters: dict[str, int]
    metrics_all: dict[str, Any]
    metrics_supported: dict[str, Any]
    supported: list[int]
    seconds: float
    first_mismatches: list[Any]
    quality: dict[str, Any] | None = None  # audit quality vs a truth file (core.quality)

    @property
    def throughput(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


def summarize(rows: list[Any], letters: list[Any], mismatches: list[Any],
              supported: list[int], truth: Mapping[str, TruthEntry] | None = None
              ) -> TopicSummary:
    """Pure: verdict rows → counts, accuracy and RMSE against EXPECTED_QUANTITY, and with
    ``truth`` the audit quality of the verdicts and scores."""
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    true = [r.expected_quantity for r in rows]
    pred = [r.predicted_quantity for r in rows]
    inside = [(t, p) for t, p in zip(true, pred, strict=True) if t in supported]
    times = [r.processed_at for r in rows]
    seconds = (max(times) - min(times)).total_seconds() if len(times) > 1 else 0.0
    return TopicSummary(
        events=len(rows) + len(letters), by_status=by_status,
        dead_letters={r.error_kind: r.n for r in letters},
        metrics_all=counting_metrics(true, pred, supported),
        metrics_supported=counting_metrics([t for t, _ in inside], [p for _, p in inside],
                                           supported),
        supported=supported, seconds=seconds, first_mismatches=mismatches,
        quality=_quality(rows, truth) if truth is not None else None,
    )


def _quality(rows: list[Any], truth: Mapping[str, TruthEntry]) -> dict[str, Any]:
    joined, unknown = truth_rows((r._mapping for r in rows), truth)
    return {**audit_quality(joined), "not_in_truth": unknown, "pr_curve": pr_curve(joined)}


def load_summary(engine: Engine, topic: str, model_version: str | None = None,
                 truth: Mapping[str, TruthEntry] | None = None) -> TopicSummary:
    params = {"topic": topic, "mv": model_version}
    where = "topic = :topic AND (CAST(:mv AS text) IS NULL OR model_version = :mv)"
    with engine.connect() as conn:
        rows = conn.execute(text(
            f"SELECT event_id, status, expected_quantity, predicted_quantity, processed_at,"
            f" model_version, discrepancy_score FROM audit_results WHERE {where}"),
            params).all()
        letters = conn.execute(text(
            "SELECT error_kind, count(*) AS n FROM dead_letters WHERE topic = :topic "
            "GROUP BY 1 ORDER BY 2 DESC"), params).all()
        mismatches = conn.execute(text(
            f"SELECT bin_id, expected_quantity, predicted_quantity,"
            f" round(discrepancy_score::numeric, 4) AS score, image_uri FROM audit_results"
            f" WHERE {where} AND status = 'mismatch'"
            f" ORDER BY discrepancy_score DESC NULLS LAST, id LIMIT 10"), params).all()
        versions = {r.model_version for r in rows}
        supported = _supported_counts(conn, versions)
    return summarize(list(rows), list(letters), list(mismatches), supported, truth)


def _supported_counts(conn: Any, versions: set[str]) -> list[int]:
    if not versions:
        return [1, 2, 3, 4, 5]
    card = conn.execute(text("SELECT card FROM model_versions WHERE version = :v"),
                        {"v": sorted(versions)[0]}).scalar_one_or_none()
    return list(card["class_counts"]) if card else [1, 2, 3, 4, 5]


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}%"


def render(s: TopicSummary, console: Console) -> None:
    console.print(f"[bold]{s.events}[/bold] events; verdicts {s.by_status}; "
                  f"dead letters {s.dead_letters or 0}")
    table = Table("scope", "events", "accuracy", "RMSE", "off-by-one", title=(
        "Predicted count vs EXPECTED_QUANTITY"))
    lo, hi = min(s.supported), max(s.supported)
    for name, m in ((f"counts {lo}-{hi} (what the model can say)", s.metrics_supported),
                    ("all bins (0-48 items)", s.metrics_all)):
        table.add_row(name, str(m["n"]), _pct(m["accuracy"]), f"{m['rmse']:.2f}",
                      _pct(m["off_by_one_accuracy"]))
    console.print(table)
    if s.first_mismatches:
        mm = Table("bin", "expected", "predicted", "score", "image",
                   title="Top mismatches (highest discrepancy score first)")
        for r in s.first_mismatches:
            mm.add_row(r.bin_id, str(r.expected_quantity), str(r.predicted_quantity),
                       str(r.score), r.image_uri)
        console.print(mm)
    if s.quality is not None:
        table = Table("metric", "value", title="Audit quality against the truth file "
                      f"({s.quality['not_in_truth']} verdicts not in it)")
        for name, value in headline(s.quality):
            table.add_row(name, value)
        console.print(table)
    console.print(f"throughput: {s.throughput:.1f} verdicts/s over {s.seconds:.1f}s "
                  "(first to last row written)")



def write_quality(s: TopicSummary, path: Path, topic: str) -> list[Path]:
    """The audit-quality section as JSON at ``path`` and its precision-recall PNG next to it."""
    # matplotlib costs a second to import: only `summary --report` pays for it.
    from core.plots import precision_recall

    assert s.quality is not None, "write_quality needs a summary made with a truth file"
    q = s.quality
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe({"topic": topic, "statuses": s.by_status,
                                          "audit_quality": q}), indent=1, allow_nan=False)
                    + "\n")
    png = precision_recall(q["pr_curve"], path.with_suffix(".pr.png"),
                           base_rate=q["wrong_rate_judged"],
                           operating_point=(q["recall"], q["mismatch_precision"]),
                           title=f"{topic}: discrepancy score")
    return [path, png]

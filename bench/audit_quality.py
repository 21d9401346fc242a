"""Audit quality of a model on the real sample with known wrong manifests (the "audit quality"
section of bench/results): publish the sample with ``--wrong-manifest-rate`` (truth file), run
the worker with the model until the topic is drained, then the same numbers as
``binaudit summary --truth`` (core.quality) plus the model card's calibration and thresholds.

    .venv/bin/python -m bench.audit_quality --model artifacts/models/current \\
        --out bench/results/audit-quality

writes ``<out>.json`` (raw numbers + curve), ``<out>.md`` (tables) and ``<out>.pr.png``.
Uses the bench database (``binaudit_bench_quality``) and bucket; the topic is deleted after.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

from audit.summary import load_summary, write_quality
from bench.samples import SAMPLE_DIR
from bench.services import bench_settings, delete_topics, kafka_for, prepare_database
from core.model.card import DecisionPolicy, read_card
from core.quality import audit_quality, json_safe, markdown
from core.settings import Settings
from core.truth import TruthEntry, read_truth, truth_rows
from inference.compare import decide, prediction_from_probs
from robots.manifests import WrongManifests
from robots.publisher import EventPlan, PublishOptions, publish
from worker.app import Worker

log = logging.getLogger(__name__)


def measure(settings: Settings, model: Path, *, out: Path, rate: float, seed: int,
            source: Path = SAMPLE_DIR) -> dict[str, Any]:
    """Publish with wrong manifests, judge with ``model``, write and return the section."""
    load_start = os.getloadavg()[0]
    topic = f"bench-quality-{uuid.uuid4().hex[:10]}"
    run = kafka_for(settings, topic=topic).model_copy(update={
        "worker": settings.worker.model_copy(update={"exit_when_idle_s": 3.0}),
        "inference": settings.inference.model_copy(update={"model": str(model)})})
    truth_path = out.with_suffix(".truth.csv")
    publish(run, PublishOptions(source=source, topic=topic, progress=False,
                                plan=EventPlan(bucket=run.s3.bucket, seed=seed),
                                wrong_manifests=WrongManifests(rate=rate, truth_path=truth_path)))
    try:
        Worker(run).run()
    finally:
        delete_topics(settings, [topic])
    engine = create_engine(run.db.url.get_secret_value())
    truth = read_truth(truth_path)
    try:
        summary = load_summary(engine, topic, truth=truth)
        argmax = argmax_rule_quality(engine, topic, truth)
    finally:
        engine.dispose()
    write_quality(summary, out.with_suffix(".json"), topic)
    card = read_card(model)
    section = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"), "host": platform.node(),
        # Quality numbers, not timings; the load says whether anything else shared the machine.
        "load_start": load_start, "load_end": os.getloadavg()[0],
        "model": {"version": card.version, "path": str(model),
                  "calibration": card.calibration.model_dump(mode="json"),
                  "decision": card.decision.model_dump(mode="json"),
                  "hyperparameters": card.hyperparameters},
        "sample": str(source), "wrong_manifest_rate": rate, "seed": seed,
        "truth_file": truth_path.name, "statuses": summary.by_status,
        "audit_quality": json.loads(out.with_suffix(".json").read_text())["audit_quality"],
        "argmax_rule": json_safe(argmax),
    }
    out.with_suffix(".json").write_text(json.dumps(section, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(section, out.with_suffix(".pr.png").name))
    return section


def argmax_rule_quality(engine: Engine, topic: str, truth: dict[str, TruthEntry]
                        ) -> dict[str, Any]:
    """The same predictions under the old rule (mismatch whenever the most probable count is
    not the manifest's: thresholds 0 and 0), for comparison."""
    policy = DecisionPolicy(match_min_p=0.0, mismatch_min_score=0.0)
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT event_id, expected_quantity, class_probabilities FROM audit_results "
            "WHERE topic = :t"), {"t": topic}).all()
    verdicts = []
    for r in rows:
        counts = sorted(int(c) for c in r.class_probabilities)
        probs = [r.class_probabilities[str(c)] for c in counts]
        v = decide(prediction_from_probs(probs, probs, counts), expected=r.expected_quantity,
                   supported_counts=counts, policy=policy)
        verdicts.append({"event_id": r.event_id, "expected_quantity": r.expected_quantity,
                         "status": v.status.value, "discrepancy_score": v.discrepancy_score})
    q = audit_quality(truth_rows(verdicts, truth)[0])
    keep = ("coverage", "false_alarms", "judged_correct", "false_alarm_rate", "wrong_flagged",
            "judged_wrong", "recall", "mismatch_precision", "statuses")
    return {k: q[k] for k in keep}


def render(section: dict[str, Any], png: str) -> str:
    """The section as Markdown (what README's example report quotes)."""
    m, q = section["model"], section["audit_quality"]
    cal, dec = m["calibration"], m["decision"]
    return "\n".join([
        f"# Audit quality: {m['version']}", "",
        f"- {section['date_utc']} on {section['host']}; sample `{section['sample']}`, "
        f"{100 * section['wrong_manifest_rate']:g} % wrong manifests (seed {section['seed']}, "
        f"truth `{section['truth_file']}`)",
        f"- load average (1 min) at start / end: {section['load_start']:.2f} / "
        f"{section['load_end']:.2f} (quality numbers; nothing here is timed)",
        f"- calibration: temperature {cal['temperature']:.3f}, ECE {_num(cal['ece_before'])} "
        f"-> {_num(cal['ece_after'])} on {cal['fitted_on']}",
        f"- thresholds ({dec['chosen_on']}, target false-alarm rate "
        f"{dec['target_false_alarm_rate']}): match when P(manifest count) >= "
        f"{dec['match_min_p']:.4f}, mismatch when 1 - P >= {dec['mismatch_min_score']:.4f}",
        f"- verdicts: {section['statuses']}", "",
        markdown(q), f"![precision-recall]({png})", "",
        "The same predictions under the old argmax rule (a mismatch whenever the most probable "
        "count is not the manifest's):", "",
        "| argmax rule | value |", "|---|---|",
        *(f"| {k} | {v} |" for k, v in section["argmax_rule"].items()), ""])


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    """CLI of this section (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results/audit-quality"))
    parser.add_argument("--rate", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db-name", default="binaudit_bench_quality")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    settings = bench_settings(Settings(), db_name=args.db_name,
                              inference={"device": "cpu"})
    prepare_database(settings)
    section = measure(settings, args.model.resolve(), out=args.out, rate=args.rate,
                      seed=args.seed)
    q = section["audit_quality"]
    log.info("false-alarm rate %s, recall %s, coverage %s -> %s.{json,md,pr.png}",
             q["false_alarm_rate"], q["recall"], q["coverage"], args.out)


if __name__ == "__main__":
    main()

"""Postgres write headroom: rows/s of the worker's own batch insert into a scratch copy of
``audit_results``, at 16, 64 and 256 rows per transaction, in interleaved windows.

    python -m bench.pg_insert --out bench/results/pg-insert

The copy is ``CREATE TABLE <scratch>.audit_results (LIKE public.audit_results INCLUDING ALL)
PARTITION BY RANGE (captured_at)`` with this month's partition and a default one, in a
throwaway schema of the configured database (only the real table's definition is read; the
copy gets its own id sequence), dropped at the end. Rows go through
``worker.io.pg_sink.ResultSink.write`` (``INSERT .. ON CONFLICT DO NOTHING .. RETURNING``, one
transaction per batch) on an engine whose ``schema_translate_map`` points at the scratch
schema. Writes OUT.json and OUT.md with the machine and the load average at start and end; a
run that starts above ``--max-load`` (1-minute load) is marked busy and gets no headline.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.env import Rate, load_average, machine_info, write_result
from core.partitions import Month, partition_name
from core.settings import Settings
from schemas.records import AuditVerdict, VerdictStatus
from worker.io.pg_sink import ResultSink, WriteBatch

log = logging.getLogger(__name__)

BATCH_SIZES = (16, 64, 256)
CLASSES = 11  # the counter's classes 0..10: class_probabilities holds 11 floats


def scratch_ddl(schema: str, now: datetime) -> list[str]:
    """The statements that make ``schema.audit_results`` a copy of the real table's
    definition (columns, defaults, constraints, indexes) with its own id sequence,
    partitioned by month like the real one (migration 0010): the months the rows' capture
    times fall in (up to a minute before ``now``) and a default partition."""
    table = f'"{schema}".audit_results'
    months = sorted({Month.of(now - timedelta(minutes=2)), Month.of(now)})
    return [
        f'CREATE SCHEMA "{schema}"',
        f"CREATE TABLE {table} (LIKE public.audit_results INCLUDING ALL) "
        "PARTITION BY RANGE (captured_at)",
        f'CREATE SEQUENCE "{schema}".audit_results_id_seq',
        f"ALTER TABLE {table} ALTER COLUMN id "
        f"SET DEFAULT nextval('\"{schema}\".audit_results_id_seq')",
        *(f'CREATE TABLE "{schema}".{partition_name(m)} PARTITION OF {table} '
          f"FOR VALUES FROM ('{m.start.isoformat()}') TO ('{m.end.isoformat()}')"
          for m in months),
        f'CREATE TABLE "{schema}".audit_results_default PARTITION OF {table} DEFAULT',
    ]


def make_verdict(rng: random.Random, *, offset: int, model_version: str,
                 now: datetime) -> AuditVerdict:
    """One realistic verdict: uuid event id, 5-digit bin, S3 URI, 11-class distribution."""
    expected = rng.randint(0, 10)
    raw = [rng.random() ** 4 for _ in range(CLASSES)]
    total = sum(raw)
    probs = {str(k): round(v / total, 6) for k, v in enumerate(raw)}
    predicted = max(range(CLASSES), key=lambda k: raw[k])
    p_expected = probs[str(expected)]
    confidence = probs[str(predicted)]
    if confidence < 0.5:
        status = VerdictStatus.UNCERTAIN
    elif predicted == expected:
        status = VerdictStatus.MATCH
    else:
        status = VerdictStatus.MISMATCH
    bin_id = f"{rng.randint(0, 99999):05d}"
    return AuditVerdict(
        event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        bin_id=bin_id,
        image_uri=f"s3://binaudit-images/bin-images/{now:%Y/%m/%d}/{bin_id}-{offset}.jpg",
        captured_at=now - timedelta(seconds=rng.uniform(0, 60)),
        station_id=f"station-{rng.randint(1, 40):02d}",
        robot_id=f"robot-{rng.randint(1, 400):03d}",
        expected_quantity=expected, predicted_quantity=predicted, confidence=confidence,
        class_probabilities=probs, p_expected=p_expected,
        discrepancy_score=round(1.0 - p_expected, 6), status=status,
        model_version=model_version, topic="bin-events", partition=offset % 12, offset=offset,
    )


def measure(settings: Settings, *, repeats: int, min_seconds: float,
            sizes: tuple[int, ...] = BATCH_SIZES) -> dict[str, Any]:
    schema = f"bench_capacity_{uuid.uuid4().hex[:8]}"
    rng = random.Random(24)
    model_version = f"bench-capacity-{uuid.uuid4().hex[:6]}"
    rates = {n: Rate() for n in sizes}
    offset = 0
    with ResultSink(settings.db) as sink:
        base = sink.engine
        with base.begin() as conn:
            for stmt in scratch_ddl(schema, datetime.now(UTC)):
                conn.execute(text(stmt))
        try:
            sink._engine = base.execution_options(schema_translate_map={None: schema})
            for _ in range(repeats):
                for n in sizes:  # interleaved: 16, 64, 256, 16, 64, 256, ...
                    rows, writing = 0, 0.0
                    window = time.perf_counter()
                    while time.perf_counter() - window < min_seconds:
                        now = datetime.now(UTC)
                        batch = [make_verdict(rng, offset=offset + i,
                                              model_version=model_version, now=now)
                                 for i in range(n)]
                        offset += n
                        t0 = time.perf_counter()  # only the write is timed
                        sink.write(WriteBatch(verdicts=batch))
                        writing += time.perf_counter() - t0
                        rows += n
                    rates[n].samples.append(rows / writing)
            with base.connect() as conn:
                stored = int(conn.execute(text(
                    f'SELECT count(*) FROM "{schema}".audit_results')).scalar_one())
                # A partitioned table holds nothing itself: sum its partitions (with their
                # indexes and TOAST for the total).
                tree = f"pg_partition_tree('\"{schema}\".audit_results')"
                total, heap = (int(x) for x in conn.execute(text(
                    f"SELECT sum(pg_total_relation_size(relid)), sum(pg_relation_size(relid)) "
                    f"FROM {tree} WHERE isleaf")).one())
        finally:
            sink._engine = base
            with base.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    return {
        "schema": schema, "rows_written": offset, "rows_stored": stored,
        "total_bytes": total, "heap_bytes": heap,
        "bytes_per_row": round(total / stored, 1) if stored else None,
        "heap_bytes_per_row": round(heap / stored, 1) if stored else None,
        "rates": {str(n): r.as_dict() for n, r in rates.items()},
    }


def render_md(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Postgres batch insert into `audit_results` (scratch copy)",
        "",
        f"`python -m bench.pg_insert` on {m['host']} ({m['cpu_model']}, {m['cores']} cores), "
        f"{m['date_utc']}; load average at start {result['load_start']}, at end "
        f"{result['load_end']}"
        + (" — **BUSY: started above the load limit, no headline**" if result["busy"] else "")
        + ".",
        "",
        "The worker's own write (`ResultSink.write`: INSERT .. ON CONFLICT DO NOTHING .. "
        "RETURNING, one transaction per batch; verdict rows only, no discrepancy rows) into "
        "`CREATE TABLE .. (LIKE audit_results INCLUDING ALL) PARTITION BY RANGE (captured_at)` "
        "with the month's partition, in a throwaway schema; the sink looks each batch's "
        "event ids up before inserting (the partitioned key includes the capture time); "
        f"{result['repeats']} interleaved windows of ≥ {result['min_seconds']:g} s per batch "
        "size; only the write is timed (building the rows is not). Postgres shares the machine "
        "with this process.",
        "",
        "| rows per transaction | rows/s median | min | max | windows |",
        "|---|---|---|---|---|",
    ]
    for n, r in result["rates"].items():
        lines.append(f"| {n} | {r['median']:,.0f} | {r['min']:,.0f} | {r['max']:,.0f} | "
                     f"{r['repeats']} |")
    lines += [
        "",
        f"Size: {result['rows_stored']:,} rows, {result['total_bytes']:,} bytes with indexes "
        f"and TOAST (`pg_total_relation_size`) = **{result['bytes_per_row']} bytes/row** "
        f"(heap alone {result['heap_bytes_per_row']} bytes/row).",
        "",
    ]
    if not result["busy"]:
        best = result["rates"][str(result["headline_batch"])]
        lines += [f"Headline: **{best['median']:,.0f} rows/s** at {result['headline_batch']} "
                  "rows per transaction (median).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/pg-insert"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=5.0)
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--wait-s", type=float, default=300.0,
                   help="wait up to this long for the 1-minute load to fall under --quiet-load")
    p.add_argument("--quiet-load", type=float, default=1.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    deadline = time.monotonic() + args.wait_s
    while load_average()[0] >= args.quiet_load and time.monotonic() < deadline:
        log.info("load %s >= %s: waiting", load_average(), args.quiet_load)
        time.sleep(10)
    start = load_average()
    machine = machine_info("cpu")
    started = time.perf_counter()
    measured = measure(Settings(), repeats=args.repeats, min_seconds=args.min_seconds)
    end = load_average()
    headline = 16  # the worker's default max batch
    result = {
        "machine": machine, "repeats": args.repeats, "min_seconds": args.min_seconds,
        "max_load": args.max_load, "load_start": start, "load_end": end,
        "busy": start[0] > args.max_load, "total_s": round(time.perf_counter() - started, 1),
        "headline_batch": headline,
        "headline_rows_per_s": None if start[0] > args.max_load
        else measured["rates"][str(headline)]["median"],
        **measured,
    }
    write_result(args.out, result, render_md(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

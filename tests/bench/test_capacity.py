"""The capacity plan's arithmetic, busy flags, and that docs/capacity.md does not drift from
what ``bench.capacity`` generates out of the committed bench/results."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.capacity import (
    build_plan,
    growth_bytes,
    load_results,
    main,
    partitions_needed,
    render,
    workers_needed,
    write_headroom,
)

REPO = Path(__file__).resolve().parents[2]


def _results(*, busy_backends: bool = True) -> dict[str, object]:
    return {
        "pg-insert.json": {
            "busy": False, "headline_batch": 16, "bytes_per_row": 800.0,
            "heap_bytes_per_row": 500.0,
            "rates": {"16": {"median": 4000.0, "min": 3900.0, "max": 4100.0},
                      "64": {"median": 6000.0, "min": 5900.0, "max": 6100.0},
                      "256": {"median": 8000.0, "min": 7900.0, "max": 8100.0}},
        },
        "vm-cpu.json": {
            "machine": {"load_average_at_start": [0.5, 0.5, 0.5]},
            "summary": {"e2e": {"rows": [["model alone, batch 16", 11.0, ""],
                                         ["worker end to end, max_batch_size 16", 10.0, ""]],
                                "unreliable": ""},
                        "ceiling": {"components": {"null-model worker (end to end)": 100.0}}},
        },
        "vm-cpu-backends.json": {
            "machine": {"load_average_at_start": [9.0, 9.0, 9.0] if busy_backends
                        else [0.2, 0.2, 0.2]},
            "summary": {"e2e": {"rows": [["worker end to end: onnxruntime", 25.0, ""]],
                                "unreliable": "started at load 9" if busy_backends else ""}},
        },
    }


def test_arithmetic_exact() -> None:
    assert workers_needed(10, 10.0) == 1
    assert workers_needed(100, 10.0) == 10
    assert workers_needed(1000, 9.86) == 102
    assert workers_needed(1, 50.0) == 1
    assert partitions_needed(102) == 204
    assert partitions_needed(3, headroom=3) == 9
    assert write_headroom(4000.0, 100) == 40.0
    assert growth_bytes(800.0, 10, 86_400) == 691_200_000
    assert growth_bytes(800.0, 1000, 86_400 * 30) == 2_073_600_000_000
    with pytest.raises(ValueError):
        workers_needed(10, 0.0)


def test_plan_from_hand_made_results() -> None:
    plan = build_plan(_results())  # type: ignore[arg-type]
    assert plan["sizing"].events_per_s == 10.0  # the quiet measured run, not the busy one
    rows = {r["rate"]: r for r in plan["rows"]}
    assert [rows[r]["sizing_workers"] for r in (10, 100, 1000)] == [1, 10, 100]
    assert [rows[r]["partitions"] for r in (10, 100, 1000)] == [2, 20, 200]
    assert rows[1000]["write_headroom"] == 4.0
    assert rows[100]["growth_day"] == 6_912_000_000
    assert rows[1000]["growth_month"] == 2_073_600_000_000
    gpu = plan["gpu"]
    assert gpu.kind == "projection" and gpu.events_per_s == 100.0
    assert "not measured" in gpu.source


def test_busy_source_is_flagged() -> None:
    text = render(build_plan(_results()))  # type: ignore[arg-type]
    busy_line = next(line for line in text.splitlines() if "vm-cpu-backends.json" in line
                     and line.startswith("|"))
    assert "BUSY" in busy_line
    quiet_line = next(line for line in text.splitlines() if "vm-cpu.json: summary.e2e" in line
                      and line.startswith("|"))
    assert "BUSY" not in quiet_line
    quiet = render(build_plan(_results(busy_backends=False)))  # type: ignore[arg-type]
    assert "BUSY" not in quiet


def test_busy_insert_run_is_flagged() -> None:
    results = _results()
    results["pg-insert.json"]["busy"] = True  # type: ignore[index]
    assert "pg-insert.json is a BUSY run" in render(build_plan(results))  # type: ignore[arg-type]


def test_doc_matches_generator(tmp_path: Path) -> None:
    out = tmp_path / "capacity.md"
    assert main(["--results", str(REPO / "bench/results"), "--out", str(out)]) == 0
    committed = (REPO / "docs/capacity.md").read_text()
    assert out.read_text() == committed, \
        "docs/capacity.md is stale: run `python -m bench.capacity`"
    assert load_results(REPO / "bench/results")  # the committed results are there


def test_insert_rows_are_realistic() -> None:
    import random
    from datetime import UTC, datetime

    from bench.pg_insert import make_verdict, scratch_ddl

    rng = random.Random(1)
    now = datetime(2026, 12, 4, tzinfo=UTC)
    rows = [make_verdict(rng, offset=i, model_version="m", now=now) for i in range(200)]
    for v in rows:
        assert v.class_probabilities is not None and len(v.class_probabilities) == 11
        assert abs(sum(v.class_probabilities.values()) - 1.0) < 1e-4
        assert v.p_expected == v.class_probabilities[str(v.expected_quantity)]
    assert len({v.event_id for v in rows}) == 200
    assert {v.status.value for v in rows} >= {"match", "mismatch", "uncertain"}
    ddl = scratch_ddl("s", datetime(2026, 12, 1, 0, 1, tzinfo=UTC))
    assert "LIKE public.audit_results INCLUDING ALL" in ddl[1]
    assert "PARTITION BY RANGE (captured_at)" in ddl[1]
    assert all("public.audit_results" not in stmt or "LIKE" in stmt for stmt in ddl)
    # a minute past midnight on the 1st: rows up to a minute old fall in the month before
    assert [s for s in ddl if "audit_results_y2026m11" in s or "audit_results_y2026m12" in s]
    assert sum("PARTITION OF" in s for s in ddl) == 3

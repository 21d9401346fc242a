"""The end-to-end summary's pure parts (issue 24): ratios per round and their spread, the
"worker above model alone" flag, the quiet rule and its refused headline, the CPU table, and
``bench.cpusplit.split`` on hand-made /proc snapshots."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bench.cpusplit import NATIVE, TICK_S, Snapshot, service_of, split, thread_role
from bench.report import markdown, summarize
from bench.summary_e2e import (
    HEADLINE,
    _e2e_targets,
    analyse,
    cpu_table,
    ratio_summary,
    round_ratios,
    spread,
    summarize_e2e,
)
from bench.summary_util import contention

Section = Callable[..., dict[str, Any]]


# ---- ratios ----------------------------------------------------------------------------------

def test_each_round_is_divided_by_the_windows_around_it(rounds_section: Section) -> None:
    sec = rounds_section([44.0, 30.0], [50.0, 60.0, 40.0])
    rounds = round_ratios(sec["windows"], sec["rounds"])
    assert [r["ratio"]["best"] for r in rounds] == [0.8, 0.6]  # 44/55, 30/50
    assert [r["alone"]["best"] for r in rounds] == [55.0, 50.0]
    assert rounds[0]["ratio"]["worker"] == round(44 / (0.9 * 55), 3)
    assert all(r["above_one"] == [] for r in rounds)
    a = analyse(sec)
    assert {k: a["best"][k] for k in ("median", "min", "max", "n")} == {
        "median": 0.7, "min": 0.6, "max": 0.8, "n": 2}
    # best / old default from the first and the last window only: 50/20 and 40/20
    assert a["best_vs_old_default"] == {"median": 2.25, "min": 2.0, "max": 2.5, "n": 2}
    assert a["worker_events_per_s"]["median"] == 37.0


def test_spread_of_nothing_is_empty() -> None:
    assert spread([]) == {}
    assert ratio_summary([])["measurement_error"] is False


@pytest.mark.parametrize(("values", "error"), [
    ([0.8, 0.9, 1.05, 0.85], False),  # one round above 1.0: flagged, not fatal
    ([0.9, 1.02, 1.01, 0.95], True),  # two rounds above
    ([1.1], True),  # the median above
])
def test_a_ratio_above_one_is_a_measurement_error(values: list[float], error: bool) -> None:
    s = ratio_summary(values)
    assert s["rounds_above_one"] == sum(v > 1.0 for v in values)
    assert s["measurement_error"] is error


def test_a_round_above_one_is_kept_and_flagged_and_the_headline_not_met(
        rounds_section: Section) -> None:
    sec = rounds_section([60.0, 58.0, 40.0], [50.0, 50.0, 50.0, 50.0])
    rounds = analyse(sec)["per_round"]
    assert [r["above_one"] for r in rounds] == [["best", "worker"], ["best", "worker"], []]
    e = summarize_e2e(sec, cores=2)
    assert e is not None and not e["refused"]
    head = next(t for t in _e2e_targets(e) if t["name"] == HEADLINE)
    assert head["met"] is False
    assert head["value_text"] == ("1.16 (0.80–1.20): measurement error (worker above model "
                                  "alone)")
    assert any(n.startswith("**measurement error**") for n in e["notes"])
    rows = e["tables"][0]["rows"]
    assert len(rows) == 3 and "best > 1.0: measurement error" in rows[0][-1]


def test_a_quiet_run_gives_the_headline_with_its_spread(rounds_section: Section) -> None:
    e = summarize_e2e(rounds_section([44.0, 45.0, 46.0, 40.0], [50.0] * 5), cores=2)
    assert e is not None and e["refused"] == "" and e["unreliable"] == ""
    targets = {t["name"]: t for t in _e2e_targets(e)}
    head = targets[HEADLINE]
    assert (head["value_text"], head["met"]) == ("0.89 (0.80–0.92)", True)
    assert head["spread"]["n"] == 4
    assert targets["best model alone / eager channels_last batch 16"]["value_text"] == \
        "2.50× (2.50–2.50×)"
    assert targets["worker / per-event baseline"]["value"] == round(44.5 / 8.0, 2)
    worker_row = next(r for r in e["rows"] if r[0].startswith("worker end to end"))
    assert worker_row[1] == 44.5 and "over 4 rounds" in worker_row[2]


# ---- the quiet rule --------------------------------------------------------------------------

@pytest.mark.parametrize(("sec", "reason"), [
    ({"load_at_start": [1.6, 1.0, 1.0]}, "load 1.6 at start > 1.50 (0.75 × 2 cores)"),
    ({"load_average_before": [1.6, 1.0, 1.0], "load_at_start": [0.1]}, "load 1.6 at start"),
    ({"load_at_start": [0.2], "load_settled": [1.7], "settle_s": 75},
     "load 1.7 after settling 75 s at the end > 1.50"),
    ({"load_at_start": [0.2], "foreign_cores": {"median": 0.3}},
     "other processes took 0.30 cores (median over the windows) > 0.15"),
    ({"load_at_start": [1.4], "load_settled": [1.4], "foreign_cores": {"median": 0.15}},
     None),
    ({"load_average_before": [9.0]}, None),  # cores unknown (0): no judgement on the load
    ({}, None),
])
def test_contention_rule(sec: dict[str, Any], reason: str | None) -> None:
    cores = 0 if sec.get("load_average_before") == [9.0] else 2
    why = contention(sec, cores)
    assert (why is None) == (reason is None)
    if reason:
        assert why is not None and reason in why


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"load": 2.0}, "load 2.0 at start"),
    ({"settled": 1.8}, "load 1.8 after settling"),
    ({"foreign": 0.4}, "other processes took 0.40 cores"),
])
def test_a_busy_section_refuses_its_headline(kwargs: dict[str, float], reason: str,
                                             rounds_section: Section) -> None:
    e = summarize_e2e(rounds_section([44.0, 45.0], [50.0, 50.0, 50.0], **kwargs), cores=2)
    assert e is not None and reason in e["refused"] and e["unreliable"] == e["refused"]
    targets = _e2e_targets(e)
    assert targets and all(t["met"] is False and t["refused"] for t in targets)
    assert all(t["value_text"].startswith("refused: machine busy (") and reason in
               t["value_text"] for t in targets)
    # the numbers stay: in the rows and in the tables, marked BUSY
    assert e["ratios"]["best"]["median"] == pytest.approx(0.89)
    assert all("— BUSY (" in t["title"] for t in e["tables"])
    assert e["notes"][0].startswith("**BUSY, headline refused**")


# ---- where the CPU went ----------------------------------------------------------------------

def test_cpu_table_compares_the_model_alone_and_in_the_worker(rounds_section: Section) -> None:
    sec = rounds_section([44.0], [50.0, 50.0])
    worker_ms = sec["rounds"][0]["worker"]["cpu"]["cpu_ms_per_item"]
    rows, cpu = cpu_table(sec)
    by_group = {r[0]: r[1:] for r in rows}
    assert by_group["own: infer"] == [50.0, 40.0]
    assert by_group["own: decode"] == [6.0, 0.0]
    assert by_group["model (own: infer* + model threads)"] == [60.0, 48.0]
    assert by_group["total"][0] == sum(worker_ms.values())
    assert by_group["everything but the model"][0] == sum(worker_ms.values()) - 60.0
    assert cpu["model_inflation"] == 1.25
    assert [r[0] for r in rows][:4] == ["own: decode", "own: infer", "own: main thread",
                                        "own: model threads (native pools)"]
    assert [r[0] for r in rows][-4] == "other"


def test_split_counts_threads_by_role_and_processes_by_service() -> None:
    start = Snapshot(at=0.0, procs={"10": ("kafka broker", 100), "11": ("other", 50)},
                     threads={1: 200, 2: 10, 3: 0})
    # 12 was born inside the window; 11 ended before it (its last ticks are in ``end``).
    end = Snapshot(at=2.0, procs={"10": ("kafka broker", 130), "11": ("other", 60),
                                  "12": ("postgres", 7)},
                   threads={1: 300, 2: 10, 3: 40, 4: 5})
    got = split(start, end, {1: "infer", 2: "decode", 4: "decode"})
    assert got == {"own: infer": round(100 * TICK_S, 3), "own: decode": round(5 * TICK_S, 3),
                   f"own: {NATIVE}": round(40 * TICK_S, 3),
                   "kafka broker": round(30 * TICK_S, 3), "other": round(10 * TICK_S, 3),
                   "postgres": round(7 * TICK_S, 3)}


def test_thread_roles_and_services() -> None:
    assert [thread_role(n) for n in ("decode_3", "infer-1", "s3-fetch", "MainThread")] == [
        "decode", "infer", "s3-fetch", "MainThread"]
    assert service_of("/usr/bin/python moto_server -p 5000") == "s3 server (moto)"
    assert service_of("java ... kafka.Kafka server.properties") == "kafka broker"
    assert service_of("postgres: bench binaudit_bench idle") == "postgres"
    assert service_of("/usr/bin/dockerd") == "other"


# ---- the report ------------------------------------------------------------------------------

def _results(sec: dict[str, Any]) -> dict[str, Any]:
    return {"machine": {"host": "box", "device": "cpu", "cpu_model": "Test CPU", "cores": 2,
                        "memory_gib": 8.0, "gpus": [], "torch": "2.x", "torchvision": "0.x",
                        "python": "3.11", "torch_threads": 2, "date_utc": "2026-01-01T00:00",
                        "load_average_at_start": [0.1, 0.1, 0.1]},
            "sections": {"e2e": sec}, "command": "bench/run.sh", "profile": "quick"}


def _md_rows(md: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table under ``heading``."""
    lines = md.splitlines()
    rows = []
    for line in lines[lines.index(heading) + 4:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_markdown_shows_rounds_cpu_and_the_refusal(rounds_section: Section) -> None:
    quiet = _results(rounds_section([44.0, 45.0], [50.0, 50.0, 50.0]))
    md = markdown(quiet, summarize(quiet))
    head = {r[0]: r for r in _md_rows(md, "## Headline")}
    assert head[HEADLINE][1:4] == ["0.89 (0.88–0.90)", "≥ 0.85", "yes"]
    assert "### End to end: alternating rounds" in md
    assert "### End to end: where the CPU went (ms per event / per image)" in md
    assert "| onnxruntime x2 | – | 45.0 |" in md  # the sweep's streams label
    busy = _results(rounds_section([44.0, 45.0], [50.0, 50.0, 50.0], load=3.0))
    md = markdown(busy, summarize(busy))
    row = next(line for line in md.splitlines() if line.startswith(f"| {HEADLINE}"))
    assert "refused: machine busy (load 3.0 at start > 1.50" in row and "| **no** |" in row
    assert "### End to end: alternating rounds — BUSY (load 3.0" in md

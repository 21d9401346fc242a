"""Smoke test of ``bench/``: every module imports, and the pure parts (summaries, reports,
statistics, claims) give the right answers on tiny hand-made results.

Nothing here starts a service or times anything: the benchmarks themselves are not run.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import pkgutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

import bench
from bench import data_scaling_report as dsr
from bench.console_scale import _csrf, _percentiles, _secret
from bench.data_scaling import RunSpec, training_processes
from bench.data_scaling import merge as merge_runs
from bench.env import Rate, measure_rate, mib, timed
from bench.gpu import _best_batch
from bench.orchestrate import ChildRunner
from bench.proctree import TreeSample, TreeSampler, descendants, sample_tree
from bench.report import markdown, summarize, write_all
from bench.run import merge as merge_results
from bench.run import profile
from bench.samples import synthetic_jpegs
from bench.serve_latency import requests_for
from bench.stagestats import mean_batch, stage_seconds
from bench.summary_e2e import _e2e_targets, summarize_backends, summarize_e2e
from bench.summary_util import _pct, _target, contention
from bench.worker_run import bottleneck
from inference.metrics import PipelineMetrics

BENCH_MODULES = sorted(m.name for m in pkgutil.iter_modules(bench.__path__))


def test_the_module_list_is_the_real_one() -> None:
    assert {"summary", "report", "scenario", "run", "gpu"} <= set(BENCH_MODULES)


@pytest.mark.parametrize("name", BENCH_MODULES)
def test_every_bench_module_imports(name: str) -> None:
    assert importlib.import_module(f"bench.{name}").__name__ == f"bench.{name}"


# ---- hand-made results -----------------------------------------------------------------------

Section = Callable[..., dict[str, Any]]


def _legacy_e2e(load: float = 0.3, spread: float = 0.04) -> dict[str, Any]:
    """An e2e section from before the rounds (one worker run between two model-alone
    passes): still summarised, without a headline."""
    return {
        "worker": {"events_per_s": 40.0, "rows_written": 400, "window_s": 10.0,
                   "mean_batch_size": 8.0, "bottleneck": "model (infer thread): 90%",
                   "busy": {"infer_thread": 0.9},
                   "stages": {"fetch": {"sum_s": 1.0, "count": 400, "mean_ms": 2.5},
                              "decode": {"sum_s": 2.0, "count": 400, "mean_ms": 5.0},
                              "infer": {"sum_s": 10.0, "count": 50, "mean_ms": 200.0}},
                   "window_machine_cpu_busy": 0.95, "window_process_cpu_cores": 1.8,
                   "rss_start_mib": 500.0, "rss_peak_mib": 700.0, "rss_growth_mib": 200.0},
        "per_event": {"events_per_s": 10.0, "events": 100, "window_s": 10.0, "mean_ms": 100.0},
        "model_alone": {"median": 50.0, "before": {"median": 49.0}, "after": {"median": 51.0},
                        "before_after_spread": spread, "batch_1": {"median": 20.0}},
        "batch_size": 8, "backend": "eager", "max_wait_ms": 20,
        "efficiency": 0.8, "speedup_vs_per_event": 4.0,
        "load_average_before": [load, 0.2, 0.1], "seconds": 60.0,
    }


def _results(e2e: dict[str, Any] | None = None) -> dict[str, Any]:
    def rate(median: float) -> dict[str, float]:
        return {"median": median}

    memory_run = {"events_per_s": 50.0, "rss_start_mib": 300.0, "rss_peak_mib": 400.0,
                  "rss_growth_mib": 100.0}
    return {
        "machine": {"host": "box", "device": "cpu", "cpu_model": "Test CPU", "cores": 2,
                    "memory_gib": 8.0, "gpus": [], "torch": "2.x", "torchvision": "0.x",
                    "python": "3.11", "torch_threads": 2, "date_utc": "2026-01-01T00:00:00",
                    "load_average_at_start": [0.1, 0.1, 0.1],
                    "load_average_at_end": [0.2, 0.1, 0.1]},
        "worker_batch_size": 16, "command": "bench/run.sh", "profile": "quick",
        "sections": {
            "model": {"load_average_before": [0.1, 0.1, 0.1], "seconds": 30.0, "rows": [
                {"variant": "fp32", "path": "counter", "batch_size": 1, "images_per_s": rate(10.0)},
                {"variant": "fp32", "path": "counter", "batch_size": 16,
                 "images_per_s": rate(20.0)},
                {"variant": "channels_last", "path": "counter", "batch_size": 16,
                 "images_per_s": rate(25.0)},
                {"variant": "channels_last", "path": "counter", "batch_size": 1,
                 "error": "timed out after 60s"}]},
            "decode": {"error": "exit 1: boom", "log": "/tmp/decode.log"},
            "ceiling": {
                "components": {
                    "s3_get": {"concurrency": 32, "per_s": rate(400.0)},
                    "decode": {"workers": 2, "per_s": rate(200.0)},
                    "kafka_consume": {"max_records": 64, "per_s": rate(1000.0)},
                    "postgres_write": {"1": rate(100.0), "16": rate(800.0)}},
                "events_per_s": 150.0, "events": 300,
                "worker_runs": [
                    {"events_per_s": 140.0, "bottleneck": "main thread", "busy": {}},
                    {"events_per_s": 170.0, "bottleneck": "S3 fetch", "busy": {}},
                    {"events_per_s": 150.0, "bottleneck": "decode pool: 95% of the window",
                     "busy": {"decode_pool": 0.95}}]},
            **({"e2e": e2e} if e2e is not None else {}),
            "local": {"per_event": {"events_per_s": 5.0, "events": 50}, "runs": [
                {"batch_size": 16, "model_alone": rate(20.0), "efficiency": 0.9,
                 "speedup_vs_per_event": 3.6,
                 "pipeline": {"decode_workers": 2, "events_per_s": 18.0, "events": 200,
                              "mean_batch_size": 15.5,
                              "busy": {"infer_thread": 0.95, "decode_pool": 0.4}}}]},
            "backends": {"best": {"backend": "onnxruntime", "batch_size": 8, "streams": 2,
                                  "images_per_s": rate(30.0)}, "backends": [
                {"backend": "eager", "batch_size": 1, "streams": 1, "images_per_s": rate(10.0)},
                {"backend": "onnxruntime", "batch_size": 8, "streams": 1,
                 "images_per_s": rate(20.0)},
                {"backend": "onnxruntime", "batch_size": 8, "streams": 2,
                 "images_per_s": rate(30.0)},
                {"backend": "openvino", "error": "not installed"}]},
            "memory": [{"events": 100, "run": memory_run},
                       {"events": 1000, "run": {**memory_run, "events_per_s": 55.0,
                                                "rss_peak_mib": 420.0, "rss_growth_mib": 120.0,
                                                "rss_growth_10pct_to_end_mib": 10.0}}],
        },
    }


def _table(md: str, heading: str) -> list[list[str]]:
    """The body rows of the first Markdown table under ``heading``."""
    lines = md.splitlines()
    start = lines.index(heading) + 2
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


# ---- summary helpers ---------------------------------------------------------------------------

def test_target_formats_and_judges() -> None:
    t = _target("x", 1.234, 1.5, unit="×")
    assert (t["met"], t["value_text"], t["target_text"]) == (False, "1.23×", "≥ 1.50×")
    assert _target("x", 2.0, 1.5)["met"] is True
    missing = _target("x", None, 1.5)
    assert (missing["met"], missing["value_text"]) == (None, "–")
    assert (_pct(0.256), _pct(None)) == ("26%", "–")


@pytest.mark.parametrize(("sec", "cores", "busy"), [
    ({"load_average_before": [2.5, 1.0, 1.0]}, 2, True),
    ({"load_average_before": [1.6, 1.0, 1.0]}, 2, True),  # above 0.75 × 2 cores
    ({"load_average_before": [1.4, 1.0, 1.0]}, 2, False),
    ({"load_average_before": [9.0, 1.0, 1.0]}, 0, False),  # cores unknown: no judgement
    ({}, 2, False),
])
def test_contention_of_a_section_with_only_its_start_load(sec: dict[str, Any], cores: int,
                                                          busy: bool) -> None:
    why = contention(sec, cores)
    assert (why is not None) == busy
    if busy:
        load = sec["load_average_before"][0]
        assert why is not None and f"load {load} at start > 1.50 (0.75 × 2 cores)" in why


@pytest.mark.parametrize("load", [0.3, 6.0])
def test_an_e2e_section_from_before_the_rounds_has_no_headline(load: float) -> None:
    e = summarize_e2e(_legacy_e2e(load=load), cores=2)
    assert e is not None and e["format"] == "legacy"
    assert e["rows"][0] == ["worker end to end", 40.0, e["unreliable"]]
    assert "before alternating rounds" in e["unreliable"]
    assert e["notes"][0].startswith("**UNRELIABLE**")
    assert _e2e_targets(e) == []


def test_e2e_rounds_summary_in_the_whole_summary(rounds_section: Section) -> None:
    e = summarize_e2e(rounds_section([40.0, 42.0, 44.0], [50.0, 50.0, 50.0, 50.0]), cores=2)
    assert e is not None and e["format"] == "rounds" and e["refused"] == ""
    assert e["ratios"]["best"]["n"] == 3
    assert (e["ratios"]["best"]["min"], e["ratios"]["best"]["max"]) == (0.8, 0.88)
    assert [t["title"] for t in e["tables"]][:1] == ["End to end: alternating rounds"]


def test_e2e_and_backends_skip_failed_sections() -> None:
    assert summarize_e2e({"error": "timed out"}) is None
    assert summarize_backends({"error": "exit 1"}) is None
    assert summarize_backends({"backends": []}) is None


def test_backend_sweep_table() -> None:
    b = summarize_backends(_results()["sections"]["backends"])
    assert b is not None
    assert b["backend_sizes"] == [1, 8]
    assert b["backend_table"] == {"eager x1": {"1": 10.0}, "onnxruntime x1": {"8": 20.0},
                                  "onnxruntime x2": {"8": 30.0},
                                  "openvino": {"error": "not installed"}}
    assert b["notes"] == ["best model alone: onnxruntime at batch 8 x2, 30.0 images/s"]


# ---- the whole summary and its report -------------------------------------------------------

def test_summarize_derives_every_headline(rounds_section: Section) -> None:
    s = summarize(_results(rounds_section([40.0, 42.0], [50.0, 50.0, 50.0])))
    targets = {t["name"]: t for t in s["targets"]}
    assert list(targets) == [
        "worker e2e / best model alone (median of rounds)",
        "best model alone / eager channels_last batch 16", "worker / per-event baseline",
        "start-up with autotuning, warm cache (in process)",
        "pipeline ceiling / slowest component", "memory flat over 10× events",
        "in-process pipeline / model alone (batch 16)", "in-process pipeline / per-event"]
    # ceiling: 150 events/s over the slowest component (decode, 200/s) = 0.75 < 0.80
    assert s["ceiling"]["slowest"] == "decode pool (2 threads)"
    assert s["ceiling"]["ratio"] == pytest.approx(0.75)
    assert targets["pipeline ceiling / slowest component"]["met"] is False
    assert s["ceiling"]["bottleneck"] == "decode pool: 95% of the window"  # the median run
    assert s["postgres"]["notes"][0].startswith("16 rows per transaction (≈ the worker's "
                                                "batch) vs one transaction per row: 8.0×")
    assert s["memory"]["flat"] is True and targets["memory flat over 10× events"]["met"]
    assert targets["in-process pipeline / model alone (batch 16)"]["met"] is True
    assert "busiest: model thread" in targets["in-process pipeline / model alone (batch 16)"][
        "note"]
    # model: channels_last beats fp32 by 25 % at the worker's batch → recommend the switch
    assert s["model"]["table"]["channels_last / counter"] == {"16": 25.0, "1": "timeout"}
    assert any("channels_last / fp32 at the worker's batch 16: 1.25×" in n
               and "switch the CPU default to channels_last=True" in n
               for n in s["model"]["notes"])
    assert s["decode"] is None
    assert s["errors"] == ["decode: exit 1: boom (log /tmp/decode.log)"]


def test_memory_that_grows_is_not_flat() -> None:
    results = _results()
    results["sections"]["memory"][1]["run"]["rss_peak_mib"] = 500.0
    s = summarize(results)
    flat = next(t for t in s["targets"] if t["name"] == "memory flat over 10× events")
    assert (flat["met"], flat["value_text"]) == (False, "grows")


def test_markdown_renders_the_headline_and_tables(rounds_section: Section) -> None:
    busy = {**rounds_section([40.0, 42.0], [50.0, 50.0, 50.0]),
            "load_average_before": [6.0, 0.2, 0.1], "seconds": 60.0}
    results = _results(busy)
    md = markdown(results, summarize(results))
    assert md.startswith("# binaudit benchmarks: box (cpu)")
    headline = _table(md, "## Headline")
    assert [row[0] for row in headline] == [t["name"] for t in summarize(results)["targets"]]
    by_name = {row[0]: row for row in headline}
    # the busy e2e section refuses its own headline rows, not the others
    refused = "refused: machine busy (load 6.0 at start > 1.50 (0.75 × 2 cores))"
    assert by_name["worker e2e / best model alone (median of rounds)"][1:4] == [
        refused, "≥ 0.85", "**no**"]
    assert by_name["worker / per-event baseline"][1:4] == [refused, "≥ 1.50×", "**no**"]
    assert by_name["pipeline ceiling / slowest component"][1] == "0.75"
    quiet = _results(rounds_section([40.0, 42.0], [50.0, 50.0, 50.0]))
    quiet_rows = {row[0]: row for row in _table(markdown(quiet, summarize(quiet)),
                                                "## Headline")}
    assert quiet_rows["worker e2e / best model alone (median of rounds)"][1:4] == [
        "0.82 (0.80–0.84)", "≥ 0.85", "**no**"]
    assert quiet_rows["worker / per-event baseline"][1:4] == ["5.12×", "≥ 1.50×", "yes"]
    rounds = _table(md, "### End to end: alternating rounds — BUSY (load 6.0 at start > 1.50 "
                        "(0.75 × 2 cores))")
    assert [r[:5] for r in rounds] == [["1", "400", "40.0", "50.0", "0.800"],
                                       ["2", "400", "42.0", "50.0", "0.840"]]
    model = _table(md, "## Model alone (images/s, median)")
    assert ["fp32 / counter", "10.0", "20.0"] in model
    assert ["channels_last / counter", "timeout", "25.0"] in model
    backends = _table(md, "## Model alone per inference backend (images/s, BinCounter.infer, "
                          "interleaved windows, backends section)")
    assert backends == [["eager x1", "10.0", "–", ""], ["onnxruntime x1", "–", "20.0", ""],
                        ["onnxruntime x2", "–", "30.0", ""],
                        ["openvino", "–", "–", "not installed"]]
    assert "## Sections that did not complete" in md and "- decode: exit 1: boom" in md
    loads = {row[0]: row for row in _table(md, "## Load during the run")}
    assert loads["e2e"][1:] == ["[6.0, 0.2, 0.1]", "60.0"]


def test_write_all_writes_json_markdown_and_plot(tmp_path: Path,
                                                rounds_section: Section) -> None:
    paths = write_all(_results(rounds_section([40.0], [50.0, 50.0])), tmp_path / "out", "t")
    assert [p.name for p in paths] == ["t.json", "t.md", "t.png"]
    saved = json.loads(paths[0].read_text())
    assert saved["summary"]["ceiling"]["ratio"] == pytest.approx(0.75)
    assert "Raw numbers: `t.json`" in paths[1].read_text()
    assert Image.open(paths[2]).format == "PNG"


def test_merge_replaces_rerun_sections_and_logs_the_rerun(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"sections": {"model": {"rows": []}, "e2e": {"old": True}},
                                "summary": {"targets": []}}))
    new = {"sections": {"e2e": {"old": False}}, "command": "run.sh --merge",
           "machine": {"date_utc": "d", "load_average_at_end": [0.1, 0.1, 0.1]},
           "quiet": {"load_at_start": [0.1, 0.1, 0.1]}, "total_s": 9.0, "logs": "/tmp/l"}
    merged = merge_results(path, new)
    assert "summary" not in merged
    assert merged["sections"] == {"model": {"rows": []}, "e2e": {"old": False}}
    assert merged["reruns"][0]["sections"] == ["e2e"]


def test_profiles() -> None:
    assert profile("cpu", quick=True).repeats == 1
    assert profile("cpu", quick=False).repeats == 3
    assert max(profile("cuda", quick=False).batch_sizes) == 256


# ---- statistics and small helpers ------------------------------------------------------------

def test_stage_seconds_and_mean_batch_read_the_pipeline_metrics() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    metrics.observe_stage("fetch", 0.01)
    metrics.observe_stage("fetch", 0.03)
    metrics.observe_batch(4, 0.2)
    metrics.observe_batch(2, 0.1)
    stages = stage_seconds(registry)
    assert stages["fetch"] == {"sum_s": 0.04, "count": 2, "mean_ms": 20.0}
    assert stages["infer"] == {"sum_s": 0.3, "count": 2, "mean_ms": 150.0}
    assert stages["decode"] == {"sum_s": 0.0, "count": 0, "mean_ms": 0.0}
    assert mean_batch(registry) == 3.0
    assert mean_batch(CollectorRegistry()) == 0.0


def test_rate_and_measure_rate() -> None:
    r = Rate([3.0, 1.0, 2.0])
    assert r.median == 2.0
    assert r.as_dict() == {"median": 2.0, "min": 1.0, "max": 3.0, "repeats": 3}
    assert Rate().median == 0.0
    calls = []

    def step() -> int:
        calls.append(1)
        return 5

    measured = measure_rate(step, repeats=2, min_seconds=0.0, min_steps=3)
    assert len(calls) == 6 and len(measured.samples) == 2
    assert all(s > 0 for s in measured.samples)
    assert timed(lambda: 7)[0] == 7
    assert mib(3 * 2**20) == 3.0


def test_bottleneck_adds_the_main_thread_steps() -> None:
    busy = {"infer_thread": 0.4, "decode_pool": 0.5, "s3_outstanding_per_slot": 0.1,
            "main_thread_accept": 0.3, "main_thread_write_commit": 0.3}
    assert bottleneck(busy) == ("main thread (Kafka poll/parse, Postgres write, commit): 60% "
                                "of the window")
    assert bottleneck({**busy, "decode_pool": 0.7}) == "decode pool: 70% of the window"


def test_console_helpers() -> None:
    p = _percentiles([float(i) for i in range(100, 0, -1)])
    assert p == {"n": 100, "p50_ms": 51.0, "p95_ms": 96.0, "p99_ms": 100.0, "max_ms": 100.0,
                 "mean_ms": 50.5}
    assert _csrf('<input type="hidden" name="csrf" value="abc123">') == "abc123"
    with pytest.raises(RuntimeError):
        _csrf("<form></form>")
    assert _secret(None) is None
    assert _secret(SecretStr("key")) == "key"


def test_best_batch_and_request_counts() -> None:
    section = {"rows": [
        {"path": "forward", "batch_size": 8, "images_per_s": {"median": 10.0}},
        {"path": "forward", "batch_size": 64, "images_per_s": {"median": 30.0}},
        {"path": "counter", "batch_size": 128, "images_per_s": {"median": 99.0}},
        {"path": "forward", "batch_size": 256, "error": "out of memory"}]}
    assert _best_batch(section, "forward") == 64
    assert _best_batch(section, "cuda-graph") is None
    assert [requests_for(c, 1.0) for c in (1, 8, 32)] == [64, 128, 256]
    assert requests_for(8, 0.5) == 64


def test_child_runner_skips_past_its_deadline(tmp_path: Path) -> None:
    runner = ChildRunner(log_dir=tmp_path, deadline=time.monotonic() - 1)
    result = runner.run("model", {}, timeout=60)
    assert result["error"] == "skipped: the time budget is spent"
    assert list(tmp_path.iterdir()) == []  # no child started


def test_synthetic_jpegs_are_deterministic_jpegs() -> None:
    first = synthetic_jpegs(n=2, seed=1)
    assert first == synthetic_jpegs(n=2, seed=1) != synthetic_jpegs(n=2, seed=2)
    image = Image.open(io.BytesIO(first[0]))
    assert image.format == "JPEG" and 300 <= image.width <= 520 and 280 <= image.height <= 400


# ---- trainer data-scaling report ------------------------------------------------------------

def _scaling_run(name: str, images: int, *, last: float, peak: float, wait: float,
                 returncode: int = 0) -> dict[str, Any]:
    timeline = [{"processes": p, "pss_mib": v}
                for p, v in ((1, 100.0), (3, 800.0), (3, 900.0), (3, 850.0), (5, 1050.0),
                             (3, 700.0))]
    return {"name": name, "images": images, "returncode": returncode, "ranks": 1, "workers": 2,
            "image_size": 224, "kind": "fit", "wall_s": 100.0, "epoch_seconds": 80.0,
            "train_images_per_s": 12.5, "data_wait_fraction": wait,
            "load_average_before": [1.0, 1.0, 1.0], "load_average_after": [1.5, 1.0, 1.0],
            "splits": {"train": images, "val": 30, "test": 30},
            "memory": {"peak_tree_pss_mib": peak, "peak_tree_rss_sum_mib": 2 * peak,
                       "peak_parent_rss_mib": 500.0, "max_processes": 5, "timeline": timeline,
                       "training_window": {"seconds": 60.0, "samples": 12,
                                           "peak_pss_mib": last,
                                           "peak_pss_first_third_mib": 850.0,
                                           "peak_pss_last_third_mib": last,
                                           "last_over_first": round(last / 850.0, 3)}}}


def test_data_scaling_claims() -> None:
    runs = [_scaling_run("small", 1000, last=900.0, peak=1000.0, wait=0.05),
            _scaling_run("large", 10000, last=950.0, peak=1050.0, wait=0.20),
            _scaling_run("failed", 20000, last=5000.0, peak=5000.0, wait=0.9, returncode=1)]
    (claim,) = dsr.memory_claims(runs)
    assert (claim["small"], claim["large"]) == (1000, 10000)  # the failed run is left out
    assert claim["loop_ratio"] == pytest.approx(950 / 900, abs=1e-3) and claim["flat"] is True
    assert claim["added_mib_per_1000_images"] == pytest.approx(5.6)
    assert claim["peak_after_loop"] is True  # 1050 MiB peak vs 950 in the loop
    assert claim["loop_median_small_mib"] == 850.0  # stops at the 5-process eval samples
    assert dsr.cache_mib(claim) == pytest.approx(9000 * 3 * 224**2 / 2**20)
    assert [(c["name"], c["under_target"]) for c in dsr.data_wait_claims(runs)] == [
        ("small", True), ("large", False)]
    grown = _scaling_run("large", 10000, last=1200.0, peak=1300.0, wait=0.05)
    assert dsr.memory_claims([runs[0], grown])[0]["flat"] is False
    assert [w["flat"] for w in dsr.window_claims([runs[0], grown])] == [True, False]


def test_data_scaling_report_files(tmp_path: Path) -> None:
    results = {
        "runs": [_scaling_run("small", 1000, last=900.0, peak=1000.0, wait=0.05),
                 _scaling_run("large", 10000, last=1200.0, peak=1300.0, wait=0.20)],
        "settings": {"batch_size": 32, "classes": [0, 1, 2, 3, 4, 5], "seed": 0,
                     "val_fraction": 0.03, "test_fraction": 0.03},
        "labelled_images": 12000, "source": "data/abid-extra",
        "machine": _results()["machine"], "load_average_at_end": [1.0, 1.0, 1.0]}
    json_path, md_path = dsr.write_results(results, tmp_path)
    assert json.loads(json_path.read_text())["claims"]["memory"][0]["flat"] is False
    md = md_path.read_text()
    assert "**Training loop vs dataset size (1 rank(s) × 2 workers, 224 px): GROWS.**" in md
    assert "- large: data wait 20.0% of the epoch" in md and "**over** the 10% target" in md
    assert [row[0] for row in _table(md, "## Runs")] == ["small", "large"]


def test_data_scaling_helpers(tmp_path: Path) -> None:
    def spec(ranks: int) -> RunSpec:
        return RunSpec("r", tmp_path, tmp_path, workers=2, batch_size=32, ranks=ranks)

    assert training_processes(spec(1)) == 3
    assert training_processes(spec(2)) == 7  # 2 × (rank + 2 workers) + torchrun's agent
    old = [{"name": "a", "v": 1}, {"name": "b", "v": 1}]
    assert merge_runs(old, [{"name": "b", "v": 2}]) == [{"name": "a", "v": 1},
                                                        {"name": "b", "v": 2}]


# ---- process-tree memory ---------------------------------------------------------------------

def test_tree_sampler_training_window() -> None:
    sampler = TreeSampler(root=os.getpid(), label="t", train_processes=3)
    for t, processes, pss in ((0, 1, 100.0), (1, 3, 500.0), (2, 3, 520.0), (3, 3, 510.0),
                              (4, 3, 600.0), (5, 3, 610.0), (6, 3, 640.0), (7, 5, 900.0),
                              (8, 3, 2000.0)):
        sampler._record(TreeSample(t=t, processes=processes, rss_mib=2 * pss, pss_mib=pss,
                                   root_rss_mib=50.0))
    window = sampler.training_window()
    # the window is t 1..6: the eval loaders' extra processes close it for good at t 7
    assert window == {"seconds": 5.0, "samples": 6, "peak_pss_mib": 640.0,
                      "peak_pss_first_third_mib": 520.0, "peak_pss_last_third_mib": 640.0,
                      "last_over_first": round(640 / 520, 3)}
    d = sampler.as_dict()
    assert (d["peak_tree_pss_mib"], d["peak_tree_rss_sum_mib"], d["max_processes"]) == (
        2000.0, 4000.0, 5)


def test_this_process_tree() -> None:
    assert descendants(os.getpid())[0] == os.getpid()
    sample = sample_tree(os.getpid(), 1.234)
    assert sample.t == 1.2 and sample.processes >= 1 and sample.pss_mib > 0


def test_tta_cost_table_names_each_backend_and_the_ratio() -> None:
    from bench.tta_cost import markdown

    rate = {"median": 20.0, "min": 19.0, "max": 21.0, "repeats": 5}
    result = {"artifact": "models/counter", "version": "v1", "batch_size": 16, "repeats": 5,
              "min_seconds": 2.0, "load_start": [0.4, 0.5, 0.6], "load_end": [1.1, 0.7, 0.6],
              "busy": False, "machine": {"cpu_model": "cpu", "cores": 2},
              "rows": [{"backend": "openvino", "none": rate,
                        "hflip": rate | {"median": 10.5}, "hflip_over_none": 0.525}]}
    text = markdown(result)
    assert "| openvino | 20.0 (19.0–21.0) | 10.5 (19.0–21.0) | 0.53 |" in text
    assert "BUSY" not in text and "BUSY" in markdown(result | {"busy": True})


def test_shadow_overhead_runs_tiny_and_writes_its_results(model_artifact: Path,
                                                          tmp_path: Path) -> None:
    from bench.shadow_overhead import main

    out = tmp_path / "shadow-overhead"
    main(["--artifact", str(model_artifact), "--events", "8", "--repeats", "2",
          "--batch-size", "4", "--queue-batches", "2", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert [w["config"] for w in result["windows"]] == ["alone", "shadow"] * 2
    assert all(w["errors"] == 0 and w["events"] == 8 for w in result["windows"])
    assert len(result["ratios"]) == 2 and result["ratio"]["repeats"] == 2
    assert all(r > 0 for r in result["ratios"])
    assert {"load_start", "load_end", "machine", "busy"} <= set(result)
    shadow_windows = [w for w in result["windows"] if w["config"] == "shadow"]
    # Every event was either answered by the shadow or in a batch it skipped.
    assert all(w["shadow_answered"] + w["shadow_skipped_batches"] > 0 for w in shadow_windows)
    assert all(w["shadow_answered"] == 0 for w in result["windows"] if w["config"] == "alone")
    assert "| ratio (with / alone, per pair) |" in out.with_suffix(".md").read_text()

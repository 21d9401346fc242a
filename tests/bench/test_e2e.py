"""The end-to-end scenario on the local stack, tiny: start-up tuning, the sweep over backend ×
batch × streams, the per-event baseline, two alternating rounds with their CPU split, the
settled load, and the summary built from it (not a timing run: it checks the structure)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from core.settings import Settings


@pytest.fixture(scope="module")
def section(own_db: Settings, model_artifact: Path,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from bench.e2e import run_e2e
    from bench.scenario import ScenarioConfig

    cfg = ScenarioConfig(
        artifact=str(model_artifact), db_name=str(make_url(own_db.db.url.get_secret_value())
                                                  .database),
        backends=["onnxruntime", "eager"], sweep_batch_sizes=[2], tune_streams=[1, 2],
        batch_size=2, repeats=1, min_seconds=0.2, rounds=2, round_seconds=1.0,
        window_seconds=0.3, settle_s=0.5, min_events=12, max_events=40,
        baseline_max_events=4, baseline_seconds=5.0,
        cache_dir=str(tmp_path_factory.mktemp("inference-cache")))
    return run_e2e(cfg)


def test_rounds_alternate_windows_and_worker_runs(section: dict[str, Any]) -> None:
    windows, rounds = section["windows"], section["rounds"]
    assert len(rounds) == 2 and len(windows) == 3
    # the old default only in the first and the last window
    assert [sorted(w) for w in windows] == [["best", "old_default", "worker"],
                                            ["best", "worker"],
                                            ["best", "old_default", "worker"]]
    for run in rounds:
        w = run["worker"]
        assert w["rows_written"] == run["events"] >= 12 and not w["dead_letters"]
        assert w["cpu"]["items"] == run["events"]
        # the worker's infer threads are the model's, and the services took their share
        assert w["cpu"]["cpu_ms_per_item"]["own: infer"] > 0
        assert "foreign_cores" in w["cpu"]
    for window in windows:
        for alone in window.values():
            assert alone["images_per_s"] > 0
            assert alone["cpu"]["cpu_ms_per_item"]["own: infer"] > 0


def test_ratios_and_the_quiet_rule_are_recorded(section: dict[str, Any]) -> None:
    ratios = section["ratios"]
    assert [sorted(r["ratio"]) for r in ratios["per_round"]] == [["best", "worker"]] * 2
    assert ratios["best"]["n"] == 2 and ratios["best"]["min"] <= ratios["best"]["median"] \
        <= ratios["best"]["max"]
    assert "measurement_error" in ratios["best"]
    for key in ("load_at_start", "load_at_end", "load_settled"):
        assert len(section[key]) == 3
    assert section["settle_s"] == 0.5 and section["foreign_cores"]["n"] == 3 + 2 + 3 + 2


def test_the_sweep_has_streams_and_the_worker_its_tuned_plan(section: dict[str, Any]) -> None:
    configs = {(r["backend"], r["batch_size"], r["streams"]) for r in section["backends"]}
    assert {("onnxruntime", 2, 1), ("onnxruntime", 2, 2), ("eager", 16, 1)} <= configs
    assert not any(b == "eager" and n > 1 for b, _, n in configs)  # not concurrent
    best = section["configs"]["best"]
    assert (best["backend"], best["batch_size"], best["streams"]) in configs
    worker = section["configs"]["worker"]
    tuning = section["startup"]["tuning"]
    assert (worker["backend"], worker["batch_size"], worker["streams"]) == (
        tuning["backend"], tuning["batch_size"], tuning["streams"])
    assert section["streams"] == worker["streams"]


def test_the_summary_reads_it_and_refuses_when_busy(section: dict[str, Any]) -> None:
    from bench.summary_e2e import HEADLINE, _e2e_targets, summarize_e2e

    e = summarize_e2e(section, cores=2)
    assert e is not None
    head = next(t for t in _e2e_targets(e) if t["name"] == HEADLINE)
    assert re.match(r"^\d+\.\d\d \(\d+\.\d\d–\d+\.\d\d\)", head["value_text"]) \
        or head["value_text"].startswith("refused: machine busy (")
    busy = summarize_e2e({**section, "load_at_start": [9.0, 9.0, 9.0]}, cores=2)
    assert busy is not None
    assert all(t["value_text"].startswith("refused: machine busy (load 9.0 at start")
               and t["met"] is False for t in _e2e_targets(busy))
    assert [r[0] for r in busy["tables"][1]["rows"]][-3:] == [
        "model (own: infer* + model threads)", "everything but the model", "total"]

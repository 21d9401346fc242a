"""The end-to-end scenario (issue 24): the worker against its own model alone, in rounds.

One process, in order:

1. start-up: the worker's ``open_counter`` twice (cold cache: export + autotuning over
   backend × batch × streams; warm: reads the choice);
2. the sweep: model alone per backend × batch × streams, interleaved windows
   (``bench.backends``); its fastest row is "best model alone";
3. the per-event baseline (the reference deployment's pattern) on its own topic;
4. ``rounds`` rounds, each: one model-alone window of every compared configuration ("best",
   "worker" = the worker's own counter object, so its thread settings; the old default only
   in the first window and the last) and then the worker end to end on a fresh topic holding
   ~``round_seconds`` of work at the worker configuration's rate alone; a last set of
   windows closes the last round. Round i's ratio divides the worker's events/s by the mean
   of the windows just before and just after it, so slow drift in the machine's speed hits
   both sides alike, and the spread over rounds says how far a single ratio can be trusted;
5. the load at the end (still with the run's own threads in it), then ``settle_s`` with
   nothing running and the load again: what is left then was someone else's.

Every window and worker run is wrapped in ``bench.cpusplit.CpuSplit``: CPU per event by the
worker's threads, the local services and foreign processes (the quiet rule's foreign share).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bench.backends import OLD_DEFAULT, Config, alone_window, best_row, sweep, sweep_streams
from bench.cpusplit import CpuSplit
from bench.env import load_average, peak_rss_bytes, usable_cores
from bench.scenario import ScenarioConfig, preprocessor_for, service_settings, worker_knobs
from bench.summary_e2e import analyse, foreign_cores
from core.settings import Settings
from inference.counter import BinCounter

log = logging.getLogger(__name__)

# label -> (counter, its configuration): what the model-alone windows measure.
Compared = dict[str, tuple[BinCounter, Config]]


def run_e2e(cfg: ScenarioConfig) -> dict[str, Any]:
    load_at_start = load_average()
    assert cfg.artifact, "e2e needs an artifact"
    settings, counter, startup = _worker_counter(cfg)
    assert counter.plan is not None
    worker_cfg = Config(counter.backend_name, counter.plan.max_batch_size,
                        counter.plan.streams)
    rows, counters = _sweep(cfg)
    best = best_row(rows)
    assert best is not None, f"no backend ran: {rows}"
    best_cfg, old_cfg = Config(best["backend"], best["batch_size"], best["streams"]), \
        Config(*OLD_DEFAULT)
    compare: Compared = {"best": (counters[best_cfg], best_cfg), "worker": (counter, worker_cfg),
                         "old_default": (counters[old_cfg], old_cfg)}
    per_event = _per_event(cfg, settings, counters[old_cfg])
    windows: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    for i in range(cfg.rounds):
        windows.append(_windows(compare, cfg, with_old=i == 0))
        rounds.append(_worker_round(cfg, settings, counter,
                                    windows[-1]["worker"]["images_per_s"]))
        log.info("round %d: worker %.2f events/s; best alone before %.2f img/s", i + 1,
                 rounds[-1]["worker"]["events_per_s"], windows[-1]["best"]["images_per_s"])
    windows.append(_windows(compare, cfg, with_old=True))
    load_at_end = load_average()
    log.info("load at the end %s; settling %.0f s", load_at_end, cfg.settle_s)
    time.sleep(cfg.settle_s)
    sec: dict[str, Any] = {
        "format": "rounds", "backend": counter.backend_name,
        "batch_size": worker_cfg.batch_size, "streams": worker_cfg.streams,
        "max_wait_ms": counter.plan.max_wait_ms,
        "configs": {label: {**asdict(c), "label": c.label} for label, (_, c) in compare.items()},
        "backends": rows, "best": best, "startup": startup, "per_event": per_event,
        "windows": windows, "rounds": rounds, "load_at_start": load_at_start,
        "load_at_end": load_at_end, "load_settled": load_average(), "settle_s": cfg.settle_s,
        "cores": usable_cores(), "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1),
        "settings": worker_knobs(settings)}
    sec["foreign_cores"] = foreign_cores(sec)
    sec["ratios"] = analyse(sec)
    log.info("worker e2e / best model alone: %s", sec["ratios"]["best"])
    return sec


def _worker_counter(cfg: ScenarioConfig) -> tuple[Settings, BinCounter, dict[str, Any]]:
    """The worker's settings and counter: autotuned over the swept backends, batch sizes and
    streams (or eager at ``batch_size`` when no backends are given), with its start-up."""
    assert cfg.artifact
    cache = _cache(cfg)
    tuning: dict[str, object] = {
        "backend": "auto", "max_batch_size": None, "max_wait_ms": None, "streams": None,
        "tune_backends": tuple(b for b in cfg.backends if b != "eager"),
        "tune_batch_sizes": tuple(cfg.sweep_batch_sizes),
        "tune_streams": tuple(cfg.tune_streams), "inference_cache_dir": cache} \
        if cfg.backends else {"backend": "eager", "max_batch_size": cfg.batch_size}
    settings = service_settings(cfg, worker={"exit_when_idle_s": 3.0}, model=cfg.artifact,
                                **tuning)
    if cfg.backends:
        counter, startup = _tuned_counter(settings.inference)
        return settings, counter, startup
    from inference.autotune import open_counter

    counter = open_counter(settings.inference)
    counter.warm_up()
    return settings, counter, {}


def _cache(cfg: ScenarioConfig) -> Path:
    assert cfg.artifact
    return Path(cfg.cache_dir or Path(cfg.artifact).parent / "inference-cache")


def _tuned_counter(inference: Any) -> tuple[BinCounter, dict[str, Any]]:
    """The worker's start-up twice: cold (tunes, fills the cache) then warm (reads it)."""
    from inference.autotune import open_counter

    times: dict[str, Any] = {}
    for phase in ("cold", "warm"):
        started = time.perf_counter()
        counter = open_counter(inference)
        warm_up = counter.warm_up()
        times[f"{phase}_s"] = round(time.perf_counter() - started, 1)
        times[f"{phase}_warm_up_s"] = round(warm_up, 1)
    assert counter.tuning is not None
    times["tuning"] = counter.tuning.model_dump(mode="json")
    return counter, times


def _sweep(cfg: ScenarioConfig) -> tuple[list[dict[str, Any]], dict[Config, BinCounter]]:
    """Model alone per backend × batch × streams (eager always: the old default)."""
    assert cfg.artifact
    device = torch.device(cfg.device)
    backends = cfg.backends or ["eager"]
    if "eager" not in backends:
        backends = [*backends, "eager"]
    return sweep(Path(cfg.artifact), device, backends,
                 sorted({*cfg.sweep_batch_sizes, OLD_DEFAULT[1], 1}), repeats=cfg.repeats,
                 min_seconds=cfg.min_seconds, cache_dir=_cache(cfg),
                 streams=sweep_streams(device, cfg.tune_streams))


def _per_event(cfg: ScenarioConfig, settings: Settings, eager: BinCounter) -> dict[str, Any]:
    """The reference deployment's pattern (eager, batch 1, a transaction per event)."""
    from bench.baseline import run_per_event
    from bench.services import kafka_for, published_topic

    with published_topic(settings, cfg.baseline_max_events) as topic:
        result = run_per_event(kafka_for(settings, topic=topic), eager,
                               preprocessor_for(settings, eager.card),
                               max_events=cfg.baseline_max_events,
                               max_seconds=cfg.baseline_seconds)
    log.info("per-event: %s events/s", result["events_per_s"])
    return result


def _windows(compare: Compared, cfg: ScenarioConfig, *, with_old: bool) -> dict[str, Any]:
    """One model-alone window of each compared configuration (the old default only when
    ``with_old``: it is a reference, not part of a round's ratio)."""
    return {label: alone_window(counter, c.batch_size, c.streams, cfg.window_seconds)
            for label, (counter, c) in compare.items() if with_old or label != "old_default"}


def _worker_round(cfg: ScenarioConfig, settings: Settings, counter: BinCounter,
                  alone_rate: float) -> dict[str, Any]:
    """The worker end to end on a fresh topic of ~``round_seconds`` of work, CPU split."""
    from bench.services import kafka_for, published_topic, truncate
    from bench.worker_run import run_worker

    events = cfg.events or int(min(cfg.max_events, max(cfg.min_events,
                                                       alone_rate * cfg.round_seconds)))
    # The publisher's event ids repeat from topic to topic: without this, every round after
    # the first would meet its events as duplicates (a cheaper path) instead of new rows.
    truncate(settings)
    with published_topic(settings, events) as topic, CpuSplit() as split:
        run = run_worker(kafka_for(settings, topic=topic), counter, expected=events)
    # Per event written; the run includes the worker's start and its idle wait before exit.
    run["cpu"] = split.as_dict(run["rows_written"])
    return {"events": events, "worker": run}

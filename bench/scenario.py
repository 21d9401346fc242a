"""One benchmark scenario per child process: ``python -m bench.scenario NAME --config JSON``.

A child per scenario gives each its own peak RSS (``ru_maxrss``), its own threads and a
timeout the orchestrator can enforce. Scenarios:

* ``model``     one model variant over batch sizes (``bench.model_speed``);
* ``decode``    preprocessing methods per core, and batched GPU decode on CUDA;
* ``ceiling``   null-model worker end to end + each I/O component alone, same process;
* ``null-worker`` the null-model worker alone (memory against the number of events);
* ``e2e``       start-up tuning, the backend sweep, the per-event baseline, then rounds of
                model alone and the worker end to end, alternating (``bench.e2e``);
* ``local``     in-process pipeline fed from memory vs model alone vs per-event (GPU script);
* ``backends``  model alone per inference backend × batch size (GPU script's sweep).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.env import peak_rss_bytes

log = logging.getLogger("bench.scenario")


@dataclass
class ScenarioConfig:
    device: str = "cpu"
    artifact: str | None = None
    db_name: str = "binaudit_bench"
    events: int = 0  # 0: size from round_seconds (e2e), target_seconds (local) or a default
    min_events: int = 200
    max_events: int = 5000
    target_seconds: float = 120.0
    batch_size: int = 16
    decode_workers: int | None = None
    channels_last: bool | None = None  # None: the worker's default for the device
    repeats: int = 3
    min_seconds: float = 1.5
    # model: one entry per measurement series, {"variant", "path", "batch_sizes"}
    runs: list[dict[str, Any]] = field(default_factory=list)
    architecture: str = "efficientnet_b4"
    interleave: bool = False
    baseline_seconds: float = 45.0
    baseline_max_events: int = 300
    pg_transaction_sizes: list[int] = field(default_factory=lambda: [1, 16, 64, 256])
    pg_rows: int = 1000
    component_events: int = 700
    decode_batch_sizes: list[int] = field(default_factory=lambda: [64, 256])
    local_batch_sizes: list[int] = field(default_factory=list)
    # e2e/backends: inference backends to sweep and autotune over (empty: eager only, the
    # worker at ``batch_size`` as before autotuning); their batch sizes; the tuning cache.
    backends: list[str] = field(default_factory=list)
    sweep_batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    tune_streams: list[int] = field(default_factory=lambda: [1, 2])
    cache_dir: str | None = None
    # e2e rounds: model alone windows of ``window_seconds`` per configuration, then the
    # worker on ~``round_seconds`` of work; after the last, ``settle_s`` idle, then the load.
    rounds: int = 4
    round_seconds: float = 40.0
    window_seconds: float = 5.0
    settle_s: float = 75.0


def _inference_overrides(cfg: ScenarioConfig, **inference: object) -> dict[str, object]:
    extra = {"device": cfg.device, "max_batch_size": cfg.batch_size, **inference}
    if cfg.decode_workers:
        extra["decode_workers"] = cfg.decode_workers
    return extra


def service_settings(cfg: ScenarioConfig, *, worker: dict[str, object] | None = None,
              **inference: object) -> Any:
    """Settings for scenarios that use the services (bench database, bucket)."""
    from bench.services import bench_settings
    from core.settings import Settings
    from devstack.clientenv import with_local_s3

    return bench_settings(with_local_s3(Settings()), db_name=cfg.db_name, worker=worker,
                          inference=_inference_overrides(cfg, **inference))


def _local_settings(cfg: ScenarioConfig) -> Any:
    """Settings for service-free scenarios (no database/Kafka client imported: GPU box)."""
    from core.settings import Settings

    base = Settings()
    return base.model_copy(update={"inference": base.inference.model_copy(
        update=_inference_overrides(cfg))})


def preprocessor_for(settings: Any, card: Any) -> Any:
    from bench.components import limits_of
    from core.model.preprocess import Preprocessor

    return Preprocessor(card, limits_of(settings))


# ---- scenarios ------------------------------------------------------------------------------

def scenario_model(cfg: ScenarioConfig) -> dict[str, Any]:
    from bench.model_speed import Timing, measure_interleaved, measure_variant

    assert cfg.artifact, "model needs an artifact"
    rows = []
    if cfg.interleave:  # all runs share one batch-size list and the counter path
        return {"rows": measure_interleaved(
            Path(cfg.artifact), torch.device(cfg.device), [r["variant"] for r in cfg.runs],
            list(cfg.runs[0]["batch_sizes"]), Timing(cfg.repeats, cfg.min_seconds))}
    for run in cfg.runs:
        rows += measure_variant(Path(cfg.artifact), torch.device(cfg.device), run["variant"],
                                run.get("path", "counter"), list(run["batch_sizes"]),
                                Timing(cfg.repeats, cfg.min_seconds))
    return {"rows": rows}


def scenario_decode(cfg: ScenarioConfig) -> dict[str, Any]:
    from bench.decode_speed import draft_effect, measure_cpu, measure_cuda
    from bench.models import bench_card
    from bench.samples import find_sample_dir, sample_images

    images = sample_images(allow_synthetic=True)
    card = bench_card("efficientnet_b4", 224, tag="decode")
    out: dict[str, Any] = {"samples": str(find_sample_dir() or "synthetic JPEGs"),
                           "draft_effect": draft_effect(images, card.input_size),
                           "cpu": measure_cpu(images, card, repeats=cfg.repeats,
                                              min_seconds=cfg.min_seconds)}
    if cfg.device == "cuda":
        out["cuda"] = measure_cuda(images, card, batch_sizes=cfg.decode_batch_sizes,
                                   repeats=cfg.repeats, min_seconds=cfg.min_seconds)
    return out


def _null_worker_runs(cfg: ScenarioConfig, settings: Any, topic: str, events: int,
                      repeats: int) -> list[dict[str, Any]]:
    from bench.models import NullCounter
    from bench.services import kafka_for
    from bench.worker_run import run_worker

    runs = []
    for _ in range(repeats):
        counter = NullCounter(224, "cpu")  # fresh model version: every row is a new row
        runs.append(run_worker(kafka_for(settings, topic=topic), counter, expected=events))
        log.info("null worker: %s events/s", runs[-1]["events_per_s"])
    return runs


def scenario_ceiling(cfg: ScenarioConfig) -> dict[str, Any]:
    from bench.components import measure_all
    from bench.models import NullCounter
    from bench.samples import SAMPLE_DIR, sample_images
    from bench.services import published_topic
    from robots.publisher import build_events

    settings = service_settings(cfg, worker={"exit_when_idle_s": 3.0})
    events = cfg.events or 2000
    null = NullCounter(224, "cpu")
    with published_topic(settings, events) as topic:
        runs = _null_worker_runs(cfg, settings, topic, events, cfg.repeats)
        evs = build_events(SAMPLE_DIR, bucket=settings.s3.bucket,
                           count=min(events, cfg.component_events), loop=True)
        components = measure_all(
            settings, topic=topic, events=evs, images=sample_images(),
            preprocessor=preprocessor_for(settings, null.card), prediction=null.infer(
                torch.zeros(1))[0], repeats=cfg.repeats,
            pg_transaction_sizes=cfg.pg_transaction_sizes, pg_rows=cfg.pg_rows)
    return {"events": events, "worker_runs": runs,
            "events_per_s": statistics.median(r["events_per_s"] for r in runs),
            "components": components, "settings": worker_knobs(settings)}


def scenario_null_worker(cfg: ScenarioConfig) -> dict[str, Any]:
    from bench.services import published_topic

    settings = service_settings(cfg, worker={"exit_when_idle_s": 3.0})
    with published_topic(settings, cfg.events) as topic:
        run = _null_worker_runs(cfg, settings, topic, cfg.events, 1)[0]
    return {"events": cfg.events, "run": run, "peak_rss_mib": round(peak_rss_bytes() / 2**20, 1)}


def scenario_backends(cfg: ScenarioConfig) -> dict[str, Any]:
    """Model alone per backend × batch size (no services: the GPU script's sweep)."""
    from bench.backends import best_row, sweep, sweep_streams

    assert cfg.artifact, "backends needs an artifact"
    cache = Path(cfg.cache_dir or Path(cfg.artifact).parent / "inference-cache")
    device = torch.device(cfg.device)
    rows, _ = sweep(Path(cfg.artifact), device, cfg.backends or ["eager"],
                    cfg.sweep_batch_sizes, repeats=cfg.repeats, min_seconds=cfg.min_seconds,
                    cache_dir=cache, streams=sweep_streams(device, cfg.tune_streams))
    return {"backends": rows, "best": best_row(rows)}


def scenario_startup(cfg: ScenarioConfig) -> dict[str, Any]:
    """A fresh process's start-up with autotuning: empty cache, then warm."""
    from bench.backends import process_startup

    assert cfg.artifact, "startup needs an artifact"
    cache = Path(cfg.cache_dir or Path(cfg.artifact).parent / "startup-cache")
    return process_startup(Path(cfg.artifact), cfg.device, cache, cfg.backends or ["eager"],
                           cfg.sweep_batch_sizes)


def scenario_e2e(cfg: ScenarioConfig) -> dict[str, Any]:
    """Alternating rounds of model alone and the worker end to end (``bench.e2e``)."""
    from bench.e2e import run_e2e

    return run_e2e(cfg)


def scenario_local(cfg: ScenarioConfig) -> dict[str, Any]:
    """Per batch size: model alone, then the pipeline sized to ~``target_seconds`` of it."""
    from bench.env import measure_rate
    from bench.local_pipeline import run_per_event, run_pipeline
    from bench.model_speed import counter_step
    from bench.models import load_counter
    from bench.samples import sample_images
    from inference.pipeline import PipelineConfig

    assert cfg.artifact, "local needs an artifact"
    settings = _local_settings(cfg)
    counter = load_counter(Path(cfg.artifact), cfg.device, channels_last=cfg.channels_last)
    pre = preprocessor_for(settings, counter.card)
    images = sample_images(allow_synthetic=True)
    side = counter.card.input_size
    sync = torch.cuda.synchronize if counter.is_cuda else None
    icfg, wcfg = settings.inference, settings.worker
    runs = []
    for bs in cfg.local_batch_sizes or [cfg.batch_size]:
        step = counter_step(counter, torch.randn(bs, 3, side, side))
        counter.warm_up((1, bs))
        model = measure_rate(step, repeats=cfg.repeats, min_seconds=cfg.min_seconds, sync=sync)
        events = cfg.events or int(min(cfg.max_events, max(cfg.min_events,
                                                            model.median * cfg.target_seconds)))
        config = PipelineConfig(max_batch_size=bs, max_wait_s=(icfg.max_wait_ms or 50) / 1000,
                                decode_workers=icfg.decode_workers)
        pipeline = run_pipeline(counter, pre, images, events=events, config=config,
                                max_in_flight=max(wcfg.max_in_flight, 4 * bs))
        log.info("local pipeline bs=%d: %s/s (model alone %.1f/s)", bs,
                 pipeline["events_per_s"], model.median)
        runs.append({"batch_size": bs, "model_alone": model.as_dict(), "pipeline": pipeline,
                     "efficiency": round(pipeline["events_per_s"] / model.median, 3)})
    per_event = run_per_event(counter, pre, images, events=cfg.baseline_max_events)
    for run in runs:
        run["speedup_vs_per_event"] = round(run["pipeline"]["events_per_s"]
                                            / per_event["events_per_s"], 2)
    from bench.samples import find_sample_dir

    return {"samples": str(find_sample_dir() or "synthetic JPEGs"),
            "channels_last": getattr(counter.backend, "channels_last", None),
            "decode_workers": icfg.decode_workers,
            "runs": runs, "per_event": per_event}


def worker_knobs(settings: Any) -> dict[str, Any]:
    i, w = settings.inference, settings.worker
    return {"max_batch_size": i.max_batch_size, "max_wait_ms": i.max_wait_ms,
            "backend": i.backend,
            "decode_workers": i.decode_workers, "max_in_flight": w.max_in_flight,
            "poll_max_records": w.poll_max_records, "s3_max_concurrency":
            settings.s3.max_concurrency, "device": i.device}


SCENARIOS = {"backends": scenario_backends, "startup": scenario_startup,
             "model": scenario_model, "decode": scenario_decode,
             "ceiling": scenario_ceiling, "null-worker": scenario_null_worker,
             "e2e": scenario_e2e, "local": scenario_local}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(SCENARIOS))
    p.add_argument("--config", default="{}", help="ScenarioConfig fields as JSON")
    p.add_argument("--json-out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "botocore", "aiobotocore", "alembic", "worker.app"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = ScenarioConfig(**json.loads(args.config))
    result = SCENARIOS[args.name](cfg)
    result["config"] = asdict(cfg)
    args.json_out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()

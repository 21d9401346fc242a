"""What a shadow model costs production: events/s of the worker's inference pipeline
(``InferencePipeline``: decode pool → micro-batcher → inference thread, fed real sample JPEG
bytes from memory) alone and with a shadow model running on its batches, in alternating
windows (alone, shadow, alone, shadow, ...) in one process, so both see the same machine.

    python -m bench.shadow_overhead --artifact models/counter --out bench/results/shadow-overhead

The shadow is a copy of the artifact under another card version (same weights, same cost: the
worst case of a shadow as large as production). A window times production only: from the first
submission to the last production outcome; the shadow's backlog is then run out, untimed, so
that it never spills into the next window. The ratio (with shadow / alone) is taken per pair of
adjacent windows and reported as the median with its min–max. Writes OUT.json and OUT.md with
the machine and the load average at start and end; a run that starts above ``--max-load`` is
marked busy and its ratio is not to be used.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from prometheus_client import CollectorRegistry

from bench.backends import backend_counter
from bench.env import load_average, machine_info, write_result
from bench.samples import sample_images
from core.model.card import CARD_FILE, read_card
from core.model.preprocess import ImageLimits, Preprocessor
from core.settings import InferenceSettings
from inference.counter import BinCounter
from inference.metrics import PipelineMetrics
from inference.pipeline import InferencePipeline, Outcome, PipelineConfig, WorkItem
from inference.shadow import ShadowBatch

log = logging.getLogger(__name__)


def shadow_copy(artifact: Path, into: Path) -> Path:
    """A copy of ``artifact`` under another version (the weights are the same file's bytes)."""
    into.mkdir(parents=True, exist_ok=True)
    for f in artifact.iterdir():
        if f.is_file():
            (into / f.name).write_bytes(f.read_bytes())
    card = read_card(artifact)
    card = card.model_copy(update={"version": f"{card.version}-shadow"})
    (into / CARD_FILE).write_text(card.model_dump_json(indent=1))
    return into


def run_window(counter: BinCounter, shadow: BinCounter | None, images: list[bytes], *,
               events: int, config: PipelineConfig, max_in_flight: int,
               queue_batches: int) -> dict[str, Any]:
    """Push ``events`` items through the pipeline; production events/s (and the shadow's
    coverage: how many of the events it answered, how many batches it skipped)."""
    slots = threading.BoundedSemaphore(max_in_flight)
    errors: list[str] = []
    shadow_answered = [0]
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)

    def on_outcome(outcome: Outcome) -> None:
        if outcome.error is not None:
            errors.append(f"{outcome.error.kind}: {outcome.error}")
        slots.release()

    def on_shadow(batch: ShadowBatch) -> None:
        shadow_answered[0] += len(batch.predictions or ())

    pre = Preprocessor(counter.card, ImageLimits.from_settings(InferenceSettings()))
    with InferencePipeline(counter, pre, config, on_outcome, metrics=metrics, shadow=shadow,
                           on_shadow=on_shadow if shadow else None,
                           shadow_queue_batches=queue_batches) as pipe:
        started = time.perf_counter()
        for i in range(events):
            slots.acquire()
            pipe.submit(WorkItem(None, None, image=images[i % len(images)]))
        pipe.drain()
        window = time.perf_counter() - started
        pipe.drain_shadow(timeout=None)  # untimed: the next window starts with an idle shadow
    return {"events": events, "errors": len(errors), "window_s": round(window, 3),
            "events_per_s": events / window, "shadow_answered": shadow_answered[0],
            "shadow_skipped_batches": int(
                registry.get_sample_value("binaudit_shadow_skipped_total") or 0)}


def measure(artifact: Path, *, backend: str, batch_size: int, repeats: int, events: int,
            decode_workers: int, queue_batches: int, work: Path) -> dict[str, Any]:
    device = torch.device("cpu")
    images = sample_images(allow_synthetic=True)
    counter = backend_counter(artifact, device, backend, batch_size, work / "cache")
    shadow = backend_counter(shadow_copy(artifact, work / "shadow"), device, backend,
                             batch_size, work / "cache")
    config = PipelineConfig(max_batch_size=batch_size, max_wait_s=0.05,
                            decode_workers=decode_workers)

    def window(sh: BinCounter | None, n: int) -> dict[str, Any]:
        return run_window(counter, sh, images, events=n, config=config,
                          max_in_flight=batch_size * 4, queue_batches=queue_batches)

    window(shadow, batch_size * 2)  # warm-up
    windows: list[dict[str, Any]] = []
    for i in range(repeats):
        for label, sh in (("alone", None), ("shadow", shadow)):
            row = window(sh, events)
            windows.append({"pair": i, "config": label, **row})
            log.info("pair %d %s: %.1f events/s", i, label, row["events_per_s"])
    alone = [w["events_per_s"] for w in windows if w["config"] == "alone"]
    with_shadow = [w for w in windows if w["config"] == "shadow"]
    ratios = [s["events_per_s"] / a for a, s in zip(alone, with_shadow, strict=True)]
    return {"windows": windows, "ratios": ratios, "ratio": summary(ratios),
            "alone_events_per_s": summary(alone),
            "shadow_events_per_s": summary([s["events_per_s"] for s in with_shadow]),
            "shadow_coverage": sum(s["shadow_answered"] for s in with_shadow)
            / max(1, sum(s["events"] for s in with_shadow))}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "repeats": len(values)}


def markdown(result: dict[str, Any]) -> str:
    a, s, r = result["alone_events_per_s"], result["shadow_events_per_s"], result["ratio"]
    return "\n".join([
        f"# Shadow overhead: {result['artifact']} ({result['version']})", "",
        f"Machine: {result['machine']['cpu_model']}, {result['machine']['cores']} cores; load "
        f"{result['load_start'][0]} at start, {result['load_end'][0]} at end"
        f"{' — BUSY: not used' if result['busy'] else ''}. Backend {result['backend']}, batch "
        f"{result['batch_size']}, shadow queue {result['queue_batches']} batches, "
        f"{result['repeats']} alternating pairs of {result['events']} events each.", "",
        "| production events/s | median | min–max |", "|---|---|---|",
        f"| alone | {a['median']:.1f} | {a['min']:.1f}–{a['max']:.1f} |",
        f"| with a shadow | {s['median']:.1f} | {s['min']:.1f}–{s['max']:.1f} |",
        f"| ratio (with / alone, per pair) | {r['median']:.2f} | {r['min']:.2f}–{r['max']:.2f} |",
        "", f"The shadow answered {result['shadow_coverage']:.0%} of the events of its windows "
        "(the rest were skipped: its queue was full, production did not wait).", ""])


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    p = argparse.ArgumentParser(prog="python -m bench.shadow_overhead", description=__doc__)
    p.add_argument("--artifact", type=Path, default=Path("models/counter"))
    p.add_argument("--backend", default="eager")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--events", type=int, default=320, help="events per window")
    p.add_argument("--repeats", type=int, default=5, help="alternating pairs of windows")
    p.add_argument("--decode-workers", type=int, default=2)
    p.add_argument("--queue-batches", type=int, default=InferenceSettings().shadow_queue_batches)
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--out", type=Path, default=Path("bench/results/shadow-overhead"))
    args = p.parse_args(argv)
    start = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        measured = measure(args.artifact, backend=args.backend, batch_size=args.batch_size,
                           repeats=args.repeats, events=args.events,
                           decode_workers=args.decode_workers,
                           queue_batches=args.queue_batches, work=Path(tmp))
    end = load_average()
    result = {"artifact": str(args.artifact), "version": read_card(args.artifact).version,
              "backend": args.backend, "batch_size": args.batch_size, "events": args.events,
              "repeats": args.repeats, "queue_batches": args.queue_batches, **measured,
              "load_start": start, "load_end": end, "busy": start[0] > args.max_load,
              "machine": machine_info("cpu") | {"load_average_at_end": end}}
    write_result(args.out, result, markdown(result))


if __name__ == "__main__":
    main()

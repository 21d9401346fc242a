"""``make bench``: every benchmark against the local services, one command, one results set.

    python -m bench.run [--quick] [--device cpu|cuda|auto] [--out bench/results]

Sections (each in its own child process, see ``bench.scenario``): model alone, preprocessing,
pipeline ceiling (null model + components), memory vs events, end to end with the real
counter + the per-event baseline, optionally torch.compile on CPU. Writes
``<out>/<host>-<device>.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import load_average, machine_info, usable_cores
from bench.orchestrate import ChildRunner, wait_for_quiet
from bench.report import write_all

log = logging.getLogger("bench.run")

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# What the e2e section sweeps and autotunes over (eager is always measured: the old default).
DEFAULT_BACKENDS = {"cpu": ("onnxruntime", "openvino", "eager"),
                    "cuda": ("tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda", "eager")}


@dataclass
class Profile:
    """Sizes of one run; ``quick`` exercises every path in about two minutes."""

    batch_sizes: list[int]
    variants: list[str]
    repeats: int
    min_seconds: float
    ceiling_events: int
    ceiling_repeats: int
    component_events: int
    pg_rows: int
    memory_events: int  # and 10× that
    e2e_min_events: int
    # e2e rounds (issue 24): how many, the worker's work per round, each model-alone window,
    # and the idle wait before the settled load is read.
    e2e_rounds: int
    e2e_round_s: float
    e2e_window_s: float
    e2e_settle_s: float
    baseline_s: float
    local_events: int
    sweep_batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    timeouts: dict[str, float] = field(default_factory=dict)


def profile(device: str, quick: bool) -> Profile:
    cuda = device == "cuda"
    if quick:
        return Profile(batch_sizes=[1, 4, 16] if not cuda else [1, 16, 64],
                       variants=["fp32", "channels_last"] if not cuda else ["bf16+cl"],
                       repeats=1, min_seconds=0.3, ceiling_events=300, ceiling_repeats=1,
                       component_events=200, pg_rows=100, memory_events=100,
                       e2e_min_events=48, e2e_rounds=2, e2e_round_s=8, e2e_window_s=1.0,
                       e2e_settle_s=5, baseline_s=8, local_events=200,
                       sweep_batch_sizes=[1, 4])
    return Profile(batch_sizes=[1, 2, 4, 8, 16, 32] if not cuda else [1, 8, 32, 64, 128, 256],
                   variants=["fp32", "channels_last"] if not cuda
                   else ["fp32", "channels_last", "bf16", "bf16+cl"],
                   repeats=3, min_seconds=1.0, ceiling_events=1200, ceiling_repeats=3,
                   component_events=700, pg_rows=700, memory_events=300,
                   e2e_min_events=200, e2e_rounds=4, e2e_round_s=40, e2e_window_s=5.0,
                   e2e_settle_s=75, baseline_s=45, local_events=2000)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.models import write_artifact
    from bench.services import bench_settings, prepare_database
    from core.settings import Settings
    from devstack.clientenv import with_local_s3
    from inference.counter import resolve_device

    device = resolve_device(args.device).type
    prof = profile(device, args.quick)
    quiet = wait_for_quiet(max_load_per_core=args.max_load_per_core, max_wait_s=args.wait_s) \
        if args.wait_s > 0 else {"load_at_start": load_average(), "waited_s": 0}
    info = machine_info(device)
    work = Path(tempfile.mkdtemp(prefix="binaudit-bench-"))
    log_dir = Path(args.log_dir) if args.log_dir else work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    runner = ChildRunner(log_dir)
    artifact = write_artifact(work / "artifacts", "efficientnet_b4", 224, tag="bench")
    settings = bench_settings(with_local_s3(Settings()), db_name=args.db_name)
    prepare_database(settings)
    # The worker's batch before autotuning (16): the model and ceiling sections' reference.
    batch = args.batch_size or settings.inference.max_batch_size or 16
    base = {"device": device, "artifact": str(artifact), "db_name": args.db_name,
            "repeats": prof.repeats, "min_seconds": prof.min_seconds}
    sections: dict[str, Any] = {}
    wanted = set(args.sections.split(","))
    started = time.monotonic()

    if "model" in wanted:
        runs = [{"variant": v, "path": "counter",
                 "batch_sizes": sorted(set(prof.batch_sizes) | {batch})} for v in prof.variants]
        sections["model"] = runner.run("model", {**base, "runs": runs, "interleave": True},
                                       timeout=900)
    if "compile" in wanted and device == "cpu":
        # Eager first, in the same process: the ratio does not depend on the load drifting.
        runs = [{"variant": v, "path": "counter", "batch_sizes": [batch]}
                for v in ("channels_last", "channels_last+compile")]
        sections["compile"] = runner.run("model", {**base, "runs": runs, "interleave": True},
                                         timeout=args.compile_timeout)
    if "decode" in wanted:
        sections["decode"] = runner.run("decode", base, timeout=300)
    if "ceiling" in wanted:
        sections["ceiling"] = runner.run("ceiling", {
            **base, "events": prof.ceiling_events, "repeats": prof.ceiling_repeats,
            "component_events": prof.component_events, "pg_rows": prof.pg_rows,
            "batch_size": batch}, timeout=900)
    if "memory" in wanted:
        sections["memory"] = [runner.run("null-worker", {**base, "events": n, "batch_size": batch},
                                         timeout=900)
                              for n in (prof.memory_events, 10 * prof.memory_events)]
    if "e2e" in wanted:
        sections["e2e"] = runner.run("e2e", {
            **base, "batch_size": batch, "rounds": prof.e2e_rounds,
            "round_seconds": prof.e2e_round_s, "window_seconds": prof.e2e_window_s,
            "settle_s": prof.e2e_settle_s, "tune_streams": _ints(args.tune_streams),
            "min_events": prof.e2e_min_events, "baseline_seconds": prof.baseline_s,
            "events": args.events, "backends": args.backends.split(",") if args.backends
            else list(DEFAULT_BACKENDS.get(device, ("eager",))),
            "sweep_batch_sizes": prof.sweep_batch_sizes,
            "cache_dir": str(work / "inference-cache")}, timeout=args.e2e_timeout)
    if "startup" in wanted:
        sections["startup"] = runner.run("startup", {
            **base, "backends": list(DEFAULT_BACKENDS.get(device, ("eager",))),
            "sweep_batch_sizes": prof.sweep_batch_sizes,
            "cache_dir": str(work / "startup-cache")}, timeout=args.e2e_timeout)
    if "local" in wanted:
        sections["local"] = runner.run("local", {
            **base, "batch_size": batch, "events": prof.local_events,
            "baseline_max_events": 30 if device == "cpu" else 300}, timeout=600)
    info["load_average_at_end"] = load_average()
    results = {"machine": info, "quiet": quiet, "profile": "quick" if args.quick else "full",
               "command": args.command_line, "total_s": round(time.monotonic() - started, 1),
               "worker_batch_size": batch, "sections": sections, "logs": str(log_dir)}
    if not args.keep_work:
        shutil.rmtree(work / "artifacts", ignore_errors=True)
    return results


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def merge(path: Path, new: dict[str, Any]) -> dict[str, Any]:
    """The results in ``path`` with ``new``'s sections replacing theirs (a re-run is logged)."""
    old: dict[str, Any] = json.loads(path.read_text())
    old.pop("summary", None)
    old["sections"] = {**old["sections"], **new["sections"]}
    old.setdefault("reruns", []).append({
        "sections": sorted(new["sections"]), "command": new["command"],
        "date_utc": new["machine"]["date_utc"], "quiet": new["quiet"],
        "load_average_at_end": new["machine"]["load_average_at_end"],
        "total_s": new["total_s"], "logs": new["logs"]})
    return old


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: exercise every path")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--name", help="results file stem (default <host>-<device>)")
    p.add_argument("--sections", default="model,compile,decode,ceiling,memory,e2e,startup",
                   help="comma list of model,compile,decode,ceiling,memory,e2e,startup,local")
    p.add_argument("--batch-size", type=int, help="worker batch size (default: settings)")
    p.add_argument("--events", type=int, default=0,
                   help="e2e events per round (default: the profile's seconds of work)")
    p.add_argument("--tune-streams", default="1,2",
                   help="e2e: inference stream counts to sweep and autotune over (comma list)")
    p.add_argument("--db-name", default="binaudit_bench")
    p.add_argument("--wait-s", type=float, default=600,
                   help="wait up to this long for a quiet machine (0: do not wait)")
    p.add_argument("--max-load-per-core", type=float, default=0.5)
    p.add_argument("--compile-timeout", type=float, default=240)
    p.add_argument("--backends", help="e2e: backends to sweep and autotune over, comma list "
                                      "(default: the device's, see DEFAULT_BACKENDS)")
    p.add_argument("--e2e-timeout", type=float, default=1800)
    p.add_argument("--log-dir", help="child logs (default: a temporary folder)")
    p.add_argument("--keep-work", action="store_true")
    p.add_argument("--merge", action="store_true",
                   help="re-run only --sections and merge them into the existing results file")
    args = p.parse_args(argv)
    args.command_line = "bench/run.sh " + " ".join(argv if argv is not None else
                                                   __import__("sys").argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("kafka", "alembic", "worker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    results = run(args)
    stem = args.name or f"{socket.gethostname()}-{results['machine']['device']}"
    if args.merge:
        results = merge(args.out / f"{stem}.json", results)
    paths = write_all(results, args.out, stem)
    log.info("wrote %s (%d cores, load now %s)", ", ".join(map(str, paths)), usable_cores(),
             load_average())


if __name__ == "__main__":
    main()

"""What the card's flip test-time augmentation costs: images/s of the same counter with
``tta: hflip`` and with ``tta: none``, on each CPU backend the worker can autotune to, measured in
interleaved windows (A, B, A, B, ...) in one process, so both see the same machine.

    python -m bench.tta_cost --artifact models/counter --out bench/results/tta-cost

Writes OUT.json and OUT.md with the machine and the load average at start and end; a run that
starts above ``--max-load`` is marked busy and its ratio is not to be used.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.backends import backend_counter, measure_configs
from bench.env import load_average, machine_info, write_result
from core.model.card import CARD_FILE, read_card
from inference.backends import BackendUnavailable
from inference.counter import BinCounter

log = logging.getLogger(__name__)


def with_tta(artifact: Path, tta: str, into: Path) -> Path:
    """A copy of ``artifact`` whose card says ``tta`` (the weights are the same file)."""
    into.mkdir(parents=True, exist_ok=True)
    for f in artifact.iterdir():
        if f.is_file():
            shutil.copy2(f, into / f.name)
    card = read_card(artifact).model_copy(update={"tta": tta})
    (into / CARD_FILE).write_text(card.model_dump_json(indent=1))
    return into


def measure(artifact: Path, backends: list[str], batch_size: int, repeats: int,
            min_seconds: float, work: Path) -> list[dict[str, Any]]:
    device = torch.device("cpu")
    counters: dict[str, tuple[BinCounter, int]] = {}
    for tta in ("none", "hflip"):
        copy = with_tta(artifact, tta, work / tta)
        for backend in backends:
            try:
                counter = backend_counter(copy, device, backend, batch_size, work / "cache")
            except BackendUnavailable as exc:
                log.warning("%s unavailable: %s", backend, exc)
                continue
            counters[f"{backend} tta={tta}"] = (counter, batch_size)
    rates = measure_configs(counters, repeats=repeats, min_seconds=min_seconds)
    rows = []
    for backend in backends:
        none, flip = rates.get(f"{backend} tta=none"), rates.get(f"{backend} tta=hflip")
        if none is None or flip is None:
            continue
        rows.append({"backend": backend, "batch_size": batch_size,
                     "none": none.as_dict(), "hflip": flip.as_dict(),
                     "hflip_over_none": flip.median / none.median})
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Flip TTA cost: {result['artifact']} ({result['version']})", "",
             f"Machine: {result['machine']['cpu_model']}, {result['machine']['cores']} cores; "
             f"load {result['load_start'][0]} at start, {result['load_end'][0]} at end"
             f"{' — BUSY: not used' if result['busy'] else ''}. Batch {result['batch_size']}, "
             f"{result['repeats']} interleaved windows of ≥ {result['min_seconds']} s each.", "",
             "| backend | img/s, tta none (median, min–max) | img/s, tta hflip | hflip / none |",
             "|---|---|---|---|"]
    for r in result["rows"]:
        n, f = r["none"], r["hflip"]
        lines.append(f"| {r['backend']} | {n['median']:.1f} ({n['min']:.1f}–{n['max']:.1f}) | "
                     f"{f['median']:.1f} ({f['min']:.1f}–{f['max']:.1f}) | "
                     f"{r['hflip_over_none']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    p = argparse.ArgumentParser(prog="python -m bench.tta_cost", description=__doc__)
    p.add_argument("--artifact", type=Path, default=Path("models/counter"))
    p.add_argument("--backends", default="onnxruntime,openvino,eager")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--max-load", type=float, default=1.5)
    p.add_argument("--out", type=Path, default=Path("bench/results/tta-cost"))
    args = p.parse_args(argv)
    start = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args.artifact, args.backends.split(","), args.batch_size, args.repeats,
                       args.min_seconds, Path(tmp))
    end = load_average()
    result = {"artifact": str(args.artifact), "version": read_card(args.artifact).version,
              "batch_size": args.batch_size, "repeats": args.repeats,
              "min_seconds": args.min_seconds, "rows": rows, "load_start": start,
              "load_end": end, "busy": start[0] > args.max_load,
              "machine": machine_info("cpu")}
    write_result(args.out, result, markdown(result))


if __name__ == "__main__":
    main()

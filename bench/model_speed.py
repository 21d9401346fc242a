"""Model alone: images/s of the counter against batch size, per numeric/layout variant.

Two paths are timed:

* ``counter``: ``inference.counter.BinCounter.infer`` on a host (CPU) batch, exactly what the
  worker's inference thread calls (on CUDA: pin, copy, bf16 autocast, softmax, back to host);
* ``forward``: the bare ``model(x)`` on a batch already on the device (CUDA only), which is
  where torch.compile and CUDA graphs apply.

Variants: ``fp32``, ``channels_last``, and on CUDA ``bf16``, ``bf16+cl`` (the worker's CUDA
default), ``bf16+cl+compile-<mode>`` and ``bf16+cl+cuda-graph``; on CPU ``compile`` (inductor,
fp32) is opt-in because compiling B4 on a small CPU takes minutes. Run as a module to measure
one variant in a child process (the orchestrators do that for compile, with a timeout).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.env import Rate, RssSampler, measure_rate, mib
from core.model.artifact import load_artifact
from inference.backends.torch_backends import EagerBackend
from inference.counter import BinCounter

log = logging.getLogger(__name__)

CPU_VARIANTS = ("fp32", "channels_last")
CUDA_VARIANTS = ("fp32", "channels_last", "bf16", "bf16+cl")
COMPILE_MODES = ("max-autotune-no-cudagraphs", "reduce-overhead")


@dataclass(frozen=True)
class Timing:
    repeats: int
    min_seconds: float
    min_steps: int = 2


def parse_variant(name: str) -> tuple[bool, bool, str | None]:
    """``name`` → (bf16 autocast, channels_last, extra: compile-<mode> | cuda-graph | None)."""
    parts = name.split("+")
    bf16 = "bf16" in parts
    channels_last = "cl" in parts or "channels_last" in parts
    extra = next((p for p in parts if p.startswith("compile") or p == "cuda-graph"), None)
    return bf16, channels_last, extra


class GraphedForward(nn.Module):
    """``model`` captured once in a CUDA graph for one input shape; replayed per call."""

    def __init__(self, model: nn.Module, example: torch.Tensor, *, bf16: bool) -> None:
        super().__init__()
        self.model = model
        self.static_in = example.clone()
        self.graph = torch.cuda.CUDAGraph()
        # autocast's weight cache must stay off while capturing (torch docs, CUDA graphs).
        amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode(), amp:
            for _ in range(3):  # warm-up on a side stream (cuDNN picks its algorithms)
                model(self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        with torch.inference_mode(), amp, torch.cuda.graph(self.graph):
            self.static_out = model(self.static_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out


def _example(batch_size: int, side: int, device: torch.device, channels_last: bool,
             images: torch.Tensor | None) -> torch.Tensor:
    if images is not None:
        reps = -(-batch_size // images.shape[0])
        x = images.repeat(reps, 1, 1, 1)[:batch_size].clone()
    else:
        x = torch.randn(batch_size, 3, side, side)
    x = x.to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        yield out
        torch.cuda.synchronize()
        out["device_peak_mib"] = mib(torch.cuda.max_memory_allocated())
        out["device_reserved_mib"] = mib(torch.cuda.max_memory_reserved())
        return
    with RssSampler() as rss:
        yield out
    out["rss_peak_mib"] = mib(rss.peak)


def forward_step(model: nn.Module, x: torch.Tensor, *, bf16: bool) -> Callable[[], int]:
    def step() -> int:
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16,
                                                    enabled=bf16):
            model(x)
        return int(x.shape[0])
    return step


def counter_step(counter: BinCounter, x: torch.Tensor) -> Callable[[], int]:
    def step() -> int:
        return len(counter.infer(x))
    return step


def measure_variant(artifact: Path, device: torch.device, variant: str, path: str,
                    batch_sizes: list[int], timing: Timing,
                    images: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """One variant over ``batch_sizes`` (ascending, so each RSS peak bounds its own size)."""
    bf16, channels_last, extra = parse_variant(variant)
    model, card = load_artifact(artifact, map_location="cpu")
    eager = EagerBackend(model, device, channels_last=channels_last)
    counter = BinCounter(eager, card)
    if counter.is_cuda and not bf16 and path == "counter":
        raise ValueError("the counter path always autocasts to bf16 on CUDA")
    if extra and extra.startswith("compile"):
        mode = extra.removeprefix("compile").lstrip("-") or None
        eager.model = torch.compile(eager.model, mode=mode)  # type: ignore[assignment]
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    rows = []
    for bs in sorted(batch_sizes):
        row: dict[str, Any] = {"variant": variant, "path": path, "batch_size": bs}
        try:
            if path == "counter":
                x = _example(bs, card.input_size, torch.device("cpu"), False, images)
                step = counter_step(counter, x)
            else:
                x = _example(bs, card.input_size, device, channels_last, images)
                net: nn.Module = eager.model
                if extra == "cuda-graph":
                    net = GraphedForward(eager.model, x, bf16=bf16)
                step = forward_step(net, x, bf16=bf16 and extra != "cuda-graph")
            warm = time.perf_counter()
            for _ in range(3 if device.type == "cuda" else 1):  # warm-up / compile / record
                step()
            if extra:
                row["compile_s"] = round(time.perf_counter() - warm, 1)
            with _peak_memory(device) as mem:
                rate = measure_rate(step, repeats=timing.repeats,
                                    min_seconds=timing.min_seconds, min_steps=timing.min_steps,
                                    sync=sync)
            row.update(images_per_s=rate.as_dict(), **mem)
        except torch.OutOfMemoryError as exc:
            row["error"] = f"out of memory: {exc}"[:300]
            torch.cuda.empty_cache()
        except Exception as exc:  # a variant that does not work here is a result, not a crash
            log.exception("variant %s at batch %d failed", variant, bs)
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        log.info("%s/%s bs=%d: %s", variant, path, bs,
                 row.get("images_per_s", {}).get("median", row.get("error")))
        rows.append(row)
    return rows


def _counter_for(artifact: Path, device: torch.device, variant: str) -> BinCounter:
    bf16, channels_last, extra = parse_variant(variant)
    model, card = load_artifact(artifact, map_location="cpu")
    eager = EagerBackend(model, device, channels_last=channels_last)
    if extra and extra.startswith("compile"):
        mode = extra.removeprefix("compile").lstrip("-") or None
        eager.model = torch.compile(eager.model, mode=mode)  # type: ignore[assignment]
    return BinCounter(eager, card)


def measure_interleaved(artifact: Path, device: torch.device, variants: list[str],
                        batch_sizes: list[int], timing: Timing) -> list[dict[str, Any]]:
    """``BinCounter.infer`` for several variants, alternating one timed window of each, so load
    drifting on a shared machine hits every variant alike (their ratios stay fair).

    RSS peaks here cover all variants loaded together (one process), per batch size."""
    counters = {v: _counter_for(artifact, device, v) for v in variants}
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    rows = []
    for bs in sorted(batch_sizes):
        steps, rates, compile_s = {}, {v: Rate() for v in variants}, {}
        for v, counter in counters.items():
            x = _example(bs, counter.card.input_size, torch.device("cpu"), False, None)
            steps[v] = counter_step(counter, x)
            warm = time.perf_counter()
            steps[v]()  # warm-up (and compilation for +compile variants)
            compile_s[v] = round(time.perf_counter() - warm, 1)
        with _peak_memory(device) as mem:
            for _ in range(timing.repeats):
                for v in variants:
                    rates[v].samples += measure_rate(
                        steps[v], repeats=1, min_seconds=timing.min_seconds,
                        min_steps=timing.min_steps, sync=sync).samples
        for v in variants:
            row: dict[str, Any] = {"variant": v, "path": "counter", "batch_size": bs,
                                   "images_per_s": rates[v].as_dict(), "interleaved": variants,
                                   **mem}
            if "compile" in v:
                row["compile_s"] = compile_s[v]
            rows.append(row)
            log.info("%s bs=%d: %.2f img/s", v, bs, rates[v].median)
    return rows


def best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in rows if "images_per_s" in r]
    return max(ok, key=lambda r: r["images_per_s"]["median"], default=None)


def main(argv: list[str] | None = None) -> None:
    """Child-process entry: one variant, rows as JSON on stdout (or --json-out)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variant", required=True)
    p.add_argument("--path", default="counter", choices=("counter", "forward"))
    p.add_argument("--batch-sizes", default="1,8,16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=1.0)
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    rows = measure_variant(args.artifact, torch.device(args.device), args.variant, args.path,
                           [int(b) for b in args.batch_sizes.split(",")],
                           Timing(args.repeats, args.min_seconds))
    text = json.dumps(rows)
    if args.json_out:
        args.json_out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()

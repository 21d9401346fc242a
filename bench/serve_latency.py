"""Latency and throughput of `binaudit serve` against concurrency, batched vs one-per-forward.

    .venv/bin/python bench/serve_latency.py [--arch efficientnet_lite0] [--input-size 224]

For each mode a real `python -m binaudit serve` child is started on a free port with an
untrained, seeded artifact built like the tests' factory (accuracy is irrelevant; the
architecture, input size, loader and forward pass are the real ones):

  * ``batched``: the shared micro-batcher (serve.max_batch_size, serve.max_wait_ms);
  * ``single``:  max_batch_size=1, the one-request-one-forward pattern of a naive endpoint.

Both children run side by side and the modes alternate level by level (the idle one only
waits), so drifting load from other work on the host hits both alike. At each concurrency
level a fixed number of real ABID JPEGs is POSTed to /invocations by an aiohttp client keeping
that many requests open; latency p50/p99, throughput and the mean batch
size (from the server's /metrics) are recorded. The client shares the machine's CPUs with the
server: on a small host the absolute numbers are pessimistic, the comparison is fair.

Writes bench/results/serve-<host>-<device>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_IMAGES = REPO_ROOT.parent / "shared" / "data" / "abid-sample" / "images"
RESULTS = REPO_ROOT / "bench" / "results"
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)

log = logging.getLogger("bench.serve_latency")


@dataclass(frozen=True)
class Level:
    mode: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_batch: float


def build_artifact(directory: Path, architecture: str, input_size: int) -> Path:
    """An untrained, seeded artifact in the trainer's format (as tests/conftest.py does)."""
    import torch

    from core.model.architectures import build_model
    from core.model.artifact import save_artifact
    from core.model.card import ModelCard
    from core.model.preprocess import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    model = build_model(architecture, 5, weights=None)
    card = ModelCard(version=f"bench-{architecture}-{input_size}", architecture=architecture,
                     class_counts=[1, 2, 3, 4, 5], input_size=input_size, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, created_at=datetime.now(UTC), code_version="bench")
    return save_artifact(directory / card.version, model, card)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """A `binaudit serve` child configured through BINAUDIT_* variables."""

    def __init__(self, artifact: Path, *, max_batch_size: int, max_wait_ms: int,
                 device: str, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "BINAUDIT_INFERENCE__MODEL": str(artifact),
               "BINAUDIT_INFERENCE__DEVICE": device,
               "BINAUDIT_SERVE__MAX_BATCH_SIZE": str(max_batch_size),
               "BINAUDIT_SERVE__MAX_WAIT_MS": str(max_wait_ms),
               "BINAUDIT_SERVE__MAX_QUEUE": "1024",
               "BINAUDIT_LOG_LEVEL": "WARNING"}
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "binaudit", "serve", "--host", "127.0.0.1",
             "--port", str(self.port)], env=env, cwd=REPO_ROOT,
            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                async with session.get(f"{self.url}/ping") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
        raise RuntimeError("serve never became ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def batch_totals(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(forward passes, images) so far, from the server's batch-size histogram."""
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    count = re.search(r"^binaudit_batch_size_count (\S+)$", text, re.MULTILINE)
    total = re.search(r"^binaudit_batch_size_sum (\S+)$", text, re.MULTILINE)
    return (float(count.group(1)) if count else 0.0, float(total.group(1)) if total else 0.0)


async def run_level(session: aiohttp.ClientSession, url: str, images: list[bytes], *,
                    mode: str, concurrency: int, requests: int) -> Level:
    latencies: list[float] = []
    errors = 0
    next_index = 0

    async def one_client() -> None:
        nonlocal next_index, errors
        while next_index < requests:
            i = next_index
            next_index += 1
            started = time.perf_counter()
            async with session.post(f"{url}/invocations", data=images[i % len(images)],
                                    headers={"Content-Type": "image/jpeg"}) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - started)

    # A short warm-up at this level so the first batch's allocations are not measured.
    warm = [one_off(session, url, images[i % len(images)]) for i in range(concurrency)]
    await asyncio.gather(*warm)
    before = await batch_totals(session, url)
    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    after = await batch_totals(session, url)
    batches, done = after[0] - before[0], after[1] - before[1]
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return Level(mode=mode, concurrency=concurrency, requests=requests, errors=errors,
                 seconds=round(seconds, 3), throughput_rps=round(requests / seconds, 2),
                 p50_ms=round(q[49] * 1000, 1), p90_ms=round(q[89] * 1000, 1),
                 p99_ms=round(q[98] * 1000, 1),
                 mean_batch=round(done / batches, 2) if batches else 0.0)


async def one_off(session: aiohttp.ClientSession, url: str, image: bytes) -> None:
    async with session.post(f"{url}/invocations", data=image,
                            headers={"Content-Type": "image/jpeg"}) as resp:
        await resp.read()


def requests_for(concurrency: int, scale: float) -> int:
    return int(min(max(16 * concurrency, 64), 256) * scale)


async def bench_modes(artifact: Path, images: list[bytes], *, modes: dict[str, int],
                      max_wait_ms: int, device: str, scale: float,
                      workdir: Path) -> list[Level]:
    """Both servers up at once, levels interleaved (batched c, single c, ...): load from
    other work on the host then drifts across both modes alike. The idle one only waits."""
    servers = {mode: ServeProcess(artifact, max_batch_size=size, max_wait_ms=max_wait_ms,
                                  device=device, log_path=workdir / f"serve-{mode}.log")
               for mode, size in modes.items()}
    levels = []
    connector = aiohttp.TCPConnector(limit=2 * max(CONCURRENCY) + 8)
    timeout = aiohttp.ClientTimeout(total=180)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            for server in servers.values():
                await server.wait_ready(session)
            for c in CONCURRENCY:
                for mode, server in servers.items():
                    level = await run_level(session, server.url, images, mode=mode,
                                            concurrency=c, requests=requests_for(c, scale))
                    log.info("%-7s c=%-3d %6.1f req/s  p50 %7.1f ms  p99 %7.1f ms  batch %.1f",
                             mode, c, level.throughput_rps, level.p50_ms, level.p99_ms,
                             level.mean_batch)
                    levels.append(level)
    finally:
        for server in servers.values():
            server.stop()
    return sorted(levels, key=lambda lv: (lv.mode != "batched", lv.concurrency))


def machine(device: str, args: argparse.Namespace, load_before: float) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "architecture": args.arch, "input_size": args.input_size,
        "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        # Other work on the host skews the numbers: the 1-minute load around the run.
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    return info


def write_markdown(path: Path, info: dict[str, Any], levels: list[Level]) -> None:
    lines = [
        f"# `binaudit serve` latency: {info['architecture']} @ {info['input_size']} on "
        f"{info['device']}",
        "",
        f"- host `{info['host']}`: {info['cpu']}, {info['cores']} cores; torch {info['torch']} "
        f"({info['torch_threads']} threads); Python {info['python']}; {info['date']}; "
        f"1-min load average {info['load_avg_1m'][0]} before, {info['load_avg_1m'][1]} after",
        f"- batched = max_batch_size {info['max_batch_size']}, max_wait_ms "
        f"{info['max_wait_ms']}; single = max_batch_size 1 (one request, one forward pass)",
        "- untrained seeded artifact; real ABID JPEGs; the aiohttp client runs on the same "
        "host and shares its CPUs",
        "",
        "| mode | concurrency | requests | errors | req/s | p50 ms | p90 ms | p99 ms | "
        "mean batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in levels:
        lines.append(f"| {lv.mode} | {lv.concurrency} | {lv.requests} | {lv.errors} | "
                     f"{lv.throughput_rps:.1f} | {lv.p50_ms:.1f} | {lv.p90_ms:.1f} | "
                     f"{lv.p99_ms:.1f} | {lv.mean_batch:.2f} |")
    path.write_text("\n".join(lines) + "\n")


def plot(path: Path, info: dict[str, Any], levels: list[Level]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, style in (("batched", "-o"), ("single", "--s")):
        rows = [lv for lv in levels if lv.mode == mode]
        xs = [lv.concurrency for lv in rows]
        lat.plot(xs, [lv.p50_ms for lv in rows], style, label=f"{mode} p50")
        lat.plot(xs, [lv.p99_ms for lv in rows], style, alpha=0.5, label=f"{mode} p99")
        thr.plot(xs, [lv.throughput_rps for lv in rows], style, label=mode)
    for ax in (lat, thr):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent requests")
        ax.grid(alpha=0.3)
        ax.legend()
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms)")
    thr.set_ylabel("throughput (requests/s)")
    fig.suptitle(f"binaudit serve: {info['architecture']}@{info['input_size']}, "
                 f"{info['device']} ({info['cpu']}, {info['cores']} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=int, default=10)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="Multiply the per-level request counts (0.2 for a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.path.insert(0, str(REPO_ROOT))

    images = [p.read_bytes() for p in sorted(SAMPLE_IMAGES.glob("*.jpg"))]
    if not images:
        raise SystemExit(f"no sample JPEGs under {SAMPLE_IMAGES}")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = Path(tmp)
        artifact = build_artifact(workdir, args.arch, args.input_size)
        levels = asyncio.run(bench_modes(
            artifact, images, modes={"batched": args.max_batch_size, "single": 1},
            max_wait_ms=args.max_wait_ms, device=args.device, scale=args.scale,
            workdir=workdir))
    info = machine(args.device, args, load_before)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"serve-{info['host']}-{args.device}"  # a host name may hold dots: no with_suffix
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"machine": info, "levels": [asdict(lv) for lv in levels]}, indent=2) + "\n")
    write_markdown(args.out / f"{stem}.md", info, levels)
    plot(args.out / f"{stem}.png", info, levels)
    log.info("wrote %s/%s.{json,md,png}", args.out, stem)


if __name__ == "__main__":
    main()

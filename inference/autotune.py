"""Start-up autotuning: measure the device's backends × batch sizes, keep the fastest.

``open_counter`` is the one call the front ends make (worker, serve, replay): it loads the
artifact, picks the backend and batch size (pinned by settings, read from the tuning cache,
or measured now), and returns a :class:`BinCounter` whose ``plan`` the micro-batcher follows.
Results are cached per artifact (hash of model.pt + model.json) and device (model, threads,
library versions, candidates) in ``inference.inference_cache_dir``, so a restart does not measure
again. A backend that cannot run here is logged with its reason and skipped; eager PyTorch is
always the last resort.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from core.model.artifact import load_artifact
from core.model.card import CARD_FILE, MODEL_FILE, ModelCard, read_card
from core.settings import InferenceSettings
from inference.backends import Backend, BackendUnavailable, LoadContext, load_backend
from inference.backends.registry import default_candidates
from inference.batching import BatchPlan
from inference.counter import BinCounter, resolve_device
from inference.parity import (
    ParityReport,
    backend_logits,
    compare_logits,
    reference_logits,
    tolerance_for,
)

log = logging.getLogger(__name__)

# The deadline is one forward pass of the chosen batch, within these bounds (ms): waiting
# longer than a forward buys no throughput (the next batch fills while this one runs).
MIN_WAIT_MS, MAX_WAIT_MS = 5, 1000
# Backends compiled for one static shape: measured with one build per batch size.
STATIC_SHAPE = ("compiled",)
# Interleaved passes over every configuration: each yields one throughput per configuration,
# and their spread says how far apart two configurations must be to differ at all.
ROUNDS = 3


class Measurement(BaseModel):
    model_config = ConfigDict(frozen=True)

    backend: str
    batch_size: int
    images_per_s: float  # the median of the rounds' throughputs
    seconds_per_batch: float
    # The slowest and the fastest round (None in caches written before rounds were kept).
    rate_min: float | None = None
    rate_max: float | None = None

    @property
    def low(self) -> float:
        return self.images_per_s if self.rate_min is None else self.rate_min

    @property
    def high(self) -> float:
        return self.images_per_s if self.rate_max is None else self.rate_max


class TuneResult(BaseModel):
    """What autotuning measured and chose (the cache file's content)."""

    model_config = ConfigDict(frozen=True)

    backend: str
    batch_size: int
    max_wait_ms: int
    images_per_s: float
    measurements: list[Measurement]
    skipped: dict[str, str]
    parity: dict[str, float]
    device: str
    artifact: str
    tuned_at: datetime
    tune_seconds: float

    @property
    def plan(self) -> BatchPlan:
        return BatchPlan(self.batch_size, self.max_wait_ms)


def artifact_fingerprint(artifact: Path) -> str:
    """sha256 of the weights and the card: a retrained model is tuned again."""
    digest = hashlib.sha256()
    for name in (MODEL_FILE, CARD_FILE):
        with (artifact / name).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def device_description(device: torch.device) -> str:
    """What the numbers depend on: the processor, the threads and the runtime versions."""
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = _cpu_model() or platform.processor() or platform.machine()
    return (f"{device.type}: {where}; {torch.get_num_threads()} threads; torch "
            f"{torch.__version__}; {_versions()}")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _versions() -> str:
    found = []
    for package in ("onnxruntime", "openvino", "torch_tensorrt"):
        try:
            module = __import__(package)
            found.append(f"{package} {getattr(module, '__version__', '?')}")
        except ImportError:
            continue
    return ", ".join(found) or "no exported-model runtimes"


def measure_interleaved(pairs: list[tuple[Backend, int]], input_size: int,
                       seconds: float) -> list[Measurement]:
    """Images/s of each (backend, batch size): one warm-up forward each, then ROUNDS passes
    over all of them, ``seconds / ROUNDS`` (at least one forward) per configuration and pass.
    Each pass gives every configuration one throughput (images over the window's forwards);
    the median is its rate and min..max its spread. Interleaving exposes every configuration
    to the same drift in load, so their spreads are comparable."""
    inputs = [torch.randn(bs, 3, input_size, input_size) for _, bs in pairs]
    for (backend, _), x in zip(pairs, inputs, strict=True):
        backend.logits(x)
    rates: list[list[float]] = [[] for _ in pairs]
    for _ in range(ROUNDS):
        for i, ((backend, bs), x) in enumerate(zip(pairs, inputs, strict=True)):
            started = time.perf_counter()
            until, runs = started + seconds / ROUNDS, 0
            while runs < 1 or time.perf_counter() < until:
                out = backend.logits(x)
                if out.is_cuda:
                    torch.cuda.synchronize(out.device)
                runs += 1
            rates[i].append(bs * runs / (time.perf_counter() - started))
    return [_measurement(backend.name, bs, r) for (backend, bs), r in zip(pairs, rates,
                                                                          strict=True)]


def _measurement(backend: str, batch_size: int, rates: list[float]) -> Measurement:
    median = statistics.median(rates)
    return Measurement(backend=backend, batch_size=batch_size, images_per_s=median,
                       seconds_per_batch=batch_size / median, rate_min=min(rates),
                       rate_max=max(rates))


def choose(measurements: list[Measurement]) -> Measurement:
    """The configuration with the best median, unless it does not beat the others beyond
    their spread: every configuration whose fastest round reaches the best one's slowest is
    as fast as far as the measurement can tell, and among those the one with the highest
    slowest round wins (the most dependable), then the smaller batch (less latency)."""
    best = max(measurements, key=lambda m: m.images_per_s)
    tied = [m for m in measurements if m.high >= best.low]
    return max(tied, key=lambda m: (m.low, -m.batch_size))


def wait_ms_for(m: Measurement) -> int:
    return int(min(MAX_WAIT_MS, max(MIN_WAIT_MS, round(m.seconds_per_batch * 1000))))


class Tuner:
    """Loads, checks and measures the candidate backends of one artifact on one device."""

    def __init__(self, artifact: Path, inference: InferenceSettings) -> None:
        self.artifact = Path(artifact)
        self.inference = inference
        self.device = resolve_device(inference.device)
        self.card: ModelCard = read_card(self.artifact)
        self.fingerprint = artifact_fingerprint(self.artifact)
        self.cache_dir = inference.inference_cache_dir / self.fingerprint[:16]
        self._parity: dict[str, float] = {}  # backend -> max |Δprob| vs eager at load

    @functools.cached_property
    def model(self) -> nn.Module:
        return load_artifact(self.artifact, map_location="cpu")[0]

    def context(self, max_batch_size: int) -> LoadContext:
        return LoadContext(artifact=self.artifact, card=self.card, device=self.device,
                           load_model=lambda: load_artifact(self.artifact)[0],
                           cache_dir=self.cache_dir, max_batch_size=max_batch_size,
                           threads=torch.get_num_threads())

    @property
    def pinned(self) -> bool:
        return self.inference.backend != "auto"

    def candidates(self) -> tuple[str, ...]:
        """What to try, in order; eager PyTorch always comes last as the fallback."""
        if self.pinned:
            names: tuple[str, ...] = (self.inference.backend,)
        else:
            names = self.inference.tune_backends or default_candidates(self.device)
        names = tuple(n for n in names if n not in ("auto", "eager"))
        return (*names, "eager")

    def batch_sizes(self) -> tuple[int, ...]:
        if self.inference.max_batch_size is not None:
            return (self.inference.max_batch_size,)
        return tuple(sorted(set(self.inference.tune_batch_sizes)))

    def cache_file(self) -> Path:
        key = json.dumps([device_description(self.device), self.candidates(),
                          self.batch_sizes(), self.inference.tune_seconds])
        return self.cache_dir / f"tune-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def load(self, name: str, max_batch_size: int) -> Backend:
        """Build one backend and hold it to the eager model on a seeded random batch."""
        backend = load_backend(name, self.context(max_batch_size))
        if name == "eager":
            return backend
        report = self.parity(backend)
        if not report.ok:
            raise BackendUnavailable(f"parity check failed: {report.describe()}")
        self._parity[name] = report.max_abs_diff_prob
        return backend

    def parity(self, backend: Backend) -> ParityReport:
        generator = torch.Generator().manual_seed(0)
        side = self.card.input_size
        x = torch.randn(4, 3, side, side, generator=generator)
        reference = self._reference(x)
        return compare_logits(backend.name, reference, backend_logits(backend, [x]),
                              tolerance_for(self.device))

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        return reference_logits(self.model, [x])

    def tune(self) -> tuple[TuneResult, Backend]:
        """Measure every candidate at every batch size; return the choice and its backend."""
        started = time.perf_counter()
        sizes = self.batch_sizes()
        skipped: dict[str, str] = {}
        pairs: list[tuple[Backend, int]] = []
        for name in self.candidates():
            found = self._instances(name, sizes, skipped)
            pairs += found
            if found and self.pinned:  # a pinned backend that runs: no fallback to measure
                break
        if not pairs:
            raise BackendUnavailable(f"no backend could run: {skipped}")
        measurements = measure_interleaved(pairs, self.card.input_size,
                                           self.inference.tune_seconds)
        for m in measurements:
            log.info("autotune: %s at batch %d: %.1f images/s", m.backend, m.batch_size,
                     m.images_per_s)
        chosen = choose(measurements)
        backend = next(b for b, bs in pairs
                       if b.name == chosen.backend and bs == chosen.batch_size)
        result = TuneResult(
            backend=chosen.backend, batch_size=chosen.batch_size,
            max_wait_ms=wait_ms_for(chosen), images_per_s=chosen.images_per_s,
            measurements=measurements, skipped=skipped, parity=dict(self._parity),
            device=device_description(self.device), artifact=self.fingerprint,
            tuned_at=datetime.now(UTC), tune_seconds=time.perf_counter() - started)
        return result, backend

    def _instances(self, name: str, sizes: tuple[int, ...],
                   skipped: dict[str, str]) -> list[tuple[Backend, int]]:
        """(backend, batch size) pairs to measure; a static-shape backend is built per size."""
        per_size = name in STATIC_SHAPE
        pairs: list[tuple[Backend, int]] = []
        try:
            shared = None if per_size else self.load(name, max(sizes))
            for bs in sizes:
                pairs.append((self.load(name, bs) if shared is None else shared, bs))
        except BackendUnavailable as exc:
            skipped[name] = str(exc)
            log.warning("backend %s skipped: %s", name, exc)
        return pairs


def read_cached(path: Path) -> TuneResult | None:
    """A previous tuning result, or None when absent or unreadable (then we tune again)."""
    if not path.is_file():
        return None
    try:
        return TuneResult.model_validate_json(path.read_text())
    except ValueError as exc:
        log.warning("ignoring unreadable tuning cache %s: %s", path, exc)
        return None


def write_cached(path: Path, result: TuneResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{time.monotonic_ns()}.tmp")
    tmp.write_text(result.model_dump_json(indent=2) + "\n")
    tmp.replace(path)


def log_result(result: TuneResult, *, cached: bool) -> None:
    """The choice and its numbers, one line each (the metrics carry the same)."""
    source = f"cached, tuned {result.tuned_at:%Y-%m-%d %H:%M}Z" if cached else \
        f"measured in {result.tune_seconds:.1f}s"
    log.info("inference: %s at batch %d, max wait %d ms, %.1f images/s (%s) on %s",
             result.backend, result.batch_size, result.max_wait_ms, result.images_per_s,
             source, result.device)
    for name, reason in result.skipped.items():
        log.info("inference: backend %s not used: %s", name, reason)


def tune_artifact(artifact: Path, inference: InferenceSettings, *, force: bool = False
                  ) -> tuple[TuneResult, Backend, ModelCard, bool]:
    """The cached result for this artifact and device, else a fresh one (written to the
    cache). Returns (result, loaded backend, card, from_cache)."""
    tuner = Tuner(artifact, inference)
    path = tuner.cache_file()
    cached = None if force else read_cached(path)
    if cached is not None:
        try:
            backend = load_backend(cached.backend, tuner.context(cached.batch_size))
            return cached, backend, tuner.card, True
        except BackendUnavailable as exc:  # e.g. a runtime uninstalled since: tune again
            log.warning("cached choice %s cannot load (%s); tuning again", cached.backend, exc)
    result, backend = tuner.tune()
    write_cached(path, result)
    return result, backend, tuner.card, False


def open_counter(inference: InferenceSettings, model_path: Path | None = None) -> BinCounter:
    """The front ends' one call: the artifact on its best backend, with the batch plan."""
    artifact = Path(model_path or inference.model_path)
    pinned = inference.backend != "auto" and inference.max_batch_size is not None
    if pinned and inference.backend == "eager":  # the reference path: nothing to choose
        counter = BinCounter.from_artifact(artifact, inference.device)
        counter.plan = BatchPlan(inference.max_batch_size or 16, inference.max_wait_ms or 50)
        return counter
    result, backend, card, cached = tune_artifact(artifact, inference)
    log_result(result, cached=cached)
    return BinCounter(backend, card, plan=result.plan, tuning=result)

"""Start-up autotuning: measure the device's backends × batch sizes × streams, keep the fastest.

``open_counter`` is the one call the front ends make (worker, serve, replay): it loads the
artifact, picks the backend and batch size (pinned by settings, read from the tuning cache,
or measured now), and returns a :class:`BinCounter` whose ``plan`` the micro-batcher follows.
Streams are infer threads running whole batches side by side, the CPU's threads split between
them: on a small CPU, independent single-thread passes waste less than one pass whose threads
meet at every operator (bench/results/vm-cpu-backends.md vs vm-cpu-one-stream.md: 9 % faster
alone, 7 % end to end on 2 cores).
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
from inference.measure import (
    Config,
    Measurement,
    choose,
    measure_interleaved,
    threads_per_stream,
    wait_ms_for,
)
from inference.parity import (
    ParityReport,
    backend_logits,
    compare_logits,
    reference_logits,
    tolerance_for,
)

log = logging.getLogger(__name__)

# Backends compiled for one static shape: measured with one build per batch size.
STATIC_SHAPE = ("compiled",)

class TuneResult(BaseModel):
    """What autotuning measured and chose (the cache file's content)."""

    model_config = ConfigDict(frozen=True)

    backend: str
    batch_size: int
    max_wait_ms: int
    images_per_s: float
    streams: int = 1
    measurements: list[Measurement]
    skipped: dict[str, str]
    parity: dict[str, float]
    device: str
    artifact: str
    tuned_at: datetime
    tune_seconds: float

    @property
    def plan(self) -> BatchPlan:
        return BatchPlan(self.batch_size, self.max_wait_ms, self.streams)


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

    def context(self, max_batch_size: int, streams: int = 1) -> LoadContext:
        return LoadContext(artifact=self.artifact, card=self.card, device=self.device,
                           load_model=lambda: load_artifact(self.artifact)[0],
                           cache_dir=self.cache_dir, max_batch_size=max_batch_size,
                           threads=threads_per_stream(streams), streams=streams)

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

    def streams(self) -> tuple[int, ...]:
        """Stream counts to try: the pinned one, else ``tune_streams`` up to the CPU's
        threads; one on a GPU (its batches already run one after another on the device)."""
        if self.inference.streams is not None:
            return (self.inference.streams,)
        if self.device.type != "cpu":
            return (1,)
        found = sorted({n for n in self.inference.tune_streams
                        if 1 <= n <= torch.get_num_threads()})
        return tuple(found) or (1,)

    def cache_file(self) -> Path:
        key = json.dumps([device_description(self.device), self.candidates(),
                          self.batch_sizes(), self.streams(), self.inference.tune_seconds])
        return self.cache_dir / f"tune-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def load(self, name: str, max_batch_size: int, streams: int = 1) -> Backend:
        """Build one backend and hold it to the eager model on a seeded random batch."""
        backend = load_backend(name, self.context(max_batch_size, streams))
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
        """Measure every candidate at every batch size and stream count; return the choice
        and its backend."""
        started = time.perf_counter()
        sizes = self.batch_sizes()
        skipped: dict[str, str] = {}
        configs: list[Config] = []
        for name in self.candidates():
            found = self._instances(name, sizes, skipped)
            configs += found
            if found and self.pinned:  # a pinned backend that runs: no fallback to measure
                break
        if not configs:
            raise BackendUnavailable(f"no backend could run: {skipped}")
        measurements = measure_interleaved(configs, self.card.input_size,
                                           self.inference.tune_seconds)
        for m in measurements:
            log.info("autotune: %s: %.1f images/s (rounds %.1f-%.1f)", m.label,
                     m.images_per_s, m.low, m.high)
        chosen = choose(measurements)
        backend = next(b for b, bs, n in configs if b.name == chosen.backend
                       and bs == chosen.batch_size and n == chosen.streams)
        result = TuneResult(
            backend=chosen.backend, batch_size=chosen.batch_size, streams=chosen.streams,
            max_wait_ms=wait_ms_for(chosen), images_per_s=chosen.images_per_s,
            measurements=measurements, skipped=skipped, parity=dict(self._parity),
            device=device_description(self.device), artifact=self.fingerprint,
            tuned_at=datetime.now(UTC), tune_seconds=time.perf_counter() - started)
        return result, backend

    def _instances(self, name: str, sizes: tuple[int, ...],
                   skipped: dict[str, str]) -> list[Config]:
        """(backend, batch size, streams) to measure: one backend per stream count (its
        threads differ), and per batch size for a static-shape one. A backend that cannot be
        called from several threads runs as one stream only."""
        per_size = name in STATIC_SHAPE
        configs: list[Config] = []
        try:
            for streams in self.streams():
                if configs and not configs[0][0].concurrent:
                    break
                shared = None if per_size else self.load(name, max(sizes), streams)
                for bs in sizes:
                    backend = self.load(name, bs, streams) if shared is None else shared
                    configs.append((backend, bs, streams if backend.concurrent else 1))
        except BackendUnavailable as exc:
            skipped[name] = str(exc)
            log.warning("backend %s skipped: %s", name, exc)
        return configs


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
    log.info("inference: %s at batch %d x%d streams, max wait %d ms, %.1f images/s (%s) on %s",
             result.backend, result.batch_size, result.streams, result.max_wait_ms,
             result.images_per_s, source, result.device)
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
            backend = load_backend(cached.backend,
                                   tuner.context(cached.batch_size, cached.streams))
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

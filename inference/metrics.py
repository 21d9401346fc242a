"""Prometheus metrics of the shared inference pipeline (worker, replay and serve).

Each process component owns a ``CollectorRegistry`` (not the global one), so several
pipelines can live in one process (tests, the HTTP server next to a worker).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from inference.autotune import TuneResult

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class PipelineMetrics:
    """Stage latencies and batch sizes of the shared inference pipeline, and the models it
    runs (versions, switches, the shadow)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.enabled = registry is not None
        self.registry = registry or CollectorRegistry()
        self.batch_size = Histogram("binaudit_batch_size", "Images per forward pass",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram("binaudit_stage_seconds", "Latency per pipeline stage",
                                       ["stage"], buckets=LATENCY_BUCKETS,
                                       registry=self.registry)
        self.backend = Gauge("binaudit_inference_backend",
                             "1 for the inference backend, batch size and streams in use",
                             ["backend", "max_batch_size", "streams"], registry=self.registry)
        self.autotune_rate = Gauge("binaudit_autotune_images_per_second",
                                   "Model-alone images/s measured by autotuning",
                                   ["backend", "batch_size", "streams"],
                                   registry=self.registry)
        self.autotune_seconds = Gauge("binaudit_autotune_seconds",
                                      "How long the last tuning measured (as cached)",
                                      registry=self.registry)
        self._lifecycle_metrics()

    def _lifecycle_metrics(self) -> None:
        r = self.registry
        self.model_info = Gauge("binaudit_model_info", "1 for each model version running",
                                ["deployment", "role", "version"], registry=r)
        self.model_swaps = Counter("binaudit_model_swaps_total",
                                   "Model switches without restart", ["deployment"], registry=r)
        # The alert: a promoted version that could not be loaded (the old one keeps running).
        self.model_swap_failures = Counter(
            "binaudit_model_swap_failures_total", "Model versions that failed to load, "
            "verify or warm up (the running model stays)", ["deployment", "role"], registry=r)
        self.shadow_incompatible = Counter(
            "binaudit_shadow_incompatible_total", "Shadow versions not run: they read other "
            "pixels than production (input size, normalisation, decode)", ["deployment"],
            registry=r)
        self.shadow_batches = Counter("binaudit_shadow_batches_total",
                                      "Production batches the shadow model ran", registry=r)
        self.shadow_skipped = Counter(
            "binaudit_shadow_skipped_total", "Production batches the shadow did not run (its "
            "queue was full: production never waits)", registry=r)
        self.shadow_failures = Counter("binaudit_shadow_failures_total",
                                       "Shadow forward passes that raised", registry=r)
        self._running: set[tuple[str, str, str]] = set()

    @classmethod
    def disabled(cls) -> PipelineMetrics:
        return cls(None)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.stage_seconds.labels("infer").observe(seconds)

    def observe_backend(self, backend: str, max_batch_size: int,
                        tuning: TuneResult | None, streams: int = 1) -> None:
        """The backend in use and, when it was autotuned, every rate that was measured."""
        self.backend.labels(backend, str(max_batch_size), str(streams)).set(1)
        if tuning is None:
            return
        self.autotune_seconds.set(tuning.tune_seconds)
        for m in tuning.measurements:
            self.autotune_rate.labels(m.backend, str(m.batch_size), str(m.streams)).set(
                m.images_per_s)

    def observe_models(self, deployment: str, production: str, shadow: str | None) -> None:
        """``binaudit_model_info`` names the versions running now, and only those."""
        running = {(deployment, "production", production)}
        if shadow is not None:
            running.add((deployment, "shadow", shadow))
        for labels in self._running - running:
            self.model_info.remove(*labels)
        for labels in running:
            self.model_info.labels(*labels).set(1)
        self._running = running

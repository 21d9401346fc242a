"""Prometheus metrics of the shared inference pipeline (worker, replay and serve).

Each process component owns a ``CollectorRegistry`` (not the global one), so several
pipelines can live in one process (tests, the HTTP server next to a worker).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class PipelineMetrics:
    """Stage latencies and batch sizes of the shared inference pipeline."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.enabled = registry is not None
        self.registry = registry or CollectorRegistry()
        self.batch_size = Histogram("binaudit_batch_size", "Images per forward pass",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.stage_seconds = Histogram("binaudit_stage_seconds", "Latency per pipeline stage",
                                       ["stage"], buckets=LATENCY_BUCKETS,
                                       registry=self.registry)

    @classmethod
    def disabled(cls) -> PipelineMetrics:
        return cls(None)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.stage_seconds.labels("infer").observe(seconds)

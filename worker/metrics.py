"""Prometheus metrics and the health/metrics HTTP endpoint.

Each process component owns a ``CollectorRegistry`` (not the global one), so several
pipelines can live in one process (tests, the HTTP server next to a worker).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)

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


class WorkerMetrics(PipelineMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        r = self.registry
        self.events = Counter("binaudit_events_total", "Events by outcome", ["outcome"],
                              registry=r)
        self.dead_letters = Counter("binaudit_dead_letters_total", "Dead letters by kind",
                                    ["kind"], registry=r)
        self.lag = Gauge("binaudit_consumer_lag", "Records behind the end offset",
                         ["topic", "partition"], registry=r)
        self.in_flight = Gauge("binaudit_in_flight", "Events taken from Kafka, not yet written",
                               registry=r)
        self.commits = Counter("binaudit_offset_commits_total", "Offset commits", registry=r)
        self.infra_retries = Counter("binaudit_infra_retries_total",
                                     "Retries because a dependency was down", ["dependency"],
                                     registry=r)
        self.paused = Gauge("binaudit_paused", "1 while partitions are paused (backpressure)",
                            registry=r)


class HealthServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` (200 when ``healthy()``)."""

    def __init__(self, port: int, registry: CollectorRegistry,
                 healthy: Callable[[], bool]) -> None:
        self.port = port
        self.registry = registry
        self.healthy = healthy
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> HealthServer:
        registry, healthy = self.registry, self.healthy

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.startswith("/metrics"):
                    body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
                elif self.path.startswith("/healthz"):
                    ok = healthy()
                    body, ctype, code = (b"ok" if ok else b"unhealthy"), "text/plain", (
                        200 if ok else 503)
                else:
                    body, ctype, code = b"not found", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self._server = ThreadingHTTPServer(("0.0.0.0", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="health", daemon=True).start()
        log.info("metrics and health on :%d (/metrics, /healthz)", self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

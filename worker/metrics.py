"""The worker's own Prometheus metrics and its health/metrics HTTP endpoint."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from inference.metrics import PipelineMetrics
from inference.positions import TopicPartitionKey
from schemas.records import AuditVerdict, DeadLetterRecord

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    """What one run of the worker did (the CLI prints it)."""

    events: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None

    @property
    def seconds(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started_at


class WorkerMetrics(PipelineMetrics):
    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        r = self.registry
        self.events = Counter("binaudit_events_total", "Events by outcome", ["outcome"],
                              registry=r)
        self.dead_letters = Counter("binaudit_dead_letters_total", "Dead letters by kind",
                                    ["kind"], registry=r)
        self.lag = Gauge("binaudit_consumer_lag",
                         "Records between this member's fetch position and the end offset",
                         ["topic", "partition"], registry=r)
        self.committed_lag = Gauge(
            "binaudit_consumer_committed_lag",
            "Records between the group's committed offset and the end offset (the backlog "
            "that is not durable yet)", ["topic", "partition"], registry=r)
        self.in_flight = Gauge("binaudit_in_flight", "Events taken from Kafka, not yet written",
                               registry=r)
        self.commits = Counter("binaudit_offset_commits_total", "Offset commits", registry=r)
        self.infra_retries = Counter("binaudit_infra_retries_total",
                                     "Retries because a dependency was down", ["dependency"],
                                     registry=r)
        self.paused = Gauge("binaudit_paused", "1 while partitions are paused (backpressure)",
                            registry=r)
        # The alert: 1 while a dependency fails (S3 denied/unreachable, the model raising).
        self.dependency_down = Gauge("binaudit_dependency_down",
                                     "1 while a dependency is failing (alert on it)",
                                     ["dependency"], registry=r)
        self.outages = Counter("binaudit_dependency_outages_total",
                               "Times a dependency started failing", ["dependency"], registry=r)
        self.dlq_refused = Counter(
            "binaudit_dlq_refused_total", "Dead letters the DLQ topic refused for their size "
            "(kept in Postgres only)", registry=r)

    def count_written(self, stats: RunStats, verdicts: Sequence[AuditVerdict],
                      dead_letters: Sequence[DeadLetterRecord]) -> None:
        """Count rows that became durable, in the run's stats and the metrics."""
        for v in verdicts:
            stats.verdicts[v.status.value] = stats.verdicts.get(v.status.value, 0) + 1
            self.events.labels(v.status.value).inc()
        for d in dead_letters:
            kind = d.error_kind.value
            stats.dead_letters[kind] = stats.dead_letters.get(kind, 0) + 1
            self.events.labels("dead_letter").inc()
            self.dead_letters.labels(kind).inc()

    def record_lag(self, lags: Mapping[TopicPartitionKey, int],
                   committed: Mapping[TopicPartitionKey, int]) -> None:
        """Position lag and committed lag (the backlog not durable yet) per partition."""
        for tp, lag in lags.items():
            self.lag.labels(tp.topic, str(tp.partition)).set(lag)
        for tp, lag in committed.items():
            self.committed_lag.labels(tp.topic, str(tp.partition)).set(lag)


class HealthServer:
    """``/metrics`` (Prometheus text), ``/healthz`` (liveness: 200 when ``healthy()``) and
    ``/readyz`` (200 when ``not_ready()`` is empty; the body names what is failing)."""

    def __init__(self, port: int, registry: CollectorRegistry,
                 healthy: Callable[[], bool],
                 not_ready: Callable[[], list[str]] | None = None) -> None:
        self.port = port
        self.registry = registry
        self.healthy = healthy
        self.not_ready = not_ready or (lambda: [] if healthy() else ["unhealthy"])
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> HealthServer:
        registry, healthy, not_ready = self.registry, self.healthy, self.not_ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.startswith("/metrics"):
                    body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
                elif self.path.startswith("/healthz"):
                    ok = healthy()
                    body, ctype, code = (b"ok" if ok else b"unhealthy"), "text/plain", (
                        200 if ok else 503)
                elif self.path.startswith("/readyz"):
                    failing = not_ready()
                    body = (f"not ready: {', '.join(failing)}" if failing else "ready").encode()
                    ctype, code = "text/plain", 503 if failing else 200
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
        log.info("metrics and health on :%d (/metrics, /healthz, /readyz)", self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

"""Probes for the dependency-fault scenarios: the worker's own /metrics, scraped while a fault
lasts, and an HTTP proxy in front of moto that fails GETs of chosen keys."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import re
import threading
import time
from contextlib import AsyncExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from core.s3 import ensure_bucket, open_s3_client
from robots.publisher import image_key, load_samples, upload_objects

_PORT = re.compile(r"metrics and health on :(\d+)")


def metrics_port(log: str) -> int | None:
    """The worker's ephemeral /metrics port, from its start-up log line."""
    found = _PORT.search(log)
    return int(found.group(1)) if found else None


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample of the Prometheus text ``text`` (None if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.M)
    return float(found.group(1)) if found else None


class MetricsWatch:
    """Scrapes a worker's /metrics and /healthz every ``interval_s`` and keeps, per series,
    the highest value seen (did the alert fire? did the worker pause?)."""

    SERIES = {"s3_down": ("binaudit_dependency_down", {"dependency": "s3"}),
              "model_down": ("binaudit_dependency_down", {"dependency": "model"}),
              "paused": ("binaudit_paused", {}),
              "s3_retries": ("binaudit_infra_retries_total", {"dependency": "s3"}),
              "model_retries": ("binaudit_infra_retries_total", {"dependency": "model"})}

    def __init__(self, worker: Any, interval_s: float = 0.5) -> None:
        self.worker, self.interval = worker, interval_s
        self.peak: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.not_ready_seen = False
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-watch", daemon=True)

    def __enter__(self) -> MetricsWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        port = None
        while not self._stop.wait(self.interval):
            port = port or metrics_port(self.worker.log())
            if port is None:
                continue
            with contextlib.suppress(requests.RequestException):
                self._scrape(port)

    def _scrape(self, port: int) -> None:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        for key, (name, labels) in self.SERIES.items():
            value = sample(text, name, **labels)
            if value is not None:
                self.last[key] = value
                self.peak[key] = max(value, self.peak.get(key, value))
        ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
        self.not_ready_seen |= ready != 200
        self.scrapes += 1

    def wait_for(self, key: str, value: float, timeout: float) -> bool:
        """Until the last scrape of ``key`` equals ``value``; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.last.get(key) == value:
                return True
            time.sleep(self.interval)
        return False


class FaultProxy:
    """HTTP relay in front of moto: every request is forwarded as it is, except GETs whose
    path ends with one of ``poisoned`` keys, which get a 500 with an S3 error code the worker
    does not classify (a store that keeps failing for one object only)."""

    CODE = "InternalError"

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.poisoned: set[str] = set()
        self.failed_gets = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy",
                         daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                if self.command == "GET" and any(path.endswith("/" + k)
                                                 for k in proxy.poisoned):
                    proxy.failed_gets += 1
                    self._answer(500, {"Content-Type": "application/xml"}, (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{proxy.CODE}"
                        "</Code><Message>injected by the reliability suite</Message></Error>"
                    ).encode())
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body,
                                 headers={k: v for k, v in self.headers.items()})
                    resp = conn.getresponse()
                    data = resp.read()
                    headers = {k: v for k, v in resp.getheaders()
                               if k.lower() not in {"transfer-encoding", "connection",
                                                    "content-length"}}
                    self._answer(resp.status, headers, data,
                                 head=self.command == "HEAD",
                                 length=resp.getheader("Content-Length"))
                finally:
                    conn.close()

            def _answer(self, status: int, headers: dict[str, str], data: bytes, *,
                        head: bool = False, length: str | None = None) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", length if head and length else str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        return Handler


def reseed_images(settings: Any, sample_dir: Path) -> int:
    """moto keeps objects in memory: after a restart the bucket is gone. Put the sample back
    through the publisher's own upload path."""
    samples = load_samples(sample_dir)

    async def run() -> int:
        async with AsyncExitStack() as stack:
            client = await open_s3_client(stack, settings.s3)
            await ensure_bucket(client, settings.s3.bucket)
            stats = await upload_objects(
                client, settings.s3.bucket,
                {image_key(s.id): s.image_path for s in samples if s.image_path},
                concurrency=16)
            return stats.uploaded

    return asyncio.run(run())

"""`binaudit serve`: the model as a SageMaker-compatible real-time endpoint.

SageMaker's inference-container contract (bring your own container): the image is run as
``serve``, answers ``GET /ping`` (200 = healthy) and ``POST /invocations`` on port 8080 (also
``POST /endpoints/<name>/invocations``, the path SageMaker runtime's ``InvokeEndpoint`` posts
to, so boto3's ``sagemaker-runtime`` client works unchanged with ``endpoint_url``), with
the model unpacked under /opt/ml/model (the Dockerfile points ``BINAUDIT_INFERENCE__MODEL``
there). The request/response contract is in ``serve/app.py``.

One process, one model, one async front end: every request becomes a ``WorkItem`` of the same
``InferencePipeline`` the Kafka worker uses (fetch → decode → micro-batch → infer), so
concurrent requests share forward passes. There is no ``--workers``: scale out by running more
containers behind the endpoint (SageMaker instance count, or replicas behind a load balancer).

Start-up: the HTTP listener comes up first and ``/ping`` answers 503 while the model loads and
warms up in a background thread; 200 after. The model is chosen like the worker's
(``serve/models.py``): the registry's production version of the deployment
``inference.deployment_for(kafka.topic)``, or the configured artifact when pinned.

Hot swap (``inference.follow_registry``): a promotion or rollback is noticed (LISTEN/NOTIFY,
polled as a fallback), the new version is loaded, verified and warmed up in the background,
then the pipeline switches (``InferencePipeline.swap``): requests in flight finish on the old
model, new ones wait the moment it takes, ``/ping`` stays 200 throughout, and every answer's
``model_version`` names the model that produced it. A version that fails to load leaves the
old one serving and counts ``binaudit_model_swap_failures_total`` (the alert).

serve never runs the deployment's shadow model: shadow traffic is the worker's job (its
verdicts are kept per Kafka event); callers get production's answer at production's latency.

SIGTERM/SIGINT: ``/ping`` turns 503, the listener closes, requests in flight are answered
(within ``serve.shutdown_grace_s``), the pipeline drains, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from core.model.preprocess import ImageLimits, Preprocessor
from core.settings import Settings
from inference.compare import decide
from inference.counter import BinCounter
from inference.images import S3, ImageFetcher
from inference.pipeline import MODEL, InferencePipeline, Outcome, PipelineConfig, WorkItem
from schemas.events import unexpected_error
from schemas.records import EventError
from serve.app import (
    HttpError,
    HttpKind,
    RequestKind,
    ServeMetrics,
    check_bearer,
    classify,
    event_body,
    http_error,
    parse_event_request,
    prediction_body,
)
from serve.follow import RegistryFollower
from serve.models import ServeModels
from serve.responses import (
    error_response,
    from_aiohttp,
    prediction_or_raise,
    send_and_close,
    settle,
    too_large,
)

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Health checks and scrapes are frequent: logged at DEBUG, everything else at INFO.
_QUIET_ROUTES = frozenset({"/ping", "/metrics"})


class ModelServer:
    """The aiohttp application around one InferencePipeline and the model set it runs.

    The models come from ``serve/models.py`` (the registry, or the configured artifact);
    ``load_counter`` is a test hook that pins a counter instead. Loading runs in a thread
    after the listener is up.
    """

    def __init__(self, settings: Settings, *, load_counter: Callable[[], BinCounter] | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.cfg = settings.serve
        self.metrics = ServeMetrics(registry or CollectorRegistry())
        self.models = ServeModels(settings, self.metrics, load_counter=load_counter,
                                  stopping=lambda: self._stopping)
        self._stack = ExitStack()
        self._pipeline: InferencePipeline | None = None
        self._ready = False
        self._stopping = False
        self._in_flight = 0
        # Cleared while the pipeline switches models: requests wait here, not in a submit()
        # that would block the event loop (and /ping) for the switch.
        self._open = asyncio.Event()
        self._open.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.loading: asyncio.Task[None] | None = None
        self.following: asyncio.Task[None] | None = None
        self.app = self._build_app()

    # ---- lifecycle --------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        # client_max_size makes aiohttp refuse a larger body (chunked ones included).
        app = web.Application(client_max_size=self.cfg.max_body_bytes,
                              middlewares=[self._observe])
        app.router.add_get("/ping", self._ping)
        app.router.add_post("/invocations", self._invocations)
        app.router.add_post("/endpoints/{endpoint}/invocations", self._invocations)
        app.router.add_get("/metrics", self._metrics)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Listen (model loading starts in the background); return the bound port."""
        self._runner = web.AppRunner(self.app, access_log=None,
                                     shutdown_timeout=self.cfg.shutdown_grace_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host if host is not None else self.cfg.host,
                           port if port is not None else self.cfg.port)
        await site.start()
        bound = int(self._runner.addresses[0][1])
        where = host if host is not None else self.cfg.host
        auth = "bearer token required" if self.cfg.auth_token else "no auth token"
        log.info("serving on %s:%d (/ping, /invocations, /endpoints/<name>/invocations, "
                 "/metrics; %s); loading the model", where, bound, auth)
        if self.cfg.auth_token is None and where not in {"127.0.0.1", "::1", "localhost"}:
            log.warning("listening on %s without serve.auth_token: anyone who reaches the port "
                        "can invoke the model", where)
        return bound

    async def stop(self) -> None:
        """Graceful: stop listening, answer requests in flight, drain and close the pipeline."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _on_startup(self, _app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self.loading = asyncio.create_task(self._load(), name="load-model")

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._load_blocking)
        except Exception:
            if self._stopping:  # SIGTERM while waiting for Postgres: nothing to report
                log.info("stopped before the model was loaded")
                return
            log.exception("model failed to load: /ping stays 503")
            raise
        if self._stopping:  # SIGTERM arrived while loading: never turn healthy
            return
        self._ready = True
        self.metrics.ready.set(1)
        log.info("model %s ready after %.2fs", self.models.running.production.version,
                 time.perf_counter() - started)
        if self.models.follows_registry:
            assert self._pipeline is not None
            follower = RegistryFollower(self.models, self._pipeline, self._open,
                                        stopping=lambda: self._stopping)
            self.following = asyncio.create_task(follower.run(), name="follow-registry")

    def _load_blocking(self) -> None:
        self._stack.callback(self.models.close)  # stops the watcher, if one starts
        counter = self.models.start().production
        inference = self.settings.inference
        pre = Preprocessor(counter.card, ImageLimits.from_settings(inference))
        fetcher = self._stack.enter_context(ImageFetcher.from_settings(self.settings))
        config = PipelineConfig.from_settings(
            inference, max_batch_size=self.cfg.max_batch_size,
            max_wait_ms=self.cfg.max_wait_ms, plan=counter.plan)
        self._pipeline = self._stack.enter_context(InferencePipeline(
            counter, pre, config, self._on_outcome, fetcher=fetcher, metrics=self.metrics))

    async def _on_shutdown(self, _app: web.Application) -> None:
        # The listener is closed already; handlers in flight still get their answers.
        log.info("shutting down: %d requests in flight", self._in_flight)
        self._stopping = True
        self._ready = False
        self.metrics.ready.set(0)

    async def _on_cleanup(self, _app: web.Application) -> None:
        # A thread cannot be cancelled: let a load or a switch under way finish.
        pending = [t for t in (self.loading, self.following) if t is not None and not t.done()]
        if pending:
            await asyncio.wait(pending)
        await asyncio.to_thread(self._close_blocking)
        log.info("server stopped")

    def _close_blocking(self) -> None:
        if self._pipeline is not None and not self._pipeline.drain(self.cfg.shutdown_grace_s):
            log.warning("pipeline still busy after %.1fs; closing anyway",
                        self.cfg.shutdown_grace_s)
        self._stack.close()

    # ---- pipeline → event loop --------------------------------------------------------
    def _on_outcome(self, outcome: Outcome) -> None:
        """Called from a pipeline thread: settle the request's future on the loop."""
        future = outcome.item.context
        assert self._loop is not None and isinstance(future, asyncio.Future)
        try:
            self._loop.call_soon_threadsafe(settle, future, outcome)
        except RuntimeError:  # the loop is closed: nobody waits for this answer any more
            log.debug("outcome after the event loop closed: dropped")

    async def _run(self, item: WorkItem) -> Outcome:
        try:
            return await asyncio.wait_for(self._submit(item), self.cfg.request_timeout_s)
        except TimeoutError as exc:
            # The item still finishes in the pipeline; settle() ignores the cancelled future.
            raise HttpError(504, HttpKind.TIMEOUT,
                            f"no answer within {self.cfg.request_timeout_s}s") from exc

    async def _submit(self, item: WorkItem) -> Outcome:
        assert self._loop is not None and self._pipeline is not None
        future: asyncio.Future[Outcome] = self._loop.create_future()
        item.context = future
        # Checked and submitted in one step of the loop: a switch starts only on this loop,
        # so no submit() runs (and blocks the loop) while the pipeline switches.
        while not self._open.is_set():
            await self._open.wait()
        self._pipeline.submit(item)
        return await future

    # ---- routes -----------------------------------------------------------------------
    async def _ping(self, _request: web.Request) -> web.Response:
        if not self._ready:
            raise HttpError(503, HttpKind.NOT_READY, "model is loading (or server stopping)",
                            retry_after_s=5)
        return web.json_response({"status": "ok"})

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _invocations(self, request: web.Request) -> web.Response:
        if self.cfg.auth_token is not None:  # before anything else: no state leaks to strangers
            check_bearer(request.headers.get("Authorization"),
                         self.cfg.auth_token.get_secret_value())
        if not self._ready:
            raise HttpError(503, HttpKind.NOT_READY, "model is not loaded yet",
                            retry_after_s=5)
        kind = classify(request.headers.get("Content-Type", ""))
        if request.content_length is not None and request.content_length > self.cfg.max_body_bytes:
            raise too_large(request.content_length, self.cfg.max_body_bytes)
        self._admit(kind)
        self._in_flight += 1
        self.metrics.in_flight.set(self._in_flight)
        try:
            body = await self._read_body(request)
            if kind is RequestKind.IMAGE:
                return await self._predict_image(body)
            return await self._predict_event(body)
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.set(self._in_flight)

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body within ``body_read_timeout_s``: a client that sends headers and then
        trickles (or withholds) the body gets 408, the connection is closed and its admission
        slot freed, instead of holding one of ``max_queue`` for as long as it likes."""
        try:
            return await asyncio.wait_for(request.read(), self.cfg.body_read_timeout_s)
        except web.HTTPRequestEntityTooLarge as exc:
            raise too_large(None, self.cfg.max_body_bytes) from exc
        except TimeoutError as exc:
            raise HttpError(408, HttpKind.REQUEST_TIMEOUT,
                            f"body not received within {self.cfg.body_read_timeout_s}s",
                            close=True) from exc

    def _admit(self, kind: RequestKind) -> None:
        """Refuse at once what cannot be served now. Admission counts the pipeline's own
        events: a request that timed out (504) still holds its fetch until S3 answers, so
        during an S3 outage timed-out requests cannot pile up fetches behind new ones."""
        assert self._pipeline is not None
        busy = max(self._in_flight, self._pipeline.in_flight)
        if busy >= self.cfg.max_queue:
            raise HttpError(503, HttpKind.OVERLOADED,
                            f"{busy} requests in flight (max_queue {self.cfg.max_queue}); "
                            "retry later", retry_after_s=1)
        # A fault is only known to last while some event still retries against it (the
        # first success clears it); with nothing in flight, this request is the probe.
        faults = self._pipeline.faults.active() if self._pipeline.in_flight else {}
        needs = {MODEL} if kind is RequestKind.IMAGE else {MODEL, S3}
        for dependency in sorted(needs & set(faults)):
            raise HttpError(503, HttpKind.UNAVAILABLE,
                            f"{dependency} is failing ({faults[dependency].cause}); retry later",
                            retry_after_s=5)

    async def _predict_image(self, body: bytes) -> web.Response:
        outcome = await self._run(WorkItem(None, None, image=body))
        prediction = prediction_or_raise(outcome, from_s3=False)
        # The model that produced this answer, which a switch may have replaced since.
        version, _, counts = self.models.judging(outcome.model_version)
        return web.json_response(prediction_body(prediction, model_version=version,
                                                 class_counts=counts))

    async def _predict_event(self, body: bytes) -> web.Response:
        try:
            request = parse_event_request(body, now=datetime.now(UTC))
        except EventError as exc:
            raise http_error(exc, from_s3=False) from exc
        except Exception as exc:  # noqa: BLE001 - whatever the body, a 400, never a 500
            log.exception("request body: parsing raised %s", type(exc).__name__)
            err = unexpected_error(exc)
            raise HttpError(400, err.kind.value, err.message) from exc
        outcome = await self._run(WorkItem(None, request.event))
        prediction = prediction_or_raise(outcome, from_s3=True)
        version, policy, counts = self.models.judging(outcome.model_version)
        # The worker's own rule and thresholds: the endpoint and the stream never disagree.
        verdict = decide(prediction, expected=request.event.expected_quantity,
                         supported_counts=counts, policy=policy)
        return web.json_response(event_body(prediction, request, verdict,
                                            model_version=version, class_counts=counts))

    # ---- every request: errors as JSON, latency metric, one log line ------------------
    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        kind = "-"
        try:
            response: web.StreamResponse = await handler(request)
        except HttpError as exc:
            response, kind = error_response(exc), exc.kind
            if exc.close:
                await send_and_close(request, response)
        except web.HTTPException as exc:  # aiohttp's own: unknown route, wrong method
            err = from_aiohttp(exc)
            response, kind = error_response(err), err.kind
        except Exception as exc:
            log.exception("%s %s: unexpected failure", request.method, request.path)
            response, kind = error_response(HttpError(
                500, HttpKind.INTERNAL_ERROR, f"internal error: {type(exc).__name__}")), \
                HttpKind.INTERNAL_ERROR
        elapsed = time.perf_counter() - started
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        self.metrics.request_seconds.labels(route, request.method,
                                            str(response.status)).observe(elapsed)
        if kind != "-":
            self.metrics.rejections.labels(kind).inc()
        quiet = route in _QUIET_ROUTES and kind != HttpKind.INTERNAL_ERROR
        level = logging.DEBUG if quiet else logging.INFO
        log.log(level, "http method=%s path=%s status=%d kind=%s bytes_in=%s ms=%.1f",
                request.method, request.path, response.status, kind,
                request.content_length if request.content_length is not None else "-",
                elapsed * 1000)
        return response


async def run_server(server: ModelServer) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully. Raises if the model fails."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    assert server.loading is not None
    stopping = asyncio.create_task(stop.wait())
    # Wait for a signal; a model that fails to load ends the server too (exit non-zero).
    await asyncio.wait({stopping, server.loading}, return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():
        if server.loading.exception() is None:
            await stopping
        else:
            stopping.cancel()
    failed = server.loading.done() and server.loading.exception() is not None
    log.info("%s: stopping", "model failed to load" if failed else "signal received")
    await server.stop()
    if failed:
        server.loading.result()  # re-raise the loading error for the caller


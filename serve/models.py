"""Which model the endpoint runs, following the registry, and the bookkeeping of a switch.

The endpoint loads its model like the worker (``inference.switcher.load_initial``, deployment
``inference.deployment_for(kafka.topic)``): following the registry, the deployment's
production version; pinned (``inference.follow_registry`` off, or ``binaudit serve --model``),
the configured artifact. It never loads the shadow model: shadow verdicts are written per
Kafka event (topic, partition, offset) by the worker, and a caller of ``/invocations`` must
get production's answer at production's latency.

A pinned endpoint needs no database (a SageMaker container may have none): it records its
version in the registry when Postgres answers, and carries on when it does not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack

from core.artifacts import tree_sha256
from core.model.card import DecisionPolicy
from core.settings import InferenceSettings, Settings
from inference.counter import BinCounter
from inference.metrics import PipelineMetrics
from inference.retries import Backoff
from inference.switcher import (
    JudgedVersions,
    ModelLoader,
    ModelSet,
    RegistryUnavailable,
    configured_uri,
    default_actor,
    load_counter,
    load_initial,
    record_version,
    registry_engine,
)
from inference.watcher import ModelWatcher

log = logging.getLogger(__name__)

# Versions whose decision policy is kept after a switch: a request answered by the old model
# just before the switch is judged by its own policy after it.


class ServeModels:
    """The running set, the next one the watcher prepared, and each version's policy.

    ``start()`` (blocking: run it in a thread) loads the first set and, when following the
    registry, starts the watcher; ``close()`` stops it. ``load_counter`` is a test hook: a
    counter obtained that way is pinned and never registered.
    """

    def __init__(self, settings: Settings, metrics: PipelineMetrics, *,
                 load_counter: Callable[[], BinCounter] | None = None,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.settings = settings
        # No shadow in serve (module docstring): nothing loads one, now or after a promotion.
        self.inference: InferenceSettings = settings.inference.model_copy(
            update={"run_shadow": False})
        self.deployment = self.inference.deployment_for(settings.kafka.topic)
        self.metrics = metrics
        self._load_counter = load_counter
        self._stopping = stopping
        self._stack = ExitStack()
        self._watcher: ModelWatcher | None = None
        self.current: ModelSet | None = None
        self.pending: ModelSet | None = None  # prepared, not switched to yet
        self._judged = JudgedVersions()

    @property
    def running(self) -> ModelSet:
        assert self.current is not None, "ServeModels used before start()"
        return self.current

    @property
    def follows_registry(self) -> bool:
        return self._watcher is not None

    def start(self) -> ModelSet:
        self.current = self._first_set()
        self._judged.remember(self.current)
        self.metrics.observe_models(self.deployment, self.current.production.version, None)
        log.info("deployment %s: %s%s", self.deployment, self.current.describe(),
                 "" if self.current.follows_registry else " (pinned: registry not followed)")
        if self.current.follows_registry:
            loader = ModelLoader(self.inference, s3=self.settings.s3,
                                 deployment=self.deployment, metrics=self.metrics)
            self._watcher = self._stack.enter_context(ModelWatcher(
                loader, self.settings.db, self.current, poll_s=self.inference.registry_poll_s))
        return self.current

    def close(self) -> None:
        self._stack.close()

    def _first_set(self) -> ModelSet:
        if self._load_counter is not None:
            counter = self._load_counter()
            log.info("model %s warmed up in %.2fs", counter.version, counter.warm_up())
            return ModelSet.pinned(counter, deployment=self.deployment, inference=self.inference)
        if not self.inference.follow_registry:
            return self._pinned()
        backoff = Backoff(1.0, 10.0)

        def wait(exc: RegistryUnavailable) -> None:
            if self._stopping():
                raise exc  # SIGTERM while Postgres is down: give up loading
            delay = backoff.next()
            log.warning("postgres unavailable at start-up (%s); /ping stays 503, retrying in "
                        "%.1fs", exc, delay)
            time.sleep(delay)

        return load_initial(self.inference, db=self.settings.db, s3=self.settings.s3,
                            deployment=self.deployment, metrics=self.metrics,
                            actor=default_actor("serve"), on_unavailable=wait)

    def _pinned(self) -> ModelSet:
        """The configured artifact, recorded in the registry if Postgres answers at once."""
        loader = ModelLoader(self.inference, s3=self.settings.s3, deployment=self.deployment,
                             metrics=self.metrics)
        path = loader.artifact(self.inference.model, None)
        counter = load_counter(self.inference, path)
        engine = registry_engine(self.settings.db)
        try:
            record_version(engine, counter, artifact_uri=configured_uri(self.inference, path),
                           sha256=tree_sha256(path))
        except RegistryUnavailable as exc:
            log.warning("model %s not recorded in the registry (%s): serving it anyway",
                        counter.version, exc)
        finally:
            engine.dispose()
        return ModelSet.pinned(counter, deployment=self.deployment, inference=self.inference)

    # ---- switching ----------------------------------------------------------------------
    def next_set(self) -> ModelSet | None:
        """The set to switch to (None: nothing new); a newer one replaces one not yet taken."""
        if self._watcher is not None:
            self.pending = self._watcher.newest(self.pending)
        return self.pending

    def switched(self, new: ModelSet) -> None:
        """The pipeline runs ``new`` from now on (or already did: a change of shadow only)."""
        old = self.running
        self.current, self.pending = new, None
        self._judged.remember(new)
        self.metrics.observe_models(self.deployment, new.production.version, None)
        if new.production is old.production:
            return
        self.metrics.model_swaps.labels(self.deployment).inc()
        log.info("switched production %s -> %s without restart", old.production.version,
                 new.production.version)

    def judging(self, version: str | None) -> tuple[str, DecisionPolicy, list[int]]:
        """(version, policy, supported counts) of the model that produced an answer (None:
        the running production's)."""
        return self._judged.judging(version, self.running)

"""The worker's side of the model lifecycle: which models run, following the registry, and
the bookkeeping of a switch.

``WorkerModels`` loads the starting set (``inference.switcher.load_initial``; a counter handed
in by the caller is pinned), starts the registry watcher when the worker follows the registry,
and holds a set the watcher prepared until the worker reaches a clean switch point (nothing in
flight, everything written and committed). Verdicts are built with the policy of the version
that produced them, never with "whatever runs now".
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from contextlib import ExitStack

from core.model.card import DecisionPolicy
from core.model.preprocess import ImageLimits, Preprocessor
from core.settings import Settings
from inference.counter import BinCounter
from inference.images import ImageFetcher
from inference.metrics import PipelineMetrics
from inference.outcomes import ShadowVerdict, shadow_records
from inference.pipeline import InferencePipeline, Outcome, PipelineConfig
from inference.shadow import ShadowBatch
from inference.switcher import (
    JudgedVersions,
    ModelLoader,
    ModelSet,
    RegistryUnavailable,
    default_actor,
    load_initial,
    record_version,
    registry_engine,
    retrying,
)
from inference.watcher import ModelWatcher

log = logging.getLogger(__name__)


class WorkerModels:
    """``with WorkerModels(...) as models:`` — the running set, and the next one if any."""

    def __init__(self, settings: Settings, metrics: PipelineMetrics, *,
                 counter: BinCounter | None = None,
                 backoff: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self.inference = settings.inference
        self.deployment = self.inference.deployment_for(settings.kafka.topic)
        self.metrics = metrics
        self._counter = counter
        self._backoff = backoff or (lambda: 1.0)
        self._stack = ExitStack()
        self._watcher: ModelWatcher | None = None
        self.current: ModelSet | None = None
        self.pending: ModelSet | None = None  # prepared, waiting for a clean switch point
        # Versions that ran in this process: an outcome is judged by its own.
        self._judged = JudgedVersions()
        self._shadow_out: queue.Queue[ShadowBatch] = queue.Queue()  # from the shadow thread

    def __enter__(self) -> WorkerModels:
        self.current = self._start()
        self._judged.remember(self.current)
        self.metrics.observe_models(self.current.deployment, *self.current.versions)
        log.info("deployment %s: %s%s", self.deployment, self.current.describe(),
                 "" if self.current.follows_registry else " (pinned: registry not followed)")
        policy = self.current.policy
        log.info("decision policy: match when P(manifest count) >= %.4f, mismatch when "
                 "1 - P >= %.4f (%s)", policy.match_min_p, policy.mismatch_min_score,
                 policy.chosen_on or "card defaults")
        if self.current.follows_registry:
            loader = ModelLoader(self.inference, s3=self.settings.s3,
                                 deployment=self.deployment, metrics=self.metrics)
            self._watcher = self._stack.enter_context(ModelWatcher(
                loader, self.settings.db, self.current, poll_s=self.inference.registry_poll_s))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def running(self) -> ModelSet:
        assert self.current is not None, "WorkerModels used outside its `with` block"
        return self.current

    def _start(self) -> ModelSet:
        def wait(exc: RegistryUnavailable) -> None:
            delay = self._backoff()
            log.warning("postgres unavailable at start-up (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)

        if self._counter is not None:
            return self._handed_in(self._counter, wait)
        return load_initial(self.inference, db=self.settings.db, s3=self.settings.s3,
                            deployment=self.deployment, metrics=self.metrics,
                            actor=default_actor("worker"), on_unavailable=wait)

    def _handed_in(self, counter: BinCounter,
                   wait: Callable[[RegistryUnavailable], None]) -> ModelSet:
        """A counter the caller loaded (bench): pinned, registered like the configured one."""
        warm = counter.warm_up()
        log.info("model %s (handed in, pinned) warmed up in %.2fs", counter.version, warm)
        engine = registry_engine(self.settings.db)
        try:
            retrying(lambda: record_version(engine, counter, sha256=None, artifact_uri=str(
                self.inference.model_path.resolve())), wait)
        finally:
            engine.dispose()
        return ModelSet.pinned(counter, deployment=self.deployment, inference=self.inference)

    def pipeline(self, fetcher: ImageFetcher,
                 on_outcome: Callable[[Outcome], None]) -> InferencePipeline:
        """The inference pipeline running the current set (shadow answers kept here)."""
        models = self.running
        counter = models.production
        pre = Preprocessor(counter.card, ImageLimits.from_settings(self.inference))
        config = PipelineConfig.from_settings(self.inference, plan=counter.plan)
        return InferencePipeline(counter, pre, config, on_outcome, fetcher=fetcher,
                                 metrics=self.metrics, shadow=models.shadow,
                                 on_shadow=self._shadow_out.put,
                                 shadow_queue_batches=self.inference.shadow_queue_batches)

    def shadow_rows(self) -> list[ShadowVerdict]:
        """The shadow rows of the answers that arrived since the last call (main thread)."""
        rows: list[ShadowVerdict] = []
        while True:
            try:
                batch = self._shadow_out.get_nowait()
            except queue.Empty:
                return rows
            _, policy, _ = self.judging(batch.model_version)
            rows += shadow_records(batch, deployment=self.deployment, policy=policy)

    # ---- switching ------------------------------------------------------------------
    def next_set(self) -> ModelSet | None:
        """The set to switch to once the worker is at a clean point (None: nothing new)."""
        if self._watcher is not None:
            self.pending = self._watcher.newest(self.pending)
        return self.pending

    def switched(self, new: ModelSet) -> None:
        """The pipeline runs ``new`` from now on."""
        old = self.running
        self.current, self.pending = new, None
        self._judged.remember(new)
        self.metrics.model_swaps.labels(self.deployment).inc()
        self.metrics.observe_models(new.deployment, *new.versions)
        log.info("switched production %s -> %s (shadow %s)", old.production.version,
                 new.production.version, new.shadow.version if new.shadow else "none")

    def judging(self, version: str | None) -> tuple[str, DecisionPolicy, list[int]]:
        """(version, policy, supported counts) of the model that produced an answer (None:
        the running production's)."""
        return self._judged.judging(version, self.running)

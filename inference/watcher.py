"""Following a deployment's registry stages without a restart.

:class:`ModelWatcher` follows the registry in a daemon thread: ``LISTEN`` on the stage
channel, with a poll every ``inference.registry_poll_s`` as the fallback. When the
deployment's (production, shadow) versions change it loads the new set in the background
(``inference.switcher.ModelLoader``) while the old one keeps serving, then offers it
(:meth:`ModelWatcher.take_ready`); the owner switches (``InferencePipeline.swap``). A failed
load keeps the old models, raises ``binaudit_model_swap_failures_total`` and is retried on
the next notification or after ``RETRY_POLLS`` polls.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine

from core.registry import DeploymentModels, StageListener
from core.settings import DatabaseSettings
from inference.switcher import (
    ModelLoader,
    ModelLoadError,
    ModelSet,
    RegistryUnavailable,
    read_registry,
    registry_engine,
)

log = logging.getLogger(__name__)

# A failed load is retried after this many polls without a notification.
RETRY_POLLS = 3
# The listener's wait is sliced so that the watcher notices a stop request; no shorter than
# the listener's own pause after a lost connection (5 s), so an outage is not logged hotter.
_WAKE_S = 5.0


class ModelWatcher:
    """Follows the deployment's stages in a daemon thread and prepares the next model set.

    ``with ModelWatcher(...) as watcher:`` starts it; each turn of the owner's loop calls
    :meth:`take_ready` (non-blocking) and switches to the set it returns, if any. The watcher
    assumes the owner switches to every set it takes.
    """

    def __init__(self, loader: ModelLoader, db: DatabaseSettings, current: ModelSet, *,
                 poll_s: float, retry_polls: int = RETRY_POLLS) -> None:
        self.loader = loader
        self.db = db
        self.poll_s = poll_s
        self.retry_polls = retry_polls
        self._current = current
        self._ready: ModelSet | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: tuple[str | None, str | None] | None = None  # versions that failed
        self._polls_since_failure = 0
        self.checks = 0  # registry reads so far (tests wait on it)

    @property
    def deployment(self) -> str:
        return self.loader.deployment

    def __enter__(self) -> ModelWatcher:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            # The thread notices the stop within one slice of its wait, or after a load in
            # progress; it is a daemon and offers nothing anyone takes, so it is not waited
            # for long (a stuck download never holds the process).
            self._thread.join(timeout=1.0)

    def take_ready(self) -> ModelSet | None:
        """The next set to switch to, once (None: keep running what runs)."""
        with self._lock:
            ready, self._ready = self._ready, None
            return ready

    def newest(self, pending: ModelSet | None) -> ModelSet | None:
        """``pending`` (a set taken but not switched to yet), or a newer set replacing it."""
        ready = self.take_ready()
        if ready is None:
            return pending
        if pending is not None:
            log.info("deployment %s: %s replaces %s before the switch", self.deployment,
                     ready.describe(), pending.describe())
        return ready

    def _run(self) -> None:
        engine = registry_engine(self.db)
        try:
            with StageListener(self.db) as listener:
                listener.wait(0)  # LISTEN before the first read: no promotion falls between
                next_poll = 0.0
                while not self._stop.is_set():
                    notified = False
                    if time.monotonic() < next_poll:
                        notified = self.deployment in listener.wait(
                            min(_WAKE_S, next_poll - time.monotonic()))
                        if self._stop.is_set():
                            break
                    if notified or time.monotonic() >= next_poll:
                        next_poll = time.monotonic() + self.poll_s
                        try:
                            self.check(engine, notified=notified)
                        except Exception:  # noqa: BLE001 - a bug here must not end the watch
                            log.exception("model watcher of %s: unexpected error; the running "
                                          "models stay, next check in %.0fs", self.deployment,
                                          self.poll_s)
        finally:
            engine.dispose()

    def check(self, engine: Engine, *, notified: bool) -> None:
        """Read the registry once and, when it names other versions, prepare them."""
        try:
            models = read_registry(engine, self.deployment)
        except RegistryUnavailable as exc:
            log.warning("registry unreachable (%s); the running models stay", exc)
            return
        finally:
            self.checks += 1
        want = models.versions()
        current = self._current
        if want == current.wanted and not current.shadow_failed:
            self._failed = None
            return
        if models.production is None:
            log.warning("deployment %s has no production version in the registry; %s keeps "
                        "running", self.deployment, current.describe())
            return
        if self._failed == want and not notified:
            self._polls_since_failure += 1
            if self._polls_since_failure < self.retry_polls:
                return
        self._load(models, want)

    def _load(self, models: DeploymentModels, want: tuple[str | None, str | None]) -> None:
        current = self._current
        log.info("deployment %s: registry names production %s, shadow %s; loading them while "
                 "%s keeps running", self.deployment, want[0], want[1] or "none",
                 current.describe())
        try:
            ready = self.loader.build(models, reuse=current)
        except ModelLoadError as exc:
            self._failed, self._polls_since_failure = want, 0
            self.loader.metrics.model_swap_failures.labels(self.deployment, "production").inc()
            log.error("ALERT model switch of %s failed: %s; %s keeps running (retried on the "
                      "next promotion notice or in %d polls)", self.deployment, exc,
                      current.describe(), self.retry_polls)
            return
        self._failed, self._polls_since_failure = (want, 0) if ready.shadow_failed else (None, 0)
        if ready.versions == current.versions and ready.wanted == current.wanted \
                and ready.shadow_failed == current.shadow_failed:
            return  # a retry that changed nothing (the shadow still fails)
        self._current = ready
        with self._lock:
            self._ready = ready
        log.info("deployment %s: %s ready to switch to", self.deployment, ready.describe())

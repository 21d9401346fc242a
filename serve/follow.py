"""The endpoint's side of a hot swap: switch the pipeline to each model set the registry
watcher prepared, on the event loop, without blocking it.

New requests wait on ``gate`` (an ``asyncio.Event`` the server checks right before each
``submit``) while ``InferencePipeline.swap`` runs in a thread: requests in flight finish on
the old model, then the new one takes the next request. ``/ping`` and ``/metrics`` never
wait. A switch that fails keeps the old model serving, counts
``binaudit_model_swap_failures_total`` and is tried again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from inference.pipeline import InferencePipeline
from inference.switcher import ModelSet
from serve.models import ServeModels

log = logging.getLogger(__name__)

# How often the event loop asks the registry watcher for a prepared model set.
FOLLOW_TICK_S = 0.2
# A switch waits this long for the requests in flight (new ones wait meanwhile); past it the
# old model keeps serving and the switch is tried again a moment later.
SWAP_TIMEOUT_S = 10.0
SWAP_RETRY_S = 1.0


class RegistryFollower:
    def __init__(self, models: ServeModels, pipeline: InferencePipeline, gate: asyncio.Event,
                 *, stopping: Callable[[], bool]) -> None:
        self.models = models
        self.pipeline = pipeline
        self.gate = gate
        self.stopping = stopping

    async def run(self) -> None:
        """Switch to each set the watcher prepares, until the server stops."""
        while not self.stopping():
            await asyncio.sleep(FOLLOW_TICK_S)
            new = self.models.next_set()
            if new is None or self.stopping():
                continue
            if new.production is self.models.running.production:
                self.models.switched(new)  # only the shadow changed: nothing runs differently
            elif not await self.switch(new):
                await asyncio.sleep(SWAP_RETRY_S)

    async def switch(self, new: ModelSet) -> bool:
        self.gate.clear()
        try:
            switched = await asyncio.to_thread(self.pipeline.swap, new, timeout=SWAP_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - the old model keeps serving; alert and retry
            log.exception("ALERT switching to %s failed; %s keeps serving", new.describe(),
                          self.models.running.describe())
            self.models.metrics.model_swap_failures.labels(self.models.deployment,
                                                           "production").inc()
            return False
        finally:
            self.gate.set()
        if switched:
            self.models.switched(new)
        else:
            log.warning("requests in flight did not finish within %.0fs: %s keeps serving, "
                        "the switch to %s is retried", SWAP_TIMEOUT_S,
                        self.models.running.describe(), new.describe())
        return switched

"""Which models a process runs, and switching them without a restart.

:func:`load_initial` decides at start-up. Pinned (``inference.follow_registry`` off): the
configured ``inference.model``, nothing else. Following the registry: the deployment's
production version (``core.registry``), downloaded and checksum-verified into
``inference.artifact_cache_dir`` when it lives on S3; a deployment without one yet gets the
configured model, registered and made production (the first process records what it runs).
The deployment's shadow version runs next to it when ``inference.run_shadow`` allows and it
reads the same pixels as production (same input size, normalisation and decode policy): the
shadow runs on production's decoded batches.

Loading a model is always the same steps: resolve the artifact, open it on its backend
(``inference.autotune.open_counter``, autotune cache included), warm it up and verify it (a
forward pass of a zero batch gives finite probabilities summing to 1 per row).

Following promotions without a restart is ``inference/watcher.py`` (``ModelWatcher``), which
builds each new set with this module's :class:`ModelLoader`.
"""

from __future__ import annotations

import logging
import math
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from core.artifacts import is_s3, resolve, tree_sha256
from core.db import make_engine
from core.model.card import ArtifactError, DecisionPolicy, ModelCard
from core.registry import (
    DeploymentModels,
    ModelRef,
    bootstrap_production,
    deployment_models,
    register_version,
)
from core.settings import DatabaseSettings, InferenceSettings, S3Settings
from inference.autotune import open_counter
from inference.compare import policy_for
from inference.counter import BinCounter
from inference.metrics import PipelineMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")

# The card fields the Preprocessor reads: a shadow must agree on all of them.
PREPROCESSING_FIELDS = ("input_size", "mean", "std", "decode")


class ModelLoadError(ArtifactError):
    """A model could not be resolved, loaded or verified (an ArtifactError: the CLI's
    message for a broken artifact covers it)."""


class RegistryUnavailable(RuntimeError):
    """The registry (Postgres) cannot be reached."""


@dataclass(frozen=True)
class ModelSet:
    """The models one process runs: production, an optional shadow, and their policies."""

    deployment: str
    production: BinCounter
    policy: DecisionPolicy
    shadow: BinCounter | None = None
    shadow_policy: DecisionPolicy | None = None
    # The registry's (production, shadow) versions this set answers; for a pinned set,
    # (its version, None).
    wanted: tuple[str | None, str | None] = (None, None)
    follows_registry: bool = False
    # The deployment's shadow could not be loaded (retried); an incompatible one is not.
    shadow_failed: bool = False

    @property
    def versions(self) -> tuple[str, str | None]:
        return self.production.version, self.shadow.version if self.shadow else None

    def describe(self) -> str:
        shadow = f" (shadow {self.shadow.version})" if self.shadow else ""
        return f"production {self.production.version}{shadow}"

    def policy_of(self, version: str) -> DecisionPolicy | None:
        """The decision policy of ``version`` if it is one of this set's models."""
        if version == self.production.version:
            return self.policy
        if self.shadow is not None and version == self.shadow.version:
            return self.shadow_policy
        return None

    @classmethod
    def pinned(cls, counter: BinCounter, *, deployment: str,
               inference: InferenceSettings) -> ModelSet:
        """A set of one configured model that never follows the registry."""
        return cls(deployment=deployment, production=counter,
                   policy=policy_for(counter.card, inference), wanted=(counter.version, None))


class JudgedVersions:
    """How to judge an answer by the version that produced it: each version that ran in this
    process, with its decision policy and supported counts (the newest ``keep``; an answer in
    flight is never older than the set before the running one)."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._known: OrderedDict[str, tuple[DecisionPolicy, list[int]]] = OrderedDict()

    def remember(self, models: ModelSet) -> None:
        for counter in (models.production, models.shadow):
            policy = models.policy_of(counter.version) if counter is not None else None
            if counter is None or policy is None:
                continue
            self._known[counter.version] = (policy, list(counter.card.class_counts))
            self._known.move_to_end(counter.version)
        while len(self._known) > self.keep:
            self._known.popitem(last=False)

    def judging(self, version: str | None, running: ModelSet
                ) -> tuple[str, DecisionPolicy, list[int]]:
        """(version, policy, supported counts) for an answer of ``version`` (None: an answer
        that carries no version is the running production's)."""
        version = version or running.production.version
        policy, counts = self._known[version]
        return version, policy, counts


# ---- loading one model ----------------------------------------------------------------------

def verify(counter: BinCounter) -> None:
    """A zero batch gives, per row, finite probabilities over the card's classes summing to 1."""
    card = counter.card
    if not card.class_counts:
        raise ModelLoadError(f"{card.version}: the card names no classes")
    side = card.input_size
    for row in counter.infer(torch.zeros(2, 3, side, side)):
        probs = list(row.probabilities.values())
        if len(probs) != len(card.class_counts) or not all(math.isfinite(p) for p in probs) \
                or abs(sum(probs) - 1.0) > 1e-3:
            raise ModelLoadError(f"{card.version}: a zero batch gives probabilities {probs}, "
                                 "not a distribution over the card's classes")


def load_counter(inference: InferenceSettings, path: Path) -> BinCounter:
    """Open ``path`` on its backend (autotuned or pinned), warm it up and verify it."""
    try:
        counter = open_counter(inference, path)
        warm = counter.warm_up()
        verify(counter)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a broken artifact raises: a failed load
        raise ModelLoadError(f"{path}: {type(exc).__name__}: {exc}") from exc
    log.info("model %s loaded, verified and warmed up in %.2fs (%s)", counter.version, warm,
             counter.backend_name)
    return counter


def preprocessing_differences(production: ModelCard, shadow: ModelCard) -> list[str]:
    """The preprocessing fields on which two cards disagree (empty: same pixels)."""
    return [f"{name} {getattr(shadow, name)!r} != {getattr(production, name)!r}"
            for name in PREPROCESSING_FIELDS if getattr(shadow, name) != getattr(production, name)]


class ModelLoader:
    """Turns registry references into loaded, verified counters and whole model sets."""

    def __init__(self, inference: InferenceSettings, *, s3: S3Settings, deployment: str,
                 metrics: PipelineMetrics | None = None) -> None:
        self.inference = inference
        self.s3 = s3
        self.deployment = deployment
        self.metrics = metrics or PipelineMetrics.disabled()

    def artifact(self, uri: str, sha256: str | None) -> Path:
        try:
            return resolve(uri, sha256=sha256, cache_dir=self.inference.artifact_cache_dir,
                           s3=self.s3)
        except Exception as exc:  # noqa: BLE001 - missing, mismatched, S3 denied/unreachable
            raise ModelLoadError(f"artifact {uri}: {type(exc).__name__}: {exc}") from exc

    def load_ref(self, ref: ModelRef) -> BinCounter:
        counter = load_counter(self.inference, self.artifact(ref.artifact_uri, ref.sha256))
        if counter.version != ref.version:
            raise ModelLoadError(f"{ref.artifact_uri} holds version {counter.version}, the "
                                 f"registry says {ref.version}")
        return counter

    def build(self, models: DeploymentModels, *, reuse: ModelSet | None = None) -> ModelSet:
        """The set the registry names; counters already loaded in ``reuse`` are reused (a
        promoted shadow becomes production without a second load). Raises ModelLoadError when
        production cannot be loaded; a shadow that cannot is left out (and counted)."""
        if models.production is None:
            raise ModelLoadError(f"deployment {self.deployment} has no production version")
        loaded = {c.version: c for c in (reuse.production, reuse.shadow) if c} if reuse else {}
        production = loaded.get(models.production.version) or self.load_ref(models.production)
        shadow, failed = None, False
        ref = models.shadow
        if ref is not None and self.inference.run_shadow:
            try:
                candidate = loaded.get(ref.version) or self.load_ref(ref)
            except ModelLoadError as exc:
                failed = True
                self.metrics.model_swap_failures.labels(self.deployment, "shadow").inc()
                log.error("ALERT shadow %s of %s cannot be loaded (%s): running production "
                          "alone; retried later", ref.version, self.deployment, exc)
            else:
                shadow = self._compatible(production, candidate)
        return ModelSet(
            deployment=self.deployment, production=production,
            policy=policy_for(production.card, self.inference), shadow=shadow,
            shadow_policy=policy_for(shadow.card, self.inference) if shadow else None,
            wanted=models.versions(), follows_registry=True, shadow_failed=failed)

    def _compatible(self, production: BinCounter, shadow: BinCounter) -> BinCounter | None:
        problems = preprocessing_differences(production.card, shadow.card)
        if not problems:
            return shadow
        self.metrics.shadow_incompatible.labels(self.deployment).inc()
        log.error("shadow %s of %s is not run: it reads other pixels than production %s "
                  "(%s); it runs on production's decoded batches", shadow.version,
                  self.deployment, production.version, "; ".join(problems))
        return None


# ---- start-up -------------------------------------------------------------------------------

def registry_engine(db: DatabaseSettings) -> Engine:
    """A small engine for registry reads (a few queries a minute)."""
    return make_engine(db, poolclass=NullPool, connect_args={"connect_timeout": 5})


def read_registry(engine: Engine, deployment: str) -> DeploymentModels:
    try:
        with engine.connect() as conn:
            return deployment_models(conn, deployment)
    except DBAPIError as exc:
        raise RegistryUnavailable(str(exc.orig).strip()) from exc


def record_version(engine: Engine, counter: BinCounter, *, artifact_uri: str,
                   sha256: str | None, deployment: str | None = None,
                   actor: str = "binaudit") -> None:
    """Register ``counter``'s version (idempotent) and, given a deployment without a
    production version, make it production (the first process records what it runs)."""
    card = counter.card
    try:
        with engine.begin() as conn:
            register_version(conn, version=card.version, architecture=card.architecture,
                             artifact_uri=artifact_uri, card=card.model_dump(mode="json"),
                             metrics=dict(card.metrics), sha256=sha256)
            if deployment is not None and bootstrap_production(
                    conn, deployment=deployment, version=card.version, actor=actor):
                log.info("deployment %s had no production version: %s recorded as production",
                         deployment, card.version)
    except DBAPIError as exc:
        raise RegistryUnavailable(str(exc.orig).strip()) from exc


def configured_uri(inference: InferenceSettings, path: Path) -> str:
    """How the configured model is named in the registry: its S3 URI, else its full path."""
    return inference.model if is_s3(inference.model) else str(path.resolve())


def default_actor(front_end: str) -> str:
    return f"{front_end}@{socket.gethostname()}"


def retrying(step: Callable[[], T], on_unavailable: Callable[[RegistryUnavailable], None] | None
              ) -> T:
    """``step()``, called again after ``on_unavailable`` (the caller's backoff) for as long
    as the registry is down; without ``on_unavailable`` the outage is raised."""
    while True:
        try:
            return step()
        except RegistryUnavailable as exc:
            if on_unavailable is None:
                raise
            on_unavailable(exc)


def load_initial(inference: InferenceSettings, *, db: DatabaseSettings, s3: S3Settings,
                 deployment: str, metrics: PipelineMetrics | None = None,
                 actor: str | None = None,
                 on_unavailable: Callable[[RegistryUnavailable], None] | None = None
                 ) -> ModelSet:
    """The models to start with (see the module's docstring). Raises ModelLoadError when
    production cannot be loaded; while Postgres is down, ``on_unavailable`` is called (it
    waits) and the registry step retried (without it, RegistryUnavailable is raised)."""
    loader = ModelLoader(inference, s3=s3, deployment=deployment, metrics=metrics)
    actor = actor or default_actor("binaudit")
    engine = registry_engine(db)
    try:
        def configured(bootstrap: str | None) -> BinCounter:
            path = loader.artifact(inference.model, None)
            counter = load_counter(inference, path)
            checksum = tree_sha256(path)
            retrying(lambda: record_version(
                engine, counter, artifact_uri=configured_uri(inference, path), sha256=checksum,
                deployment=bootstrap, actor=actor), on_unavailable)
            return counter

        if not inference.follow_registry:
            return ModelSet.pinned(configured(None), deployment=deployment, inference=inference)
        models = retrying(lambda: read_registry(engine, deployment), on_unavailable)
        if models.production is not None:
            return loader.build(models)
        counter = configured(deployment)
        models = retrying(lambda: read_registry(engine, deployment), on_unavailable)
        # Another process may have bootstrapped first: then its choice runs here too.
        return loader.build(models, reuse=ModelSet.pinned(counter, deployment=deployment,
                                                          inference=inference))
    finally:
        engine.dispose()

"""Model sets without Kafka: loading and verifying, the registry at start-up (real Postgres and
S3), the watcher's switch and its failures, and the pipeline's swap and shadow on real images
with real (untrained) artifacts."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text

from core.artifacts import tree_sha256, upload
from core.model.card import CARD_FILE, MODEL_FILE, read_card
from core.model.preprocess import ImageLimits, Preprocessor
from core.settings import InferenceSettings, Settings
from inference.metrics import PipelineMetrics
from inference.pipeline import InferencePipeline, Outcome, PipelineConfig, WorkItem
from inference.shadow import ShadowBatch
from inference.switcher import (
    ModelLoader,
    ModelLoadError,
    ModelSet,
    load_counter,
    load_initial,
    preprocessing_differences,
)
from inference.watcher import ModelWatcher
from tests.conftest import ArtifactFactory, unique, wait_until
from tests.registry_fixtures import promote, register

BATCH = 4


@pytest.fixture
def inference(tmp_path: Path) -> InferenceSettings:
    return InferenceSettings(backend="eager", max_batch_size=BATCH, device="cpu",
                             artifact_cache_dir=tmp_path / "artifacts",
                             inference_cache_dir=tmp_path / "inference", registry_poll_s=0.5,
                             artificial_delay_s=0.0)


@pytest.fixture
def artifact(model_artifact_factory: ArtifactFactory) -> Callable[..., Path]:
    """A fresh artifact under a version of its own (the registry outlives test sessions)."""
    def make(prefix: str = "sw", **kwargs: Any) -> Path:
        return model_artifact_factory(unique(prefix), **kwargs)
    return make


def _images(sample_dir: Path, n: int) -> list[bytes]:
    return [p.read_bytes() for p in sorted((sample_dir / "images").glob("*.jpg"))[:n]]


def _metric(metrics: PipelineMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# ---- pure parts --------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "differs"), [
    ({}, []), ({"input_size": 128}, ["input_size"]), ({"mean": (0.5, 0.5, 0.5)}, ["mean"]),
    ({"std": (0.2, 0.2, 0.2)}, ["std"]), ({"decode": "draft"}, ["decode"]),
    ({"version": "other", "tta": "hflip", "class_counts": [0, 1]}, []),
])
def test_a_shadow_must_read_the_same_pixels(artifact: Callable[..., Path],
                                            change: dict[str, Any], differs: list[str]) -> None:
    card = read_card(artifact())
    found = preprocessing_differences(card, card.model_copy(update=change))
    assert [d.split()[0] for d in found] == differs


def test_load_verifies_a_model_and_refuses_one_that_outputs_nan(
        artifact: Callable[..., Path], inference: InferenceSettings) -> None:
    good = artifact()
    assert load_counter(inference, good).version == read_card(good).version

    broken = artifact("nan")
    state = torch.load(broken / MODEL_FILE, weights_only=True)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in state.items()}
    torch.save(state, broken / MODEL_FILE)
    with pytest.raises(ModelLoadError, match="not a distribution"):
        load_counter(inference, broken)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_counter(inference, good.parent / "missing")


# ---- start-up against the registry -------------------------------------------------------------

def test_pinned_runs_the_configured_model_and_sets_no_stage(
        services: Settings, db_engine: Engine, artifact: Callable[..., Path],
        inference: InferenceSettings) -> None:
    path, deployment = artifact(), unique("dep")
    models = load_initial(inference.model_copy(update={"model": str(path),
                                                       "follow_registry": False}),
                          db=services.db, s3=services.s3, deployment=deployment)
    assert models.versions == (read_card(path).version, None) and not models.follows_registry
    with db_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM model_stages WHERE deployment=:d"),
                            {"d": deployment}).scalar_one() == 0
        assert conn.execute(text("SELECT sha256 FROM model_versions WHERE version=:v"),
                            {"v": models.production.version}).scalar_one() == tree_sha256(path)


def test_a_new_deployment_records_its_configured_model_then_the_registry_wins(
        services: Settings, db_engine: Engine, artifact: Callable[..., Path],
        inference: InferenceSettings) -> None:
    a, b, deployment = artifact("a"), artifact("b"), unique("dep")
    first = load_initial(inference.model_copy(update={"model": str(a)}), db=services.db,
                         s3=services.s3, deployment=deployment)
    version_a = read_card(a).version
    assert first.versions == (version_a, None) and first.wanted == (version_a, None)
    with db_engine.connect() as conn:
        history = conn.execute(text(
            "SELECT version, from_stage, to_stage, reason FROM model_stage_history "
            "WHERE deployment=:d"), {"d": deployment}).all()
    assert [(h.version, h.from_stage, h.to_stage) for h in history] == [
        (version_a, None, "production")]
    assert history[0].reason.startswith("bootstrap")

    # A second process configured with another model runs what the registry says.
    second = load_initial(inference.model_copy(update={"model": str(b)}), db=services.db,
                          s3=services.s3, deployment=deployment)
    assert second.versions == (version_a, None)


def test_an_s3_artifact_is_downloaded_verified_and_cached(
        services: Settings, db_engine: Engine, artifact: Callable[..., Path],
        inference: InferenceSettings, bucket_factory: Callable[..., str]) -> None:
    path, deployment = artifact(), unique("dep")
    uri = f"s3://{bucket_factory()}/models/{read_card(path).version}/"
    checksum = upload(path, uri, services.s3)
    version = register(db_engine, path, uri=uri, sha256=checksum)
    promote(db_engine, deployment, version, "production")

    models = load_initial(inference, db=services.db, s3=services.s3, deployment=deployment)
    assert models.versions == (version, None)
    assert (inference.artifact_cache_dir / checksum / CARD_FILE).is_file()

    with db_engine.begin() as conn:  # the registry's checksum no longer matches the object
        conn.execute(text("UPDATE model_versions SET sha256=:s WHERE version=:v"),
                     {"s": "0" * 64, "v": version})
    with pytest.raises(ModelLoadError, match="sha256"):
        load_initial(inference, db=services.db, s3=services.s3, deployment=deployment)


def test_a_shadow_runs_only_when_allowed_and_reading_the_same_pixels(
        services: Settings, db_engine: Engine, artifact: Callable[..., Path],
        inference: InferenceSettings) -> None:
    prod, same, other = artifact("p"), artifact("s", seed=1), artifact("o", input_size=128)
    deployment = unique("dep")
    promote(db_engine, deployment, register(db_engine, prod), "production")
    promote(db_engine, deployment, register(db_engine, same), "shadow")
    metrics = PipelineMetrics(CollectorRegistry())

    models = load_initial(inference, db=services.db, s3=services.s3, deployment=deployment,
                          metrics=metrics)
    assert models.versions == (read_card(prod).version, read_card(same).version)
    assert models.shadow_policy is not None
    off = load_initial(inference.model_copy(update={"run_shadow": False}), db=services.db,
                       s3=services.s3, deployment=deployment)
    assert off.shadow is None and off.wanted == models.wanted

    promote(db_engine, deployment, register(db_engine, other), "shadow")
    models = load_initial(inference, db=services.db, s3=services.s3, deployment=deployment,
                          metrics=metrics)
    assert models.shadow is None and not models.shadow_failed
    assert _metric(metrics, "binaudit_shadow_incompatible_total", deployment=deployment) == 1


# ---- the watcher -------------------------------------------------------------------------------

@pytest.fixture
def watched(services: Settings, db_engine: Engine, artifact: Callable[..., Path],
            inference: InferenceSettings) -> Iterator[tuple[str, ModelSet, ModelWatcher]]:
    """A deployment running a production and a shadow, followed by a started watcher."""
    deployment = unique("dep")
    promote(db_engine, deployment, register(db_engine, artifact("p")), "production")
    promote(db_engine, deployment, register(db_engine, artifact("s", seed=1)), "shadow")
    metrics = PipelineMetrics(CollectorRegistry())
    models = load_initial(inference, db=services.db, s3=services.s3, deployment=deployment,
                          metrics=metrics)
    loader = ModelLoader(inference, s3=services.s3, deployment=deployment, metrics=metrics)
    with ModelWatcher(loader, services.db, models, poll_s=inference.registry_poll_s) as w:
        yield deployment, models, w


def _ready(watcher: ModelWatcher, timeout: float = 30) -> ModelSet:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (ready := watcher.take_ready()) is not None:
            return ready
        time.sleep(0.1)
    raise AssertionError(f"no model set ready to switch to within {timeout}s")


def test_a_promoted_shadow_becomes_production_without_a_second_load(
        db_engine: Engine, watched: tuple[str, ModelSet, ModelWatcher]) -> None:
    deployment, models, watcher = watched
    assert models.shadow is not None
    promote(db_engine, deployment, models.shadow.version, "production")
    ready = _ready(watcher)
    assert ready.production is models.shadow  # the loaded shadow, reused
    assert ready.shadow is None and ready.wanted == (models.shadow.version, None)
    assert ready.policy_of(models.shadow.version) is ready.policy
    assert watcher.take_ready() is None  # offered once


def test_a_version_that_cannot_load_keeps_the_old_set_and_is_not_retried_hot(
        db_engine: Engine, watched: tuple[str, ModelSet, ModelWatcher],
        artifact: Callable[..., Path]) -> None:
    deployment, models, watcher = watched
    metrics = watcher.loader.metrics
    broken = artifact("broken")
    promote(db_engine, deployment, register(db_engine, broken, sha256="0" * 64), "production")
    wait_until(lambda: _metric(metrics, "binaudit_model_swap_failures_total",
                               deployment=deployment, role="production") >= 1, 30,
               "the failed load to be counted")
    checks = watcher.checks
    time.sleep(3.0)  # six polls of 0.5 s: one retry every RETRY_POLLS polls at most
    failures = _metric(metrics, "binaudit_model_swap_failures_total", deployment=deployment,
                       role="production")
    assert watcher.checks - checks >= 4 and 2 <= failures <= 4
    assert watcher.take_ready() is None

    good = artifact("good")
    promote(db_engine, deployment, register(db_engine, good), "production")
    ready = _ready(watcher)
    assert ready.production.version == read_card(good).version
    assert ready.shadow is models.shadow  # the running shadow stays, reused


# ---- the pipeline: swap and shadow ----------------------------------------------------------

def _pipeline(models: ModelSet, outcomes: queue.Queue[Outcome], *, delay: float = 0.0,
              on_shadow: Callable[[ShadowBatch], None] | None = None, queue_batches: int = 8,
              metrics: PipelineMetrics | None = None) -> InferencePipeline:
    pre = Preprocessor(models.production.card, ImageLimits(8 << 20, 40_000_000))
    config = PipelineConfig(max_batch_size=BATCH, max_wait_s=0.05, decode_workers=2,
                            artificial_delay_s=delay)
    return InferencePipeline(models.production, pre, config, outcomes.put, metrics=metrics,
                             shadow=models.shadow, on_shadow=on_shadow,
                             shadow_queue_batches=queue_batches)


def _sets(inference: InferenceSettings, artifact: Callable[..., Path]
          ) -> tuple[ModelSet, ModelSet]:
    a = ModelSet.pinned(load_counter(inference, artifact("a")), deployment="d",
                        inference=inference)
    b_counter = load_counter(inference, artifact("b", seed=1))
    b = ModelSet(deployment="d", production=b_counter, policy=a.policy,
                 shadow=a.production, shadow_policy=a.policy)
    return a, b


def test_swap_finishes_in_flight_work_with_the_old_model_and_holds_new_submissions(
        inference: InferenceSettings, artifact: Callable[..., Path], sample_dir: Path) -> None:
    a, b = _sets(inference, artifact)
    images = _images(sample_dir, 8)
    outcomes: queue.Queue[Outcome] = queue.Queue()
    shadows: queue.Queue[ShadowBatch] = queue.Queue()
    with _pipeline(a, outcomes, delay=0.5, on_shadow=shadows.put) as pipeline:
        for i in range(BATCH):
            pipeline.submit(WorkItem(None, None, image=images[i], context=i))

        def late() -> None:  # another thread submits while the swap drains
            time.sleep(0.2)
            pipeline.submit(WorkItem(None, None, image=images[BATCH], context="late"))
        thread = threading.Thread(target=late)
        thread.start()
        assert pipeline.swap(b, timeout=30)
        for i in range(BATCH + 1, 8):
            pipeline.submit(WorkItem(None, None, image=images[i], context=i))
        thread.join()
        got = {o.item.context: o for o in (outcomes.get(timeout=30) for _ in range(8))}
        assert pipeline.drain_shadow(timeout=30)
    old, new = a.production.version, b.production.version
    assert [got[i].model_version for i in range(BATCH)] == [old] * BATCH
    assert [got[i].model_version for i in ("late", 5, 6, 7)] == [new] * 4
    assert all(o.prediction is not None for o in got.values())
    # The shadow (the old production, now shadow of the new one) ran on the new batches only.
    batches = [shadows.get_nowait() for _ in range(shadows.qsize())]
    assert {s.model_version for s in batches} == {old}
    assert {s.production_version for s in batches} == {new}
    assert sorted(map(str, (i.context for s in batches for i in s.items))) == sorted(
        map(str, ("late", 5, 6, 7)))
    assert all(len(s.predictions or ()) == len(s.items) for s in batches)


def test_a_full_shadow_queue_skips_batches_and_production_does_not_wait(
        inference: InferenceSettings, artifact: Callable[..., Path], sample_dir: Path) -> None:
    _, b = _sets(inference, artifact)
    images = _images(sample_dir, 16)
    outcomes: queue.Queue[Outcome] = queue.Queue()
    release = threading.Event()
    delivered: list[ShadowBatch] = []

    def stuck_consumer(batch: ShadowBatch) -> None:  # the shadow's consumer stalls
        release.wait(60)
        delivered.append(batch)

    metrics = PipelineMetrics(CollectorRegistry())
    with _pipeline(b, outcomes, on_shadow=stuck_consumer, queue_batches=1,
                   metrics=metrics) as pipeline:
        for i, image in enumerate(images):
            pipeline.submit(WorkItem(None, None, image=image, context=i))
        got = [outcomes.get(timeout=60) for _ in images]  # all while the shadow is stuck
        skipped = _metric(metrics, "binaudit_shadow_skipped_total")
        release.set()
        assert pipeline.drain_shadow(timeout=30)
    assert all(o.prediction is not None for o in got)
    batches = _metric(metrics, "binaudit_batch_size_count")
    assert skipped >= 1 and len(delivered) + skipped == batches

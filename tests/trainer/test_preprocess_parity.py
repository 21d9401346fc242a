"""One preprocessing path: the trainer's tensors are the worker's tensors, and `train evaluate`,
`replay` and `serve` give the same prediction for every real sample image."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
from sqlalchemy import create_engine, text

from core.model.card import ModelCard
from core.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, ImageLimits, Preprocessor
from core.settings import Settings
from core.timewindow import WindowRequest
from replay.backtest import Replay, ReplayOptions
from robots.publisher import EventPlan, PublishOptions, publish
from serve.server import ModelServer
from trainer.data import LabeledId, build_manifest, write_manifest
from trainer.datasets import CountingImages, Decode
from trainer.engine import Preprocess
from trainer.evaluate import evaluate_artifact

LIMITS = ImageLimits(max_bytes=8 * 1024 * 1024, max_pixels=40_000_000)


def _sample_images(sample_dir: Path) -> list[tuple[str, int]]:
    with open(sample_dir / "labels.csv", newline="") as fh:
        return [(row["image"], int(row["expected_quantity"])) for row in csv.DictReader(fh)]


def _card(decode: str, size: int = 224) -> ModelCard:
    return ModelCard(version="parity", architecture="efficientnet_lite0", class_counts=[1, 2],
                     input_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, decode=decode,
                     created_at=datetime.now(UTC), code_version="test")


@pytest.mark.parametrize("decode", ["full", "draft"])
def test_trainer_evaluation_tensors_equal_the_workers(sample_dir: Path, decode: str) -> None:
    """Every real sample JPEG: the trainer's dataset + device normalisation produce exactly the
    tensor the worker's Preprocessor produces from the same bytes."""
    card = _card(decode)
    images = _sample_images(sample_dir)
    dataset = CountingImages([(str(sample_dir / rel), 0) for rel, _ in images],
                             Decode(card.input_size, card.decode))
    to_device = Preprocess(torch.device("cpu"), card.mean, card.std, channels_last=False)
    worker = Preprocessor(card, LIMITS)
    for i, (rel, _) in enumerate(images):
        trainer_tensor = to_device(dataset[i][0][None])[0]
        worker_tensor = worker((sample_dir / rel).read_bytes())
        assert torch.equal(trainer_tensor, worker_tensor), rel


def test_full_and_draft_decodes_differ_on_real_jpegs(sample_dir: Path) -> None:
    """Why the policy lives in the model card: the two decodes are different pixels."""
    full, draft = Preprocessor(_card("full"), LIMITS), Preprocessor(_card("draft"), LIMITS)
    differing = sum(not torch.equal(full.uint8(data), draft.uint8(data))
                    for data in ((sample_dir / rel).read_bytes()
                                 for rel, _ in _sample_images(sample_dir)[:60]))
    assert differing > 0


# ---- evaluate vs replay vs serve, against the services ----------------------------------------

N_IMAGES = 40


@pytest.fixture(scope="module")
def own_db(fresh_database: Callable[..., Any]) -> Iterator[Settings]:
    with fresh_database("binaudit_parity") as settings:
        yield settings


def _evaluate(artifact: Path, sample_dir: Path, tmp_path: Path) -> dict[str, tuple[int, float]]:
    labelled = [LabeledId(id=Path(rel).stem, count=count)
                for rel, count in _sample_images(sample_dir) if 1 <= count <= 5][:N_IMAGES]
    manifest = build_manifest(labelled, sample_dir, classes=[1, 2, 3, 4, 5], seed=0,
                              fractions=(0.0, 0.0, 1.0))
    write_manifest(manifest, tmp_path / "manifest.json")
    result = evaluate_artifact(artifact, tmp_path / "manifest.json", split="test")
    return {r["id"]: (r["predicted"], r["confidence"]) for r in result["predictions"]}


def _replay(settings: Settings, artifact: Path, topic: str) -> dict[str, tuple[int, float]]:
    options = ReplayOptions(topic=topic, window=WindowRequest(), model_path=artifact,
                            progress=False)
    summary = Replay(settings, options).run()
    engine = create_engine(settings.db.url.get_secret_value())
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT image_uri, predicted_quantity, confidence FROM backtest_results "
                "WHERE run_id = :r"), {"r": summary.run_id}).all()
    finally:
        engine.dispose()
    return {Path(r.image_uri).stem: (r.predicted_quantity, r.confidence) for r in rows}


async def _serve(settings: Settings, images: dict[str, bytes]) -> dict[str, tuple[int, float]]:
    server = ModelServer(settings)
    port = await server.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                async with http.get(f"{url}/ping") as ping:
                    if ping.status == 200:
                        break
                await asyncio.sleep(0.1)
            out = {}
            for ident, body in images.items():
                async with http.post(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "image/jpeg"}) as resp:
                    assert resp.status == 200, await resp.text()
                    answer = await resp.json()
                out[ident] = (int(answer["count"]), float(answer["confidence"]))
            return out
    finally:
        await server.stop()


@pytest.mark.services
def test_evaluate_replay_and_serve_predict_the_same_for_every_image(
        own_db: Settings, topic_factory: Callable[..., str], sample_dir: Path,
        model_artifact_factory: Callable[..., Path], tmp_path: Path) -> None:
    # A draft-decoding card: the policy most likely to be applied in one place and not another.
    artifact = model_artifact_factory("parity-draft", input_size=224, seed=3, decode="draft")
    evaluated = _evaluate(artifact, sample_dir, tmp_path)
    assert len(evaluated) == N_IMAGES

    # The same images as bin events (the publisher keys objects bin-images/<id>.jpg).
    topic = topic_factory(partitions=2)
    settings = own_db.model_copy(update={
        "kafka": own_db.kafka.model_copy(update={"topic": topic}),
        "inference": own_db.inference.model_copy(update={"model": str(artifact),
                                                         "device": "cpu"}),
        "worker": own_db.worker.model_copy(update={"metrics_port": None})})
    source = tmp_path / "subset"
    (source / "images").mkdir(parents=True)
    with open(source / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "expected_quantity"])
        for ident in evaluated:
            rel = f"images/{ident}.jpg"
            (source / rel).write_bytes((sample_dir / rel).read_bytes())
            writer.writerow([rel, 1])
    (source / "metadata").mkdir()
    for ident in evaluated:
        (source / "metadata" / f"{ident}.json").write_bytes(
            (sample_dir / "metadata" / f"{ident}.json").read_bytes())
    sent = publish(settings, PublishOptions(source=source, topic=topic, create_topic=False,
                                            progress=False,
                                            plan=EventPlan(bucket=settings.s3.bucket)))
    assert sent.valid == N_IMAGES
    replayed = _replay(settings, artifact, topic)
    served = asyncio.run(_serve(settings, {i: (source / "images" / f"{i}.jpg").read_bytes()
                                           for i in evaluated}))

    assert replayed.keys() == served.keys() == evaluated.keys()
    for ident, (count, confidence) in evaluated.items():
        assert replayed[ident][0] == served[ident][0] == count, ident
        # Batches differ between the three (sizes, neighbours): equal up to float rounding.
        assert replayed[ident][1] == pytest.approx(confidence, abs=1e-4), ident
        assert served[ident][1] == pytest.approx(confidence, abs=1e-4), ident

"""`binaudit serve` follows the registry: a promotion switches the running endpoint to the new
version without restart while clients keep sending requests (none fails, /ping stays 200,
every answer names the model that produced it, never back), a rollback switches back, and a
version that cannot be loaded leaves the old one serving and raises the alert metric.

Real Postgres (registry, LISTEN/NOTIFY), real artifacts (untrained, seeded: the two versions
answer differently), a real ModelServer on a socket."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine

from core.artifacts import tree_sha256
from core.model.card import read_card
from core.model.preprocess import ImageLimits, Preprocessor
from core.registry import previous_production, register_version, set_stage
from core.settings import InferenceSettings
from inference.compare import Prediction
from inference.counter import BinCounter
from tests.conftest import ArtifactFactory, unique
from tests.serve.harness import ServerFactory, ServerThread
from tests.serve.test_server import metric

pytestmark = pytest.mark.services
# A switch (NOTIFY, load, verify, warm up, drain, switch) within this long of the promotion.
# The poll fallback is set far longer, so a switch in time is the notification's.
SWITCH_WITHIN_S = 45.0
POLL_S = 600.0
CLIENTS = 3


@dataclass
class Answer:
    sent: float
    received: float
    status: int
    version: str | None
    body: dict[str, Any]


@dataclass
class Traffic:
    """Clients sending the same image in a loop, and a /ping prober, until stopped."""

    server: ServerThread
    image: bytes
    answers: list[Answer] = field(default_factory=list)
    pings: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _client(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    r = session.post(f"{self.server.url}/invocations", data=self.image,
                                     headers={"Content-Type": "image/jpeg"}, timeout=60)
                except requests.RequestException as exc:
                    self.errors.append(repr(exc))
                    continue
                body = r.json()
                self.answers.append(Answer(sent, time.monotonic(), r.status_code,
                                           body.get("model_version"), body))

    def _prober(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    self.pings.append(session.get(f"{self.server.url}/ping",
                                                  timeout=5).status_code)
                except requests.RequestException as exc:
                    self.errors.append(f"/ping: {exc!r}")
                time.sleep(0.05)

    def __enter__(self) -> Traffic:
        self.threads = [threading.Thread(target=self._client, daemon=True)
                        for _ in range(CLIENTS)]
        self.threads.append(threading.Thread(target=self._prober, daemon=True))
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def first(self, version: str, *, after: float, timeout: float) -> Answer:
        """The first answer by ``version`` to a request sent after ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [a for a in list(self.answers) if a.version == version and a.sent > after]
            if found:
                return min(found, key=lambda a: a.received)
            time.sleep(0.05)
        seen = {a.version for a in self.answers if a.sent > after}
        raise AssertionError(f"no answer by {version} within {timeout}s (saw {seen})")

    def wait_answers(self, n: int, *, after: float) -> None:
        deadline = time.monotonic() + 60
        while sum(a.sent > after for a in list(self.answers)) < n:
            assert time.monotonic() < deadline, f"fewer than {n} answers in 60s"
            time.sleep(0.05)


@dataclass(frozen=True)
class Deployment:
    name: str
    a: Path  # production at first
    b: Path  # another input size, other weights

    def version(self, path: Path) -> str:
        return read_card(path).version


@pytest.fixture
def deployment(model_artifact_factory: ArtifactFactory, db_engine: Engine) -> Deployment:
    """Two registered versions of a new deployment (fresh versions: the registry outlives
    test sessions, and an artifact under /tmp does not); the first is production."""
    d = Deployment(unique("serve-dep"), model_artifact_factory(unique("swap-a"), seed=1),
                   model_artifact_factory(unique("swap-b"), seed=2, input_size=128))
    with db_engine.begin() as conn:
        for path in (d.a, d.b):
            card = read_card(path)
            register_version(conn, version=card.version, architecture=card.architecture,
                             artifact_uri=str(path), card=card.model_dump(mode="json"),
                             metrics=None, sha256=tree_sha256(path))
        set_stage(conn, deployment=d.name, version=d.version(d.a), to_stage="production",
                  actor="test", reason="the first production")
    return d


@pytest.fixture
def following(server_factory: ServerFactory, deployment: Deployment, tmp_path: Path
              ) -> Callable[[], ServerThread]:
    """A server that follows the deployment's registry stages."""
    def start() -> ServerThread:
        return server_factory(
            kafka={"topic": deployment.name},
            # Slower batches: requests are in flight whenever a switch comes.
            inference={"follow_registry": True, "registry_poll_s": POLL_S,
                       "artifact_cache_dir": tmp_path / "cache", "artificial_delay_s": 0.1})
    return start


def direct(path: Path, image: bytes) -> Prediction:
    """What the version at ``path`` answers for ``image``, without the server."""
    counter = BinCounter.from_artifact(path, "cpu")
    limits = ImageLimits.from_settings(InferenceSettings())
    return counter.infer(Preprocessor(counter.card, limits)(image).unsqueeze(0))[0]


def promote(db_engine: Engine, deployment: str, version: str, reason: str) -> float:
    with db_engine.begin() as conn:
        set_stage(conn, deployment=deployment, version=version, to_stage="production",
                  actor="test", reason=reason)
    return time.monotonic()


def test_promotion_and_rollback_switch_serve_without_restart(
        following: Callable[[], ServerThread], deployment: Deployment, db_engine: Engine,
        sample_dir: Path) -> None:
    name = deployment.name
    a, b = deployment.version(deployment.a), deployment.version(deployment.b)
    image = sorted((sample_dir / "images").glob("*.jpg"))[0].read_bytes()
    want = {a: direct(deployment.a, image), b: direct(deployment.b, image)}
    assert want[a].probabilities != pytest.approx(want[b].probabilities, abs=1e-3)

    st = following()
    with Traffic(st, image) as traffic:
        traffic.wait_answers(5, after=0.0)
        promoted = promote(db_engine, name, b, "hot swap test")
        first_b = traffic.first(b, after=promoted, timeout=SWITCH_WITHIN_S)
        traffic.wait_answers(10, after=first_b.received)
        with db_engine.begin() as conn:
            back = previous_production(conn, name)
        assert back == a
        rolled = promote(db_engine, name, a, "rollback in the hot swap test")
        first_back = traffic.first(a, after=rolled, timeout=SWITCH_WITHIN_S)
        traffic.wait_answers(5, after=first_back.received)

    assert traffic.errors == [], traffic.errors[:5]
    assert traffic.pings and set(traffic.pings) == {200}
    assert {x.status for x in traffic.answers} == {200}, [
        x.body for x in traffic.answers if x.status != 200][:3]
    for x in traffic.answers:  # each answer is the named version's own prediction
        assert x.version in want
        assert x.body["probabilities"] == pytest.approx(want[x.version].probabilities,
                                                        abs=1e-4), x.version
    # Old before the promotion; once B answered, never A again until the rollback; and A
    # only once it answered after the rollback.
    assert {x.version for x in traffic.answers if x.received < promoted} == {a}
    assert {x.version for x in traffic.answers
            if first_b.received < x.sent and x.received < rolled} == {b}
    assert {x.version for x in traffic.answers if x.sent > first_back.received} == {a}
    text = st.metrics()
    assert metric(text, "binaudit_model_swaps_total", deployment=name) == 2
    assert metric(text, "binaudit_model_info", deployment=name, role="production",
                  version=a) == 1
    assert metric(text, "binaudit_model_info", deployment=name, role="production",
                  version=b) == 0
    assert metric(text, "binaudit_model_swap_failures_total", deployment=name,
                  role="production") == 0


def test_a_version_that_cannot_load_keeps_the_old_one_and_raises_the_alert(
        following: Callable[[], ServerThread], deployment: Deployment, db_engine: Engine,
        model_artifact_factory: ArtifactFactory, sample_dir: Path) -> None:
    name = deployment.name
    a = deployment.version(deployment.a)
    broken = model_artifact_factory(unique("swap-broken"))
    version = read_card(broken).version
    with db_engine.begin() as conn:  # the checksum the registry holds is not the artifact's
        register_version(conn, version=version, architecture="efficientnet_lite0",
                         artifact_uri=str(broken), card=read_card(broken).model_dump(
                             mode="json"), metrics=None, sha256="0" * 64)
    image = sorted((sample_dir / "images").glob("*.jpg"))[0].read_bytes()
    st = following()
    with Traffic(st, image) as traffic:
        traffic.wait_answers(3, after=0.0)
        promoted = promote(db_engine, name, version, "a candidate whose artifact is corrupt")
        deadline = time.monotonic() + SWITCH_WITHIN_S
        while metric(st.metrics(), "binaudit_model_swap_failures_total", deployment=name,
                     role="production") < 1:
            assert time.monotonic() < deadline, "no swap failure counted"
            time.sleep(0.2)
        traffic.wait_answers(5, after=time.monotonic())
    assert traffic.errors == [] and set(traffic.pings) == {200}
    assert {x.status for x in traffic.answers} == {200}
    assert {x.version for x in traffic.answers} == {a}
    assert any(x.sent > promoted for x in traffic.answers)
    assert metric(st.metrics(), "binaudit_model_info", deployment=name, role="production",
                  version=a) == 1

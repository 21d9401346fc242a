"""core.registry against a real Postgres (a database of this module, migrated to head):
versions, stages per deployment, the append-only history, LISTEN/NOTIFY."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from core import registry
from core.settings import Settings

pytestmark = pytest.mark.services


@pytest.fixture
def versions(own_engine: Engine) -> Callable[..., list[str]]:
    """``versions(n)``: n newly registered versions (unique names), in order."""

    def make(n: int, classes: tuple[int, ...] = (1, 2, 3, 4, 5)) -> list[str]:
        names = [f"v{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]
        with own_engine.begin() as conn:
            for name in names:
                registry.register_version(conn, version=name, architecture="efficientnet_lite0",
                                          artifact_uri=f"file:///models/{name}",
                                          card={"version": name, "class_counts": list(classes)},
                                          metrics=None)
        return names

    return make


def _deployment() -> str:
    return f"dep-{uuid.uuid4().hex[:8]}"


def _move(own_engine: Engine, deployment: str, version: str, to: registry.Stage,
          reason: str = "test") -> list[registry.StageChange]:
    with own_engine.begin() as conn:
        return registry.set_stage(conn, deployment=deployment, version=version, to_stage=to,
                                  actor="tester@host", reason=reason)


def test_register_version_is_idempotent_and_learns_a_checksum(own_engine: Engine) -> None:
    name = f"v-{uuid.uuid4().hex[:8]}"
    kw: dict[str, Any] = {"version": name, "architecture": "efficientnet_lite0",
                          "card": {"version": name}, "metrics": None}
    with own_engine.begin() as conn:
        assert registry.register_version(conn, artifact_uri="file:///a", **kw)
        assert not registry.register_version(conn, artifact_uri="file:///a", **kw)
        assert not registry.register_version(conn, artifact_uri="s3://b/a/", sha256="ab" * 32,
                                             **kw)
        row = conn.execute(text("SELECT artifact_uri, sha256 FROM model_versions "
                                "WHERE version = :v"), {"v": name}).one()
        assert tuple(row) == ("s3://b/a/", "ab" * 32)
        # a known checksum is never overwritten
        registry.register_version(conn, artifact_uri="s3://c/", sha256="cd" * 32, **kw)
        assert conn.execute(text("SELECT sha256 FROM model_versions WHERE version = :v"),
                            {"v": name}).scalar_one() == "ab" * 32


def test_single_holder_stages_displace_and_history_records_all(
        own_engine: Engine, versions: Callable[..., list[str]]) -> None:
    a, b, c = versions(3)
    dep = _deployment()
    _move(own_engine, dep, a, "production", "first")
    _move(own_engine, dep, c, "shadow")
    changes = _move(own_engine, dep, b, "production", "better")
    assert [(x.version, x.from_stage, x.to_stage) for x in changes] == [
        (a, "production", "archived"), (b, None, "production")]
    assert changes[0].reason == f"replaced by {b}: better"
    _move(own_engine, dep, a, "shadow")  # the old shadow goes back to candidate
    with own_engine.connect() as conn:
        models = registry.deployment_models(conn, dep)
        assert models.versions() == (b, a)
        assert registry.stage_of(conn, dep, c) == "candidate"
        rows = registry.history(conn, deployment=dep)
    assert [(r.version, r.from_stage, r.to_stage) for r in rows] == [
        (a, None, "production"), (c, None, "shadow"), (a, "production", "archived"),
        (b, None, "production"), (c, "shadow", "candidate"), (a, "archived", "shadow")]
    assert all(r.actor == "tester@host" and r.db_user and r.at is not None for r in rows)


def test_refused_stage_changes(own_engine: Engine, versions: Callable[..., list[str]]) -> None:
    (a,) = versions(1)
    dep = _deployment()
    with pytest.raises(registry.RegistryError, match="not registered"):
        _move(own_engine, dep, "no-such-version", "production")
    with pytest.raises(registry.RegistryError, match="needs a reason"):
        _move(own_engine, dep, a, "production", " ")
    _move(own_engine, dep, a, "candidate")
    with pytest.raises(registry.RegistryError, match="already candidate"):
        _move(own_engine, dep, a, "candidate")


def test_previous_production_and_bootstrap(own_engine: Engine,
                                           versions: Callable[..., list[str]]) -> None:
    a, b = versions(2)
    dep = _deployment()
    with own_engine.begin() as conn:
        assert registry.previous_production(conn, dep) is None
        assert registry.bootstrap_production(conn, deployment=dep, version=a, actor="w")
        assert not registry.bootstrap_production(conn, deployment=dep, version=b, actor="w")
        assert registry.previous_production(conn, dep) is None
    _move(own_engine, dep, b, "production")
    with own_engine.connect() as conn:
        assert registry.previous_production(conn, dep) == a
    _move(own_engine, dep, a, "production")  # a rollback: now b was production before
    with own_engine.connect() as conn:
        assert registry.previous_production(conn, dep) == b


@pytest.mark.parametrize("statement", [
    "UPDATE model_stage_history SET reason = 'rewritten' WHERE deployment = :d",
    "DELETE FROM model_stage_history WHERE deployment = :d",
])
def test_history_is_append_only(own_engine: Engine, versions: Callable[..., list[str]],
                                statement: str) -> None:
    (a,) = versions(1)
    dep = _deployment()
    _move(own_engine, dep, a, "candidate", "original reason")
    with pytest.raises(DBAPIError, match="append-only"), own_engine.begin() as conn:
        conn.execute(text(statement), {"d": dep})
    with own_engine.connect() as conn:
        assert [r.reason for r in registry.history(conn, deployment=dep)] == [
            "original reason"]


def test_a_promotion_notifies_the_listener(own_db: Settings, own_engine: Engine,
                                           versions: Callable[..., list[str]]) -> None:
    (a,) = versions(1)
    dep = _deployment()
    with registry.StageListener(own_db.db) as listener:
        assert listener.wait(0.05) == set()  # connects and LISTENs
        heard: list[set[str]] = []
        waiter = threading.Thread(target=lambda: heard.append(listener.wait(10.0)))
        waiter.start()
        _move(own_engine, dep, a, "production")
        waiter.join(15.0)
    assert heard == [{dep}]

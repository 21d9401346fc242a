"""Registry helpers shared by the lifecycle tests: register an artifact as the trainer would
(card + tree checksum) and move a version's stage, each in its own transaction."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from core.artifacts import tree_sha256
from core.model.card import read_card
from core.registry import Stage, register_version, set_stage


def register(engine: Engine, path: Path, *, uri: str | None = None,
             sha256: str | None = None) -> str:
    """Record the artifact at ``path`` (under ``uri`` when it was uploaded); its version."""
    card = read_card(path)
    with engine.begin() as conn:
        register_version(conn, version=card.version, architecture=card.architecture,
                         artifact_uri=uri or str(path), card=card.model_dump(mode="json"),
                         metrics=None, sha256=sha256 or tree_sha256(path))
    return card.version


def promote(engine: Engine, deployment: str, version: str, stage: Stage = "production", *,
            reason: str = "test") -> None:
    with engine.begin() as conn:
        set_stage(conn, deployment=deployment, version=version, to_stage=stage, actor="test",
                  reason=reason)

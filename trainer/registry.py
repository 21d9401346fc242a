"""``model register``: record an artifact in the ``model_versions`` table."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.dialects.postgresql import insert

from core.model.artifact import load_artifact
from core.tables import model_versions


def register_artifact(engine: Engine, directory: Path) -> tuple[str, bool]:
    """Insert the artifact's card (validated by loading it); (version, newly inserted)."""
    directory = directory.resolve()
    _, card = load_artifact(directory)  # refuses anything the worker could not load
    stmt = insert(model_versions).values(
        version=card.version, architecture=card.architecture,
        artifact_uri=directory.as_uri(), card=card.model_dump(mode="json"),
        metrics=card.metrics or None,
    ).on_conflict_do_nothing(index_elements=[model_versions.c.version])
    with engine.begin() as conn:
        inserted = conn.execute(stmt).rowcount == 1
    return card.version, inserted

"""Replay fixtures shared by its modules (each module defines ``own_db``, its own database)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine

from core.settings import Settings


@pytest.fixture
def own_engine(own_db: Settings) -> Iterator[Engine]:
    """An engine on the requesting module's own database."""
    engine = create_engine(own_db.db.url.get_secret_value())
    yield engine
    engine.dispose()

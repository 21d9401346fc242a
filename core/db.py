"""One way to build a SQLAlchemy engine from the settings (URL secret + libpq TLS options)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine

from core.settings import DatabaseSettings


def make_engine(cfg: DatabaseSettings, **kwargs: Any) -> Engine:
    """An engine for ``cfg``; ``connect_args`` given here are merged over the TLS options."""
    connect_args = {**cfg.connect_args(), **kwargs.pop("connect_args", {})}
    return create_engine(cfg.url.get_secret_value(), connect_args=connect_args, **kwargs)


@contextmanager
def open_engine(cfg: DatabaseSettings, **kwargs: Any) -> Iterator[Engine]:
    """``with open_engine(settings.db) as engine:`` — disposed (pool closed) on exit."""
    engine = make_engine(cfg, **kwargs)
    try:
        yield engine
    finally:
        engine.dispose()

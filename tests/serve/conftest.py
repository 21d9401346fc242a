"""The serving room's fixtures: a ModelServer on a real socket, in-process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from inference.counter import BinCounter
from serve.server import ModelServer
from tests.serve.harness import ServerFactory, ServerThread


@pytest.fixture
def server_factory(settings_factory: Callable[..., Settings],
                   model_artifact: Path) -> Iterator[ServerFactory]:
    """``server_factory(serve={...}, inference={...}, load_counter=...)``: a started server."""
    started: list[ServerThread] = []

    def make(*, load_counter: Callable[[], BinCounter] | None = None, ready: bool = True,
             **sections: dict[str, Any]) -> ServerThread:
        sections["inference"] = {"model": str(model_artifact), "device": "cpu",
                                 **sections.get("inference", {})}
        server = ModelServer(settings_factory(**sections), load_counter=load_counter)
        st = ServerThread(server).__enter__()
        started.append(st)
        if ready:
            st.wait_ready()
        return st

    yield make
    for st in started:
        st.__exit__(None, None, None)



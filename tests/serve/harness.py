"""A ModelServer on a real socket in-process (its own event loop in a daemon thread)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from serve.server import ModelServer


class ServerThread:
    """A ModelServer on its own event loop in a daemon thread, on 127.0.0.1:<ephemeral>."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="serve-test",
                                       daemon=True)
        self.url = ""

    def __enter__(self) -> ServerThread:
        self.thread.start()
        port = asyncio.run_coroutine_threadsafe(
            self.server.start("127.0.0.1", 0), self.loop).result(timeout=30)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while requests.get(f"{self.url}/ping", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, f"/ping not 200 after {timeout}s"
            time.sleep(0.1)

    def invoke(self, body: bytes, content_type: str = "image/jpeg", *,
               headers: dict[str, str] | None = None, path: str = "/invocations",
               **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}{path}", data=body,
                             headers={"Content-Type": content_type, **(headers or {})},
                             timeout=60, **kwargs)

    def metrics(self) -> str:
        return requests.get(f"{self.url}/metrics", timeout=5).text


ServerFactory = Callable[..., ServerThread]

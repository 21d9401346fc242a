"""`binaudit serve` locked down: loopback by default, an optional bearer token on
/invocations, and a deadline for reading a request's body (slow-loris clients)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import yaml
from pydantic import SecretStr

from core.settings import ServeSettings, Settings
from serve.server import ModelServer
from tests.serve.harness import ServerFactory, ServerThread

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-for-tests-0123456789"


def jpeg(sample_dir: Path) -> bytes:
    return next((sample_dir / "images").glob("*.jpg")).read_bytes()


# ---- where it listens ---------------------------------------------------------------------
def test_the_default_listen_address_is_loopback() -> None:
    assert ServeSettings().host == "127.0.0.1"


def test_a_server_without_host_binds_loopback_only(
        settings_factory: Callable[..., Settings], model_artifact: Path) -> None:
    """The old default (0.0.0.0) exposed the model to every interface of the host."""
    server = ModelServer(settings_factory(serve={"port": 0},
                                          inference={"model": str(model_artifact),
                                                     "device": "cpu"}))
    thread = ServerThread(server)
    thread.thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), thread.loop).result(timeout=30)
        assert server._runner is not None
        hosts = {address[0] for address in server._runner.addresses}
        assert hosts == {"127.0.0.1"}, hosts
    finally:
        thread.__exit__(None, None, None)


def test_containers_listen_on_every_interface_explicitly() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["serve"]["environment"]["BINAUDIT_SERVE__HOST"] == "0.0.0.0"
    assert "ENV BINAUDIT_SERVE__HOST=0.0.0.0" in (REPO_ROOT / "Dockerfile").read_text()


# ---- bearer token ---------------------------------------------------------------------------
@pytest.mark.services
def test_invocations_need_the_bearer_token_when_one_is_set(
        server_factory: ServerFactory, sample_dir: Path) -> None:
    st = server_factory(serve={"auth_token": SecretStr(TOKEN)})
    image = jpeg(sample_dir)
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer "},
                    {"Authorization": "Bearer t\u00e9st"}):
        for path in ("/invocations", "/endpoints/any/invocations"):
            resp = st.invoke(image, headers=headers, path=path)
            assert resp.status_code == 401, (headers, path, resp.text)
            assert resp.json()["error"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    ok = st.invoke(image, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200, ok.text
    assert st.invoke(image, headers={"Authorization": f"bearer  {TOKEN} "}).status_code == 200
    # Health checks and scrapes stay open.
    assert requests.get(f"{st.url}/ping", timeout=5).status_code == 200
    assert requests.get(f"{st.url}/metrics", timeout=5).status_code == 200


def test_a_short_token_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="auth_token"):
        ServeSettings(auth_token="short")


@pytest.mark.services
def test_without_a_token_invocations_stay_open(server_factory: ServerFactory,
                                               sample_dir: Path) -> None:
    st = server_factory()
    assert st.invoke(jpeg(sample_dir)).status_code == 200


# ---- slow bodies --------------------------------------------------------------------------
def slow_client(url: str, *, declared: int, sent: bytes) -> socket.socket:
    """Headers announcing ``declared`` body bytes, then only ``sent`` of them."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                 f"Content-Length: {declared}\r\n\r\n".encode() + sent)
    return sock


def read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        pass  # the old code: no answer at all
    return b"".join(chunks)


@pytest.mark.services
def test_a_slow_loris_body_gets_408_and_frees_its_slot(server_factory: ServerFactory,
                                                       sample_dir: Path) -> None:
    st = server_factory(serve={"max_queue": 1, "body_read_timeout_s": 1.5})
    sock = slow_client(st.url, declared=100_000, sent=b"\xff\xd8")
    try:
        time.sleep(0.5)
        # The trickling client holds the only slot meanwhile.
        busy = st.invoke(jpeg(sample_dir))
        assert busy.status_code == 503 and busy.json()["error"] == "overloaded"
        started = time.monotonic()
        for _ in range(3):  # trickle: a byte now and then never extends the deadline
            sock.sendall(b"\x00")
            time.sleep(0.2)
        answer = read_all(sock, timeout=6.0)
        waited = time.monotonic() - started
    finally:
        sock.close()
    head = answer.split(b"\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 408"), (answer[:300], waited)
    assert b'"request_timeout"' in answer
    assert waited < 5.0
    # The connection was closed (recv returned b"") and the slot is free again.
    assert st.invoke(jpeg(sample_dir)).status_code == 200
    assert 'reason="request_timeout"' in st.metrics()


@pytest.mark.services
def test_a_body_that_arrives_in_time_is_served(server_factory: ServerFactory,
                                               sample_dir: Path) -> None:
    st = server_factory(serve={"body_read_timeout_s": 3.0})
    image = jpeg(sample_dir)
    sock = slow_client(st.url, declared=len(image), sent=image[:1000])
    try:
        time.sleep(0.5)
        sock.sendall(image[1000:])
        sock.settimeout(30)
        answer = sock.recv(65536)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]

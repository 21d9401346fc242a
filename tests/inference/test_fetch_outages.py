"""One object's failure or an outage, told apart by the rest of the bucket, against moto S3
with IAM authentication on (one key denied by policy; the policy revoked for all) and a relay
that answers 500 (one key, or many at once)."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from core.settings import Settings
from inference.images import ImageFetcher
from schemas.records import ErrorKind, EventError
from tests.inference.moto_iam import READ, MotoIam, deny_key, statement
from tests.reliability.probes import FaultProxy

pytestmark = pytest.mark.services

FAST = {"retry_backoff_initial_s": 0.05, "retry_backoff_max_s": 0.1}
KEYS = [f"bin-images/{i}.jpg" for i in range(6)]


def _jpeg(sample_dir: Path, i: int = 0) -> bytes:
    return sorted((sample_dir / "images").glob("*.jpg"))[i].read_bytes()


@pytest.fixture
def iam(services: Settings) -> MotoIam:
    assert services.s3.endpoint_url is not None
    return MotoIam(services.s3.endpoint_url)


@pytest.fixture
def seeded(bucket_factory: Callable[..., str], s3_client: Any, sample_dir: Path) -> str:
    """A bucket holding KEYS and denied.jpg (uploaded before authentication is on)."""
    bucket = bucket_factory("outage")
    for i, key in enumerate([*KEYS, "denied.jpg"]):
        s3_client.put_object(Bucket=bucket, Key=key, Body=_jpeg(sample_dir, i))
    return bucket


def _signing(key: dict[str, str]) -> dict[str, SecretStr]:
    """S3Settings fields for an IAM user's key (model_copy does not validate)."""
    return {name: SecretStr(value) for name, value in key.items()}


def _wait_for_fault(fetcher: ImageFetcher, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while "s3" not in fetcher.faults.active():
        assert time.monotonic() < deadline, "no S3 fault reported"
        time.sleep(0.05)


def _still_waiting(futures: list[concurrent.futures.Future[bytes]]) -> None:
    done = [f.exception() for f in futures if f.done()]
    assert not done, f"an outage ended events: {done}"


@pytest.mark.parametrize("alone", [False, True], ids=["among-others", "alone"])
def test_one_denied_object_is_one_access_denied_dead_letter(
        alone: bool, iam: MotoIam, seeded: str, settings_factory: Callable[..., Settings],
        sample_dir: Path) -> None:
    """A policy that denies one key: that event ends as access_denied after its budget, the
    others are served, and no outage is reported. Alone: nothing else of the bucket was
    fetched yet, so the fetcher lists the bucket to find another key and asks for it."""
    _, key = iam.user([statement("Allow", READ), deny_key(seeded, "denied.jpg")])
    settings = settings_factory(s3={"allowed_buckets": (seeded,), **_signing(key),
                                    "object_denied_attempts": 3}, inference=FAST)
    with iam.authentication(), ImageFetcher.from_settings(settings) as fetcher:
        denied = fetcher.fetch(f"s3://{seeded}/denied.jpg")
        if alone:
            concurrent.futures.wait([denied], timeout=30)
        goods = [fetcher.fetch(f"s3://{seeded}/{k}") for k in KEYS]
        assert [g.result(timeout=30) for g in goods] == [_jpeg(sample_dir, i)
                                                        for i in range(len(KEYS))]
        with pytest.raises(EventError) as caught:
            denied.result(timeout=30)
        assert fetcher.faults.active() == {}
    assert caught.value.kind is ErrorKind.ACCESS_DENIED
    assert "AccessDenied" in caught.value.message and "3 attempts" in caught.value.message
    assert fetcher.faults.retries() == {"s3": 3}


def test_access_revoked_for_the_whole_bucket_is_an_outage_never_a_dead_letter(
        iam: MotoIam, seeded: str, settings_factory: Callable[..., Settings],
        sample_dir: Path) -> None:
    """Keys served before do not make a refusal the object's: once the worker's policy is
    revoked every key is refused (and so is the probe), the fetches wait, the fault is up;
    the policy put back, every fetch completes."""
    user, key = iam.user([statement("Allow", READ)])
    settings = settings_factory(s3={"allowed_buckets": (seeded,), **_signing(key),
                                    "object_denied_attempts": 2}, inference=FAST)
    with iam.authentication(), ImageFetcher.from_settings(settings) as fetcher:
        assert fetcher.fetch(f"s3://{seeded}/{KEYS[0]}").result(timeout=30)
        iam.set_policy(user, [statement("Allow", ["iam:GetUser"])])
        futures = [fetcher.fetch(f"s3://{seeded}/{k}") for k in KEYS[1:]]
        _wait_for_fault(fetcher)
        time.sleep(2)  # many times the per-object budget of 2 rounds
        _still_waiting(futures)
        assert "AccessDenied" in fetcher.faults.active()["s3"].cause
        iam.set_policy(user, [statement("Allow", READ)])
        assert [f.result(timeout=30) for f in futures] == [_jpeg(sample_dir, i)
                                                          for i in range(1, len(KEYS))]
        assert fetcher.faults.active() == {}


@pytest.fixture
def proxy(services: Settings) -> Iterator[FaultProxy]:
    relay = FaultProxy(services.services.s3_port)
    yield relay
    relay.stop()


def test_5xx_across_many_keys_is_an_outage_never_a_dead_letter(
        proxy: FaultProxy, seeded: str, settings_factory: Callable[..., Settings],
        sample_dir: Path) -> None:
    """A burst of 500s across keys (here while HEAD still answers, so the rest of the bucket
    looks served): as many failing keys as outage_min_keys make it an outage."""
    settings = settings_factory(
        s3={"allowed_buckets": (seeded,), "endpoint_url": f"http://127.0.0.1:{proxy.port}",
            "max_attempts": 1, "fetch_attempts": 2, "outage_min_keys": 3}, inference=FAST)
    with ImageFetcher.from_settings(settings) as fetcher:
        assert fetcher.fetch(f"s3://{seeded}/{KEYS[0]}").result(timeout=30)
        proxy.poisoned.update(KEYS[1:])
        futures = [fetcher.fetch(f"s3://{seeded}/{k}") for k in KEYS[1:]]
        _wait_for_fault(fetcher)
        time.sleep(2)
        _still_waiting(futures)
        assert "InternalError" in fetcher.faults.active()["s3"].cause
        assert proxy.failed_gets > 2 * len(futures)  # retried well past the budget
        proxy.poisoned.clear()
        assert [f.result(timeout=30) for f in futures] == [_jpeg(sample_dir, i)
                                                          for i in range(1, len(KEYS))]
        assert fetcher.faults.active() == {}

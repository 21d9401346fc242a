"""`binaudit serve` over real HTTP: SageMaker's /ping and /invocations, batching, limits, S3.

Servers run in-process on an ephemeral port (a thread with its own event loop), or as a
`python -m binaudit serve` child for the signal test; requests go through real sockets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from core.model.card import ArtifactError, DecisionPolicy
from core.model.preprocess import ImageLimits, Preprocessor
from core.settings import Settings
from inference.compare import Prediction, decide, prediction_from_probs
from inference.counter import BinCounter
from schemas.events import BinEvent, encode_event
from serve.server import ModelServer, run_server
from tests.hostile_images import png_header_bomb
from tests.serve.harness import ServerFactory

REPO_ROOT = Path(__file__).resolve().parents[2]
FIELDS = {"count", "confidence", "probabilities", "scores", "class_counts", "model_version"}


@pytest.fixture(scope="module")
def reference(model_artifact: Path) -> tuple[BinCounter, Preprocessor]:
    """The worker's inference, used directly: the answer the endpoint must agree with."""
    counter = BinCounter.from_artifact(model_artifact, "cpu")
    return counter, Preprocessor(counter.card, ImageLimits.from_settings(
        Settings(environment="test").inference))


def direct(reference: tuple[BinCounter, Preprocessor], data: bytes) -> Prediction:
    counter, pre = reference
    return counter.infer(pre(data).unsqueeze(0))[0]


def samples(sample_dir: Path) -> list[tuple[Path, int]]:
    with (sample_dir / "labels.csv").open() as f:
        return [(sample_dir / row["image"], int(row["expected_quantity"]))
                for row in csv.DictReader(f)]


def jpeg(sample_dir: Path, n: int = 0) -> bytes:
    return samples(sample_dir)[n][0].read_bytes()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 if absent); label order free."""
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name and dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")) \
                == labels:
            return float(m.group(3))
    return 0.0


def assert_same(got: dict[str, Any], want: Prediction) -> None:
    assert got["count"] == want.count
    assert got["confidence"] == pytest.approx(want.confidence, abs=1e-4)
    assert got["scores"] == pytest.approx(list(want.scores), abs=1e-3)
    for k, p in want.probabilities.items():
        assert got["probabilities"][k] == pytest.approx(p, abs=1e-4)


# ---- start-up -----------------------------------------------------------------------------
def test_ping_is_503_while_the_model_loads_then_200(
        server_factory: ServerFactory, model_artifact: Path, sample_dir: Path) -> None:
    gate = threading.Event()

    def slow_load() -> BinCounter:
        assert gate.wait(timeout=60), "test never released the loader"
        return BinCounter.from_artifact(model_artifact, "cpu")

    st = server_factory(load_counter=slow_load, ready=False)
    ping = requests.get(f"{st.url}/ping", timeout=5)  # the listener is up before the model
    assert ping.status_code == 503
    assert ping.json()["error"] == "not_ready" and ping.headers["Retry-After"]
    early = st.invoke(jpeg(sample_dir))
    assert early.status_code == 503 and early.json()["error"] == "not_ready"
    assert metric(st.metrics(), "binaudit_model_ready") == 0

    gate.set()
    st.wait_ready()
    assert st.invoke(jpeg(sample_dir)).status_code == 200
    assert metric(st.metrics(), "binaudit_model_ready") == 1


def test_a_model_that_cannot_load_stops_the_server(settings_factory: Callable[..., Settings],
                                                    tmp_path: Path) -> None:
    settings = settings_factory(serve={"host": "127.0.0.1", "port": 0},
                                inference={"model": str(tmp_path / "missing"), "device": "cpu"})
    with pytest.raises(ArtifactError):
        asyncio.run(run_server(ModelServer(settings)))


# ---- the contract -------------------------------------------------------------------------
def test_image_requests_answer_what_the_workers_inference_gives(
        server_factory: ServerFactory, reference: tuple[BinCounter, Preprocessor],
        sample_dir: Path) -> None:
    st = server_factory()
    counter, _ = reference
    for n in range(3):
        data = jpeg(sample_dir, n)
        for ctype in ("image/jpeg", "application/x-image"):
            resp = st.invoke(data, ctype)
            assert resp.status_code == 200, resp.text
            assert resp.headers["Content-Type"].startswith("application/json")
            body = resp.json()
            assert body.keys() >= FIELDS and "verdict" not in body
            assert body["model_version"] == counter.version
            assert body["class_counts"] == counter.card.class_counts
            assert len(body["scores"]) == len(counter.card.class_counts)
            assert_same(body, direct(reference, data))

    png = io.BytesIO()
    Image.open(io.BytesIO(jpeg(sample_dir, 3))).save(png, format="PNG")
    resp = st.invoke(png.getvalue(), "image/png")
    assert resp.status_code == 200, resp.text
    assert_same(resp.json(), direct(reference, png.getvalue()))


def test_32_concurrent_requests_share_forward_passes(
        server_factory: ServerFactory, reference: tuple[BinCounter, Preprocessor],
        sample_dir: Path) -> None:
    st = server_factory(serve={"max_batch_size": 16, "max_wait_ms": 100})
    images = [jpeg(sample_dir, n) for n in range(32)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(st.invoke, images))
    assert [r.status_code for r in responses] == [200] * 32
    for data, resp in zip(images, responses, strict=True):
        want, got = direct(reference, data), resp.json()
        for k, p in want.probabilities.items():
            assert got["probabilities"][k] == pytest.approx(p, abs=1e-4)
        top = sorted(want.probabilities.values(), reverse=True)
        if top[0] - top[1] > 1e-4:  # batched vs single float sums: compare clear answers
            assert got["count"] == want.count

    text = st.metrics()
    batches = metric(text, "binaudit_batch_size_count")
    images_done = metric(text, "binaudit_batch_size_sum")
    singles = metric(text, "binaudit_batch_size_bucket", le="1.0")
    assert images_done == 32
    assert batches < 32 and singles < batches, f"no batch > 1 in:\n{text}"
    assert metric(text, "binaudit_http_request_seconds_count", route="/invocations",
                  method="POST", status="200") == 32


def test_bad_requests_get_the_right_4xx_and_the_server_keeps_serving(
        server_factory: ServerFactory, sample_dir: Path) -> None:
    st = server_factory(serve={"max_body_bytes": 150_000})
    good = jpeg(sample_dir)
    cases: list[tuple[bytes, str, int, set[str]]] = [
        (good, "text/plain", 415, {"unsupported_media_type"}),
        (good, "", 415, {"unsupported_media_type"}),
        (b"\xff" * 200_000, "image/jpeg", 413, {"payload_too_large"}),
        (b"", "image/jpeg", 422, {"empty_object"}),
        (b"this is not an image at all", "image/jpeg", 422, {"not_an_image"}),
        (good[:3000], "image/jpeg", 422, {"truncated_image", "decode_error"}),
        (png_header_bomb(20_000, 20_000), "image/png", 422, {"image_too_many_pixels"}),
        (b'{"image_uri": ', "application/json", 400, {"invalid_json"}),
        (b"[1, 2]", "application/json", 400, {"invalid_json"}),
        (b'{"image_uri": "s3://binaudit-images/a.jpg"}', "application/json", 422,
         {"schema_violation"}),
        (b'{"image_uri": "http://x/a.jpg", "expected_quantity": 2}', "application/json", 422,
         {"invalid_image_uri"}),
        (b'{"bin_id": "b1", "image_uri": "s3://binaudit-images/a.jpg"}',
         "application/json", 422, {"schema_violation"}),
    ]
    for body, ctype, status, kinds in cases:
        resp = st.invoke(body, ctype)
        assert resp.status_code == status, (ctype, body[:40], resp.text)
        err = resp.json()
        assert err["error"] in kinds and err["message"], err
        assert st.invoke(good).status_code == 200  # still serving

    # A chunked body (no Content-Length) over the limit is refused while it is read.
    chunked = requests.post(f"{st.url}/invocations", data=iter([b"\xff" * 100_000] * 3),
                            headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert chunked.status_code == 413 and chunked.json()["error"] == "payload_too_large"
    assert requests.get(f"{st.url}/nope", timeout=5).json()["error"] == "not_found"
    assert requests.get(f"{st.url}/invocations", timeout=5).status_code == 405
    assert st.invoke(good).status_code == 200
    text = st.metrics()
    assert metric(text, "binaudit_http_rejections_total", reason="not_an_image") == 1
    assert metric(text, "binaudit_http_rejections_total", reason="payload_too_large") == 2


def test_a_full_queue_answers_503_with_retry_after(server_factory: ServerFactory,
                                                   sample_dir: Path) -> None:
    st = server_factory(serve={"max_queue": 2, "max_batch_size": 1},
                        inference={"artificial_delay_s": 0.5})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(st.invoke, [jpeg(sample_dir)] * 8))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes and set(codes) == {200, 503}, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.json()["error"] == "overloaded" and busy.headers["Retry-After"] == "1"
    assert st.invoke(jpeg(sample_dir)).status_code == 200


def test_a_slow_answer_is_a_504(server_factory: ServerFactory, sample_dir: Path) -> None:
    st = server_factory(serve={"request_timeout_s": 0.3}, inference={"artificial_delay_s": 1.0})
    resp = st.invoke(jpeg(sample_dir))
    assert resp.status_code == 504 and resp.json()["error"] == "timeout"


# ---- JSON events from S3 ------------------------------------------------------------------
def test_json_events_are_fetched_from_s3_and_get_the_workers_verdict(
        server_factory: ServerFactory, reference: tuple[BinCounter, Preprocessor],
        bucket_factory: Callable[..., str], s3_client: Any, sample_dir: Path) -> None:
    bucket, other = bucket_factory("serve"), bucket_factory("serve-denied")
    policy = DecisionPolicy(match_min_p=0.3, mismatch_min_score=0.7)
    st = server_factory(s3={"allowed_buckets": (bucket,)},
                        inference={"match_min_p": 0.3, "mismatch_min_score": 0.7})
    counter, _ = reference
    picked = [s for s in samples(sample_dir) if 1 <= s[1] <= 5][:3] + \
        [s for s in samples(sample_dir) if s[1] > 5][:1]
    for path, expected in picked:
        key = f"bin-images/{path.name}"
        s3_client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        event = BinEvent(bin_id=f"bin-{path.stem}", captured_at=datetime.now(UTC),
                         image_uri=f"s3://{bucket}/{key}", expected_quantity=expected)
        for body, full in ((encode_event(event), True),
                           (f'{{"image_uri": "{event.image_uri}", "expected_quantity": '
                            f'{expected}}}'.encode(), False)):
            resp = st.invoke(body, "application/json")
            assert resp.status_code == 200, resp.text
            got = resp.json()
            assert got.keys() >= FIELDS | {"verdict", "image_uri", "expected_quantity",
                                           "p_expected", "discrepancy_score"}
            assert_same(got, direct(reference, path.read_bytes()))
            verdict = decide(prediction_from_probs(
                [got["probabilities"][str(c)] for c in counter.card.class_counts],
                got["scores"], counter.card.class_counts), expected=expected,
                supported_counts=counter.card.class_counts, policy=policy)
            assert got["verdict"] == verdict.status.value
            assert got["p_expected"] == verdict.p_expected
            assert got["discrepancy_score"] == verdict.discrepancy_score
            assert (got.get("event_id") == event.event_id) if full else "event_id" not in got
    assert got["verdict"] == "unsupported"  # the last sample holds more than 5 items

    missing = st.invoke(b'{"image_uri": "s3://%s/nope.jpg", "expected_quantity": 2}'
                        % bucket.encode(), "application/json")
    assert missing.status_code == 404 and missing.json()["error"] == "missing_object"
    s3_client.put_object(Bucket=other, Key="a.jpg", Body=jpeg(sample_dir))
    denied = st.invoke(b'{"image_uri": "s3://%s/a.jpg", "expected_quantity": 2}'
                       % other.encode(), "application/json")
    assert denied.status_code == 403 and denied.json()["error"] == "bucket_not_allowed"
    s3_client.put_object(Bucket=bucket, Key="junk.jpg", Body=b"not a jpeg")
    junk = st.invoke(b'{"image_uri": "s3://%s/junk.jpg", "expected_quantity": 2}'
                     % bucket.encode(), "application/json")
    assert junk.status_code == 422 and junk.json()["error"] == "not_an_image"


# ---- the command --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_command_answers_in_flight_requests_on_sigterm_and_exits_0(
        services: Settings, model_artifact: Path, sample_dir: Path, tmp_path: Path,
        wait_for: Callable[..., None]) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BINAUDIT_INFERENCE__DEVICE": "cpu",
           "BINAUDIT_INFERENCE__ARTIFICIAL_DELAY_S": "1.0"}
    log_path = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "binaudit", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--model", str(model_artifact)], env=env, cwd=REPO_ROOT,
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                return requests.get(f"{url}/ping", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(ready, 120, "`binaudit serve` to answer /ping with 200")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(requests.post, f"{url}/invocations", data=jpeg(sample_dir),
                                  headers={"Content-Type": "image/jpeg"}, timeout=60)
            wait_for(lambda: "binaudit_http_in_flight 1.0" in requests.get(
                f"{url}/metrics", timeout=5).text, 30, "the request to be in flight",
                interval=0.05)
            proc.send_signal(signal.SIGTERM)
            answer = pending.result(timeout=60)
        assert answer.status_code == 200, answer.text
        assert proc.wait(timeout=60) == 0, log_path.read_text()
        log = log_path.read_text()
        assert "server stopped" in log and "status=200" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


# ---- the reference's own client ---------------------------------------------------------
def test_boto3_sagemaker_runtime_invoke_endpoint_works_unchanged(
        server_factory: ServerFactory, reference: tuple[BinCounter, Preprocessor],
        bucket_factory: Callable[..., str], s3_client: Any, sample_dir: Path) -> None:
    """The seed called ``predictor.predict(jpeg_bytes)``, i.e. InvokeEndpoint, which posts to
    /endpoints/<name>/invocations: boto3's own client, pointed at the server, gets answers."""
    import json

    import boto3

    bucket = bucket_factory("serve-sm")
    st = server_factory(s3={"allowed_buckets": (bucket,)})
    runtime = boto3.client("sagemaker-runtime", endpoint_url=st.url, region_name="us-east-1",
                           aws_access_key_id="placeholder", aws_secret_access_key="placeholder")
    path, expected = samples(sample_dir)[0]
    data = path.read_bytes()
    for content_type in ("image/jpeg", "application/x-image"):
        resp = runtime.invoke_endpoint(EndpointName="binaudit-counter", ContentType=content_type,
                                       Accept="application/json", Body=data)
        assert resp["ContentType"].startswith("application/json")
        assert_same(json.loads(resp["Body"].read()), direct(reference, data))
    s3_client.put_object(Bucket=bucket, Key="bin-images/sm.jpg", Body=data)
    body = json.dumps({"image_uri": f"s3://{bucket}/bin-images/sm.jpg",
                       "expected_quantity": expected})
    resp = runtime.invoke_endpoint(EndpointName="binaudit-counter",
                                   ContentType="application/json", Body=body)
    got = json.loads(resp["Body"].read())
    assert_same(got, direct(reference, data))
    assert got["verdict"] in {"match", "mismatch", "uncertain", "unsupported"}
    assert got["expected_quantity"] == expected
    assert metric(st.metrics(), "binaudit_http_request_seconds_count",
                  route="/endpoints/{endpoint}/invocations", method="POST", status="200") == 3


def test_timed_out_requests_still_count_against_the_queue_during_an_s3_outage(
        server_factory: ServerFactory, sample_dir: Path) -> None:
    """S3 unreachable: a JSON request times out (504) but its fetch keeps retrying in the
    pipeline and keeps its place in max_queue, so new requests get 503 at once instead of
    piling more fetches up; and while S3 is known to fail, JSON requests get 503 too."""
    st = server_factory(serve={"max_queue": 1, "request_timeout_s": 0.5, "shutdown_grace_s": 1},
                        s3={"endpoint_url": f"http://127.0.0.1:{free_port()}", "max_attempts": 1,
                            "allowed_buckets": ("somewhere",)})
    event = b'{"image_uri": "s3://somewhere/a.jpg", "expected_quantity": 2}'
    first = st.invoke(event, "application/json")
    assert first.status_code == 504, first.text
    image = st.invoke(jpeg(sample_dir))
    assert image.status_code == 503 and image.json()["error"] == "overloaded", image.text
    assert st.server._pipeline is not None and st.server._pipeline.in_flight == 1

"""`binaudit data fetch` against a moto bucket laid out like the public ABID bucket."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from typer.testing import CliRunner

from binaudit.cli import app
from core.settings import Settings
from trainer.fetch import (
    FetchStatus,
    LocalSource,
    RetryPolicy,
    fetch_abid,
    fetch_with_settings,
    id_range,
    ids_from_file_list,
    is_retryable,
    parse_ids,
)

pytestmark = pytest.mark.services
SEEDED = 40


@pytest.fixture
def abid_bucket(bucket_factory: Callable[..., str], s3_client: Any,
                sample_dir: Path) -> tuple[str, list[str]]:
    """A bucket with ~40 sample images + metadata in the real layout (both id families)."""
    bucket = bucket_factory("abid")
    ids = sorted(p.stem for p in (sample_dir / "metadata").glob("*.json"))
    chosen = ids[:SEEDED - 5] + [i for i in ids if len(i) < 5][:5]
    for image_id in chosen:
        s3_client.put_object(Bucket=bucket, Key=f"bin-images/{image_id}.jpg",
                             Body=(sample_dir / "images" / f"{image_id}.jpg").read_bytes())
        s3_client.put_object(Bucket=bucket, Key=f"metadata/{image_id}.json",
                             Body=(sample_dir / "metadata" / f"{image_id}.json").read_bytes())
    return bucket, chosen


@pytest.fixture
def abid_settings(settings_factory: Callable[..., Settings], services: Settings,
                  abid_bucket: tuple[str, list[str]]) -> Settings:
    s3 = services.s3
    return settings_factory(abid={
        "bucket": abid_bucket[0], "endpoint_url": s3.endpoint_url, "anonymous": False,
        "access_key_id": s3.access_key_id, "secret_access_key": s3.secret_access_key,
        "concurrency": 8})


def test_fetch_is_byte_identical_resumable_and_lists_missing(
        abid_settings: Settings, abid_bucket: tuple[str, list[str]], sample_dir: Path,
        tmp_path: Path) -> None:
    _, ids = abid_bucket
    wanted = [*ids, "99999999"]
    out = tmp_path / "abid"
    first = asyncio.run(fetch_with_settings(abid_settings.abid, wanted, out_dir=out))
    assert (first.downloaded, first.skipped, first.missing, first.failed) == (
        SEEDED, 0, ("99999999",), ())
    for image_id in ids:
        assert (out / "images" / f"{image_id}.jpg").read_bytes() == \
            (sample_dir / "images" / f"{image_id}.jpg").read_bytes()
        assert (out / "metadata" / f"{image_id}.json").read_bytes() == \
            (sample_dir / "metadata" / f"{image_id}.json").read_bytes()
    assert first.bytes == sum((out / sub / f"{i}{ext}").stat().st_size for i in ids
                              for sub, ext in (("images", ".jpg"), ("metadata", ".json")))
    assert not list(out.rglob("*.part"))

    second = asyncio.run(fetch_with_settings(abid_settings.abid, wanted, out_dir=out))
    assert (second.downloaded, second.skipped, second.bytes) == (0, SEEDED, 0)
    assert second.missing == ("99999999",)

    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert [r["id"] for r in rows] == wanted
    labels = {Path(r["image"]).stem: r["expected_quantity"]
              for r in csv.DictReader((sample_dir / "labels.csv").open())}
    for row in rows[:-1]:
        assert row["expected_quantity"] == labels[row["id"]]
        assert row["image_path"] == f"images/{row['id']}.jpg" and row["status"] == "skipped"
    assert rows[-1]["status"] == "missing" and rows[-1]["image_path"] == ""


def test_a_partial_or_stale_file_is_replaced(abid_settings: Settings,
                                             abid_bucket: tuple[str, list[str]],
                                             sample_dir: Path, tmp_path: Path) -> None:
    image_id = abid_bucket[1][0]
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / f"{image_id}.jpg").write_bytes(b"half")
    summary = asyncio.run(fetch_with_settings(abid_settings.abid, [image_id], out_dir=tmp_path))
    assert summary.downloaded == 1
    assert (tmp_path / "images" / f"{image_id}.jpg").read_bytes() == \
        (sample_dir / "images" / f"{image_id}.jpg").read_bytes()


def test_cli_fetch(abid_settings: Settings, abid_bucket: tuple[str, list[str]],
                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI builds its own Settings from the environment (the entry point's job).
    s3 = abid_settings.s3
    monkeypatch.setenv("BINAUDIT_ABID__ACCESS_KEY_ID", s3.access_key_id.get_secret_value())
    monkeypatch.setenv("BINAUDIT_ABID__SECRET_ACCESS_KEY",
                       s3.secret_access_key.get_secret_value())
    bucket, ids = abid_bucket
    args = ["data", "fetch", "--ids", ",".join([*ids[:3], "nope"]), "--out", str(tmp_path),
            "--endpoint-url", str(s3.endpoint_url), "--bucket", bucket, "--no-anonymous",
            "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 downloaded" in result.output and "missing: nope" in result.output
    again = CliRunner().invoke(app, args)
    assert "0 downloaded" in again.output and "3 already complete" in again.output


def test_fetch_from_a_local_abid_folder(sample_dir: Path, tmp_path: Path) -> None:
    ids = ["00001", "523", "00523", "121"]
    summary = asyncio.run(fetch_abid(ids, source=LocalSource(sample_dir), out_dir=tmp_path))
    present = [i for i in ids if (sample_dir / "metadata" / f"{i}.json").exists()]
    assert summary.downloaded == len(present)
    assert set(summary.missing) == set(ids) - set(present)
    for image_id in present:
        assert (tmp_path / "images" / f"{image_id}.jpg").read_bytes() == \
            (sample_dir / "images" / f"{image_id}.jpg").read_bytes()


class FlakySource(LocalSource):
    """Fails the first ``failures`` downloads with a 503, then behaves."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures

    async def download(self, key: str, dest: Path) -> int:
        if self.failures:
            self.failures -= 1
            raise ClientError({"Error": {"Code": "SlowDown"},
                               "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
        return await super().download(key, dest)


def test_transient_errors_are_retried(sample_dir: Path, tmp_path: Path) -> None:
    source = FlakySource(sample_dir, failures=3)
    summary = asyncio.run(fetch_abid(["00001"], source=source, out_dir=tmp_path,
                                     retry=RetryPolicy(max_attempts=4, base_delay_s=0.01)))
    assert summary.downloaded == 1 and source.failures == 0
    give_up = FlakySource(sample_dir, failures=10)
    summary = asyncio.run(fetch_abid(["00002"], source=give_up, out_dir=tmp_path,
                                     retry=RetryPolicy(max_attempts=2, base_delay_s=0.01)))
    assert summary.failed == ("00002",)
    assert "failed" in (tmp_path / "manifest.csv").read_text()
    assert FetchStatus.FAILED.value == "failed"


@pytest.mark.parametrize(("exc", "retry"), [
    (ClientError({"Error": {"Code": "SlowDown"}}, "GetObject"), True),
    (ClientError({"Error": {"Code": "InternalError"},
                  "ResponseMetadata": {"HTTPStatusCode": 500}}, "GetObject"), True),
    (ClientError({"Error": {"Code": "AccessDenied"},
                  "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject"), False),
    (EndpointConnectionError(endpoint_url="http://x"), True),
    (ValueError("bug"), False),
])
def test_is_retryable(exc: BaseException, retry: bool) -> None:
    assert is_retryable(exc) is retry


def test_id_selection() -> None:
    assert parse_ids("00523, 523,00523,") == ["00523", "523"]
    assert id_range("1-3") == ["00001", "00002", "00003"]
    assert id_range("9-11", pad=0) == ["9", "10", "11"]
    with pytest.raises(ValueError):
        id_range("5-1")
    assert ids_from_file_list({"2": ["data/metadata/09915.json"],
                               "1": ["data/metadata/100313.json", "data/metadata/09915.json"]}
                              ) == ["100313", "09915"]


def test_real_file_list_ids(tmp_path: Path) -> None:
    from tests.conftest import FILE_LIST

    ids = ids_from_file_list(json.loads(FILE_LIST.read_text()))
    assert len(ids) == 10_441 and "100313" in ids and "09915" in ids

"""core.artifacts against the local S3: checksums, upload and resolve, the cache, refusals."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.artifacts import ArtifactStoreError, resolve, tree_sha256, upload
from core.settings import Settings

pytestmark = pytest.mark.services


def _artifact(root: Path, card: str = '{"version": "a"}') -> Path:
    directory = root / "artifact"
    (directory / "openvino").mkdir(parents=True)
    (directory / "model.json").write_text(card)
    (directory / "model.pt").write_bytes(bytes(range(256)) * 64)
    (directory / "openvino" / "model.xml").write_text("<xml/>")
    return directory


def test_tree_sha256_names_contents_and_paths(tmp_path: Path) -> None:
    a = _artifact(tmp_path / "a")
    b = _artifact(tmp_path / "b")
    assert tree_sha256(a) == tree_sha256(b)  # a copy elsewhere has the same checksum
    (b / "model.json").write_text('{"version": "b"}')
    assert tree_sha256(a) != tree_sha256(b)
    c = _artifact(tmp_path / "c")
    (c / "openvino" / "model.xml").rename(c / "model.xml")  # same bytes, another path
    assert tree_sha256(a) != tree_sha256(c)


def test_upload_then_resolve_round_trip(services: Settings, bucket_factory: Callable[..., str],
                                        tmp_path: Path) -> None:
    source = _artifact(tmp_path)
    uri = f"s3://{bucket_factory('artifacts')}/models/a/"
    checksum = upload(source, uri, services.s3)
    assert checksum == tree_sha256(source)
    cache = tmp_path / "cache"
    local = resolve(uri, sha256=checksum, cache_dir=cache, s3=services.s3)
    assert local == cache / checksum
    assert (local / "model.pt").read_bytes() == (source / "model.pt").read_bytes()
    assert (local / "openvino" / "model.xml").read_text() == "<xml/>"
    assert tree_sha256(local) == checksum
    assert [p.name for p in cache.iterdir()] == [checksum]  # no staging folder left behind


def test_the_cache_is_reused_without_s3(services: Settings, s3_client: Any,
                                        bucket_factory: Callable[..., str],
                                        tmp_path: Path) -> None:
    bucket = bucket_factory("artifacts")
    uri = f"s3://{bucket}/m/"
    checksum = upload(_artifact(tmp_path), uri, services.s3)
    cache = tmp_path / "cache"
    first = resolve(uri, sha256=checksum, cache_dir=cache, s3=services.s3)
    for obj in s3_client.list_objects_v2(Bucket=bucket)["Contents"]:
        s3_client.delete_object(Bucket=bucket, Key=obj["Key"])
    assert resolve(uri, sha256=checksum, cache_dir=cache, s3=services.s3) == first
    with pytest.raises(ArtifactStoreError, match="no objects"):  # without the cache: gone
        resolve(uri, sha256=checksum, cache_dir=tmp_path / "other-cache", s3=services.s3)


def test_a_checksum_mismatch_is_refused(services: Settings, s3_client: Any,
                                        bucket_factory: Callable[..., str],
                                        tmp_path: Path) -> None:
    bucket = bucket_factory("artifacts")
    uri = f"s3://{bucket}/m/"
    source = _artifact(tmp_path)
    checksum = upload(source, uri, services.s3)
    s3_client.put_object(Bucket=bucket, Key="m/model.json", Body=b'{"version": "tampered"}')
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactStoreError, match="the registry says"):
        resolve(uri, sha256=checksum, cache_dir=cache, s3=services.s3)
    assert list(cache.iterdir()) == []  # nothing that looks like a whole artifact
    (source / "model.pt").write_bytes(b"changed")
    with pytest.raises(ArtifactStoreError, match="do not match"):  # local artifacts too
        resolve(str(source), sha256=checksum, cache_dir=cache, s3=services.s3)


def test_a_key_escaping_the_folder_is_refused(services: Settings, s3_client: Any,
                                              bucket_factory: Callable[..., str],
                                              tmp_path: Path) -> None:
    bucket = bucket_factory("artifacts")
    s3_client.put_object(Bucket=bucket, Key="m/model.json", Body=b"{}")
    s3_client.put_object(Bucket=bucket, Key="m/../escaped.txt", Body=b"outside")
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(ArtifactStoreError, match="escapes the artifact folder"):
        resolve(f"s3://{bucket}/m/", sha256=None, cache_dir=cache, s3=services.s3)
    assert not (cache / "escaped.txt").exists() and not (cache.parent / "escaped.txt").exists()
    assert list(cache.iterdir()) == []

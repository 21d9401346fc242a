"""Where model artifacts live: a local directory, or an ``s3://bucket/prefix/`` URI.

An artifact's checksum is the SHA-256 of its files (relative path and contents, in path
order), so it names the directory's contents wherever they are copied. A process that runs an
S3 artifact downloads it once into ``cache_dir/<sha256>/`` (a temporary folder renamed into
place when complete and verified, so a crash never leaves a half artifact that looks whole),
and a registered checksum that does not match refuses the artifact.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import boto3
from botocore.config import Config

from core.settings import S3Settings

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class ArtifactStoreError(RuntimeError):
    """An artifact could not be found, downloaded or verified."""


def tree_sha256(directory: Path) -> str:
    """SHA-256 over (relative path, size, contents) of every file below ``directory``."""
    digest = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    if not files:
        raise ArtifactStoreError(f"{directory} holds no files")
    for path in files:
        rel = path.relative_to(directory).as_posix()
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    """A ``file://`` URI or plain path as a Path."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri)


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ArtifactStoreError(f"not an s3://bucket/prefix URI: {uri}")
    prefix = parsed.path.lstrip("/")
    return parsed.netloc, (prefix.rstrip("/") + "/") if prefix else ""


def s3_client(cfg: S3Settings) -> Any:
    """A synchronous boto3 client (artifacts are fetched rarely, outside the event path);
    unset keys mean botocore's credential chain, as everywhere else."""
    def secret(value: Any) -> str | None:
        return value.get_secret_value() if value is not None and not cfg.anonymous else None

    return boto3.client(
        "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region,
        aws_access_key_id=secret(cfg.access_key_id),
        aws_secret_access_key=secret(cfg.secret_access_key),
        config=Config(connect_timeout=cfg.connect_timeout_s, read_timeout=cfg.read_timeout_s,
                      retries={"max_attempts": cfg.max_attempts, "mode": "standard"}))


def upload(directory: Path, uri: str, cfg: S3Settings) -> str:
    """Copy an artifact directory to ``uri``; returns its checksum."""
    bucket, prefix = split_s3(uri)
    checksum = tree_sha256(directory)
    client = s3_client(cfg)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, prefix + path.relative_to(directory).as_posix())
    log.info("uploaded artifact %s to %s (sha256 %s)", directory, uri, checksum[:12])
    return checksum


def _download(uri: str, target: Path, cfg: S3Settings) -> None:
    bucket, prefix = split_s3(uri)
    client = s3_client(cfg)
    keys = [obj["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])]
    if not keys:
        raise ArtifactStoreError(f"no objects under {uri}")
    for key in keys:
        rel = key[len(prefix):]
        if not rel or rel.endswith("/"):
            continue
        dest = (target / rel).resolve()
        if target.resolve() not in dest.parents:  # a key like "../x" must not escape
            raise ArtifactStoreError(f"object key {key!r} escapes the artifact folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(dest))


def resolve(uri: str, *, sha256: str | None, cache_dir: Path, s3: S3Settings) -> Path:
    """A local directory holding the artifact ``uri`` names, verified against ``sha256``
    (when the registry knows it)."""
    if not is_s3(uri):
        path = local_path(uri)
        if sha256 is not None and tree_sha256(path) != sha256:
            raise ArtifactStoreError(f"{path}: contents do not match the registered sha256 "
                                     f"{sha256[:12]}")
        return path
    if sha256 is not None and (cache_dir / sha256).is_dir():
        return cache_dir / sha256
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
    try:
        log.info("downloading artifact %s", uri)
        _download(uri, staging, s3)
        actual = tree_sha256(staging)
        if sha256 is not None and actual != sha256:
            raise ArtifactStoreError(f"{uri}: downloaded contents have sha256 {actual[:12]}, "
                                     f"the registry says {sha256[:12]}")
        final = cache_dir / actual
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():
                raise
            # Another process finished the same download first: same contents, same name.
        return final
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

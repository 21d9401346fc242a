"""`binaudit train prepare --bucket`: ids fetched from an ABID-layout bucket, then split."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from binaudit.cli import app
from core.settings import Settings

pytestmark = pytest.mark.services


def test_prepare_fetches_listed_ids_from_bucket(services: Settings, sample_dir: Path,
                                                 bucket_factory: Callable[..., str],
                                                 s3_client: Any, tmp_path: Path) -> None:
    bucket = bucket_factory("abid")
    with (sample_dir / "labels.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if 1 <= int(r["expected_quantity"]) <= 5][:30]
    for r in rows:
        image_id = Path(r["image"]).stem
        s3_client.put_object(Bucket=bucket, Key=f"bin-images/{image_id}.jpg",
                             Body=(sample_dir / r["image"]).read_bytes())
        s3_client.put_object(Bucket=bucket, Key=f"metadata/{image_id}.json",
                             Body=(sample_dir / r["metadata"]).read_bytes())
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "expected_quantity"])
        writer.writerows([r["image"], r["expected_quantity"]] for r in rows)
    env = {"BINAUDIT_ABID__ENDPOINT_URL": services.s3.endpoint_url or "",
           "BINAUDIT_ABID__ANONYMOUS": "false", "BINAUDIT_ABID__ACCESS_KEY_ID": "testing",
           "BINAUDIT_ABID__SECRET_ACCESS_KEY": "testing"}
    out = tmp_path / "manifest.json"
    result = CliRunner().invoke(app, [
        "train", "prepare", "--bucket", bucket, "--labels", str(labels),
        "--source-dir", str(tmp_path / "abid"), "--out", str(out)], env=env)
    assert result.exit_code == 0, result.output
    manifest = json.loads(out.read_text())
    assert len(manifest["items"]) == 30
    assert (tmp_path / "abid" / "images" / f"{Path(rows[0]['image']).stem}.jpg").read_bytes() == \
        (sample_dir / rows[0]["image"]).read_bytes()

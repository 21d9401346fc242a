"""Training data from several folders at once, or straight from an S3 bucket in ABID layout."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from binaudit.cli import app
from core.settings import Settings
from tests.conftest import settings_env
from trainer.data import read_manifest


def _labelled(sample_dir: Path, *, per_count: int, skip: int = 0) -> list[tuple[str, int]]:
    with open(sample_dir / "labels.csv", newline="") as fh:
        rows = [(r["image"], int(r["expected_quantity"])) for r in csv.DictReader(fh)]
    taken: dict[int, list[tuple[str, int]]] = {}
    for rel, count in rows:
        if 1 <= count <= 5:
            taken.setdefault(count, []).append((rel, count))
    return [r for c in sorted(taken) for r in taken[c][skip:skip + per_count]]


def _folder(root: Path, sample_dir: Path, rows: list[tuple[str, int]]) -> Path:
    (root / "images").mkdir(parents=True)
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "expected_quantity"])
        for rel, count in rows:
            shutil.copy(sample_dir / rel, root / rel)
            writer.writerow([rel, count])
    return root


def test_prepare_combines_several_source_folders(sample_dir: Path, tmp_path: Path,
                                                 cli: Callable[..., str]) -> None:
    a = _folder(tmp_path / "a", sample_dir, _labelled(sample_dir, per_count=3))
    b = _folder(tmp_path / "b", sample_dir, _labelled(sample_dir, per_count=2, skip=3))
    out = tmp_path / "m.json"
    cli("train", "prepare", "--source-dir", a, "--source-dir", b, "--out", out)
    manifest = read_manifest(out)
    assert len(manifest.items) == 25
    folders = {Path(item.image_path).parent.parent for item in manifest.items}
    assert folders == {a.resolve(), b.resolve()}


@pytest.mark.services
def test_fit_reads_images_straight_from_an_s3_bucket(
        services: Settings, sample_dir: Path, tmp_path: Path, s3_client: Any,
        bucket_factory: Callable[..., str], tiny_flags: list[str]) -> None:
    bucket = bucket_factory("abid-layout")
    rows = _labelled(sample_dir, per_count=6)
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "expected_quantity"])
        for rel, count in rows:
            ident = Path(rel).stem
            s3_client.put_object(Bucket=bucket, Key=f"bin-images/{ident}.jpg",
                                 Body=(sample_dir / rel).read_bytes())
            writer.writerow([rel, count])
    env = settings_env(s3={"endpoint_url": services.s3.endpoint_url})
    manifest = tmp_path / "s3.json"
    runner = CliRunner()
    prepared = runner.invoke(app, ["train", "prepare", "--s3-bucket", bucket, "--labels",
                                   str(labels), "--out", str(manifest)], env=env)
    assert prepared.exit_code == 0, prepared.output
    items = read_manifest(manifest).items
    assert len(items) == 30 and all(i.image_path.startswith(f"s3://{bucket}/") for i in items)

    out = tmp_path / "run"
    fitted = runner.invoke(app, ["train", "fit", "--manifest", str(manifest), "--out", str(out),
                                 "--epochs", "1", "--workers", "2", *tiny_flags], env=env)
    assert fitted.exit_code == 0, fitted.output
    history = json.loads((out / "history.json").read_text())
    assert history[0]["train_images_per_s"] > 0
    assert (out / "model.pt").is_file() and (out / "model.json").is_file()

"""Trainer fixtures: a tiny, real-image manifest (8 images per count 1..5) at 32 px."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from binaudit.cli import app

TINY = ["--image-size", "32", "--weights", "none", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="session")
def tiny_flags() -> list[str]:
    """Fit flags for fast tests: 32 px images, random init, CPU."""
    return list(TINY)


@pytest.fixture(scope="session")
def cli() -> Any:
    return run_cli


def run_cli(*args: Any) -> str:
    """Invoke ``binaudit ARGS`` in-process; fail the test with the output on a non-zero exit."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code != 0:
        raise AssertionError(f"binaudit {' '.join(map(str, args))} exited {result.exit_code}:\n"
                             f"{result.output}\n{result.exception!r}")
    return result.output


@pytest.fixture(scope="session")
def tiny_labels(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An auditors' CSV (id,image_path,expected_quantity) with 8 sample images per class,
    plus two out-of-class counts and one id missing from the source."""
    with (sample_dir / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    per_class: dict[int, list[dict[str, str]]] = defaultdict(list)
    extra = []
    for row in rows:
        count = int(row["expected_quantity"])
        if 1 <= count <= 5 and len(per_class[count]) < 8:
            per_class[count].append(row)
        elif (count == 0 or count > 5) and len(extra) < 2:
            extra.append(row)
    path = tmp_path_factory.mktemp("labels") / "tiny.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image_path", "expected_quantity"])
        for row in [r for c in sorted(per_class) for r in per_class[c]] + extra:
            writer.writerow([Path(row["image"]).stem, row["image"], row["expected_quantity"]])
        writer.writerow(["does-not-exist", "images/does-not-exist.jpg", 3])
    return path


@pytest.fixture(scope="session")
def tiny_manifest(sample_dir: Path, tiny_labels: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("manifest") / "manifest.json"
    run_cli("train", "prepare", "--labels", tiny_labels, "--source-dir", sample_dir,
            "--out", out, "--seed", "1")
    return out


@pytest.fixture(scope="session")
def pixels(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `train pixels` cache of 24 real sample images at 32 px (the serving decode)."""
    out = tmp_path_factory.mktemp("pixels") / "px32"
    run_cli("train", "pixels", "--source-dir", sample_dir, "--out", out, "--image-size", "32",
            "--limit", "24", "--workers", "0")
    return out

"""Manifest preparation: deterministic, stratified splits; exclusions and missing ids."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from trainer.data import (
    DataError,
    build_manifest,
    entries_from_dirs,
    parse_classes,
    read_file_list,
    read_manifest,
    stratified_split,
)


def _labels(n_per_class: int = 30) -> dict[str, int]:
    return {f"{c}-{i:03d}": c for c in range(5) for i in range(n_per_class)}


def test_split_is_deterministic_for_a_seed() -> None:
    labels = _labels()
    assert stratified_split(labels, seed=7) == stratified_split(dict(reversed(labels.items())),
                                                               seed=7)
    assert stratified_split(labels, seed=7) != stratified_split(labels, seed=8)


def test_split_is_stratified() -> None:
    labels = _labels(30)
    split = stratified_split(labels, seed=0)
    per = Counter((labels[i], s) for i, s in split.items())
    for c in range(5):
        assert (per[(c, "train")], per[(c, "val")], per[(c, "test")]) == (24, 3, 3)


def test_small_class_still_in_every_split() -> None:
    split = stratified_split({"a": 0, "b": 0, "c": 0}, seed=0)
    assert sorted(split.values()) == ["test", "train", "val"]


def test_bad_fractions() -> None:
    with pytest.raises(DataError):
        stratified_split({"a": 0}, seed=0, fractions=(0.5, 0.1, 0.1))


@pytest.mark.parametrize(("spec", "expected"), [("1-5", [1, 2, 3, 4, 5]), ("0,2,1", [0, 1, 2])])
def test_parse_classes(spec: str, expected: list[int]) -> None:
    assert parse_classes(spec) == expected


def test_prepare_reports_exclusions_and_missing(tiny_manifest: Path) -> None:
    manifest = read_manifest(tiny_manifest)
    assert len(manifest.items) == 40
    assert len(manifest.excluded) == 2 and all(e["count"] not in range(1, 6)
                                               for e in manifest.excluded)
    assert manifest.missing == ["does-not-exist"]
    for split, n in (("train", 30), ("val", 5), ("test", 5)):
        assert len(manifest.split(split)) == n
        if split != "train":
            assert sorted(i.count for i in manifest.split(split)) == [1, 2, 3, 4, 5]
    assert tiny_manifest.with_suffix(".csv").is_file()
    assert len(manifest.fingerprint) == 64


def test_prepare_is_reproducible(cli: Any, sample_dir: Path, tiny_labels: Path,
                                 tiny_manifest: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.json"
    cli("train", "prepare", "--labels", tiny_labels, "--source-dir", sample_dir, "--out", again,
        "--seed", "1")
    a, b = read_manifest(tiny_manifest), read_manifest(again)
    assert a.fingerprint == b.fingerprint
    assert [(i.id, i.split) for i in a.items] == [(i.id, i.split) for i in b.items]


def test_file_list_keeps_ids_as_spelled(tmp_path: Path) -> None:
    path = tmp_path / "file_list.json"
    path.write_text(json.dumps({"1": ["data/metadata/00523.json"],
                                "2": ["data/metadata/523.json"]}))
    entries = read_file_list(path)
    assert [(e.id, e.count) for e in entries] == [("00523", 1), ("523", 2)]


def test_file_list_against_sample_reports_missing(cli: Any, sample_dir: Path,
                                                  tmp_path: Path) -> None:
    file_list = sample_dir.parent / "abid" / "file_list.json"
    out = tmp_path / "m.json"
    try:
        cli("train", "prepare", "--file-list", file_list, "--source-dir", sample_dir,
            "--out", out)
    except AssertionError as exc:  # no overlap at all is a clear error, not a crash
        assert "no usable images" in str(exc)
        return
    manifest = read_manifest(out)
    assert len(manifest.missing) > 10_000 - len(manifest.items)


def _folder(root: Path, header: str, rows: list[str]) -> Path:
    root.mkdir(parents=True)
    (root / "images").mkdir()
    for row in rows:
        (root / "images" / f"{row.split(',')[0]}.jpg").write_bytes(b"jpeg")
    (root / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def test_reviewed_labels_override_the_dataset_and_are_counted(tmp_path: Path) -> None:
    """Bins from the auditors' export are marked reviewed, their reviewed count wins over the
    dataset's label for the same image, and the manifest says how many it trains on."""
    ids = [f"{i:05d}" for i in range(30)]
    dataset = _folder(tmp_path / "sample", "id,image_path,expected_quantity",
                      [f"{i},images/{i}.jpg,{1 + n % 5}" for n, i in enumerate(ids)])
    reviewed = _folder(
        tmp_path / "reviewed",
        "id,image_path,expected_quantity,image_uri,bin_id,event_id,discrepancy_id,"
        "review_state,predicted_quantity,model_version,reviewer,reviewed_at",
        [f"{i},images/{i}.jpg,5,s3://b/{i}.jpg,{i},e{i},{n},confirmed,2,v,ann,2026-12-04"
         for n, i in enumerate(ids[:4])])
    entries = entries_from_dirs([dataset, reviewed])
    assert [e.reviewed for e in entries].count(True) == 4
    manifest = build_manifest(entries, dataset, classes=[1, 2, 3, 4, 5], seed=0)
    by_id = {it.id: it for it in manifest.items}
    assert all(by_id[i].count == 5 and by_id[i].reviewed for i in ids[:4])
    assert not any(by_id[i].reviewed for i in ids[4:])
    assert manifest.reviewed_bins() == sum(
        1 for i in ids[:4] if by_id[i].split in ("train", "val"))

"""Data: label sources -> a seeded, stratified split manifest (images load lazily: datasets.py).

A manifest is a JSON file (plus a CSV copy for people) listing every usable image once with its
count, class index and split, the data fingerprint, and what was excluded or missing. Ids are
kept exactly as ABID spells them: ``00523`` and ``523`` are different images.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_DIRS = ("images", "bin-images")
METADATA_DIRS = ("metadata",)


class DataError(ValueError):
    """A label source, image folder or manifest cannot be used."""


class LabeledId(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    count: int
    image_path: str | None = None  # as given by a manifest, else resolved in the source dir
    # Labelled by an auditor's review (`binaudit review export`), not by the dataset.
    reviewed: bool = False


class ManifestItem(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    image_path: str
    count: int
    label: int
    split: str
    reviewed: bool = False


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)
    format_version: int = 1
    created_at: datetime
    source: str
    seed: int
    fractions: tuple[float, float, float]
    classes: list[int]
    fingerprint: str
    items: list[ManifestItem]
    excluded: list[dict[str, str | int]] = []
    missing: list[str] = []

    def reviewed_bins(self) -> int:
        """Reviewed bins the model is fitted and selected on (train and val splits)."""
        return sum(1 for it in self.items if it.reviewed and it.split in ("train", "val"))

    def split(self, name: str) -> list[ManifestItem]:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {SPLITS}")
        return [item for item in self.items if item.split == name]


def parse_classes(spec: str) -> list[int]:
    """``"1-5"`` -> [1..5]; ``"0,1,2"`` -> [0, 1, 2]."""
    spec = spec.strip()
    if "-" in spec and "," not in spec:
        lo, hi = (int(x) for x in spec.split("-", 1))
        if hi < lo:
            raise DataError(f"empty class range {spec!r}")
        return list(range(lo, hi + 1))
    values = sorted({int(x) for x in spec.split(",") if x.strip()})
    if not values:
        raise DataError(f"no classes in {spec!r}")
    return values


# ---- label sources ---------------------------------------------------------------------------

def read_file_list(path: Path) -> list[LabeledId]:
    """The reference's ``file_list.json``: ``{"1": ["data/metadata/100313.json", ...], ...}``."""
    raw = json.loads(path.read_text())
    return [LabeledId(id=Path(entry).stem, count=int(count))
            for count, entries in sorted(raw.items()) for entry in entries]


def read_labels_csv(path: Path) -> list[LabeledId]:
    """ABID-sample ``labels.csv`` (image, expected_quantity) or an auditors' manifest
    (id, image_path, expected_quantity)."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return []
    cols = set(rows[0])
    reviewed = {"discrepancy_id", "review_state"} <= cols  # the auditors' export
    if "expected_quantity" not in cols or not ({"id", "image"} & cols):
        raise DataError(f"{path}: expected columns id,image_path,expected_quantity or "
                        f"image,expected_quantity; found {sorted(cols)}")
    out = []
    for row in rows:
        image = row.get("image_path") or row.get("image") or ""
        ident = row.get("id") or Path(image).stem
        out.append(LabeledId(id=ident, count=int(row["expected_quantity"]),
                             image_path=row.get("image_path") or None, reviewed=reviewed))
    return out


def read_ids(path: Path, source_dir: Path) -> list[LabeledId]:
    """One id per line; counts read from each id's ABID metadata JSON in ``source_dir``."""
    out = []
    for line in path.read_text().splitlines():
        ident = line.strip()
        if not ident or ident.startswith("#"):
            continue
        meta = _find(source_dir, METADATA_DIRS, f"{ident}.json")
        count = int(json.loads(meta.read_text())["EXPECTED_QUANTITY"]) if meta else -1
        out.append(LabeledId(id=ident, count=count))
    return out


def _find(root: Path, subdirs: Iterable[str], name: str) -> Path | None:
    for sub in subdirs:
        candidate = root / sub / name
        if candidate.is_file():
            return candidate
    return None


def resolve_image(source_dir: Path, entry: LabeledId) -> Path | None:
    """Local image of ``entry``: its own path (relative to ``source_dir``) or the ABID layout."""
    if entry.image_path:
        given = Path(entry.image_path)
        candidate = given if given.is_absolute() else source_dir / given
        return candidate if candidate.is_file() else None
    return _find(source_dir, IMAGE_DIRS, f"{entry.id}.jpg")


def entries_from_dirs(dirs: Sequence[Path]) -> list[LabeledId]:
    """Several ABID-format folders combined (e.g. the sample, the extra set and reviewed bins),
    each with its own ``labels.csv``; image paths resolved in their own folder (absolute)."""
    out: list[LabeledId] = []
    for directory in dirs:
        labels = directory / "labels.csv"
        if not labels.is_file():
            raise DataError(f"{labels} not found: each --source-dir needs its labels.csv")
        for entry in read_labels_csv(labels):
            image = resolve_image(directory, entry)
            out.append(entry.model_copy(update={"image_path": str(image.resolve())})
                       if image else entry.model_copy(update={"image_path": None}))
    return out


def entries_in_bucket(entries: Sequence[LabeledId], bucket: str,
                      sizes: dict[str, int]) -> list[LabeledId]:
    """Point entries at ``s3://bucket/bin-images/<id>.jpg`` (the ABID layout) where the object
    exists (``sizes``: key -> bytes, from a listing); the others stay unresolved."""
    out = []
    for entry in entries:
        key = f"bin-images/{entry.id}.jpg"
        out.append(entry.model_copy(
            update={"image_path": f"s3://{bucket}/{key}" if key in sizes else None}))
    return out


# ---- split and fingerprint ---------------------------------------------------------------------

def stratified_split(
    labels: dict[str, int], *, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> dict[str, str]:
    """Assign each id to train/val/test, per class, deterministically for ``seed``.

    Each class keeps the fractions (rounded); a class with >= 3 ids gets at least one val and
    one test id so that every split sees every class.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise DataError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    by_class: dict[int, list[str]] = defaultdict(list)
    for ident, label in labels.items():
        by_class[label].append(ident)
    rng = random.Random(seed)
    assignment: dict[str, str] = {}
    for label in sorted(by_class):
        ids = sorted(by_class[label])
        rng.shuffle(ids)
        n = len(ids)
        n_val = round(n * fractions[1])
        n_test = round(n * fractions[2])
        if n >= 3:
            n_val = max(n_val, 1 if fractions[1] else 0)
            n_test = max(n_test, 1 if fractions[2] else 0)
        for i, ident in enumerate(ids):
            assignment[ident] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return assignment


def fingerprint(entries: Sequence[tuple[str, int, int]]) -> str:
    """sha256 over sorted (id, count, image byte size) triples."""
    digest = hashlib.sha256()
    for ident, count, size in sorted(entries):
        digest.update(f"{ident}\t{count}\t{size}\n".encode())
    return digest.hexdigest()


def build_manifest(
    entries: Sequence[LabeledId],
    source_dir: Path,
    *,
    classes: Sequence[int],
    seed: int,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    object_sizes: dict[str, int] | None = None,
    source: str | None = None,
) -> Manifest:
    """Keep entries whose count is a class and whose image exists; split; fingerprint.

    Images are local files, or ``s3://`` URIs whose sizes come in ``object_sizes`` (bucket
    key -> bytes, from one listing) so that nothing is downloaded to build a manifest.
    """
    class_index = {c: i for i, c in enumerate(classes)}
    excluded: list[dict[str, str | int]] = []
    missing: list[str] = []
    kept: dict[str, tuple[LabeledId, str]] = {}
    for entry in entries:
        # First entry of an id wins, except that an auditor's review overrides the dataset's
        # label (the reviewed count is what the bin really held).
        if entry.id in kept and (kept[entry.id][0].reviewed or not entry.reviewed):
            continue
        if entry.count not in class_index:
            excluded.append({"id": entry.id, "count": entry.count, "reason": "count not a class"})
            continue
        image = _locate(source_dir, entry, object_sizes)
        if image is None:
            missing.append(entry.id)
            continue
        kept[entry.id] = (entry, image)
    if not kept:
        raise DataError(f"no usable images: {len(excluded)} excluded by class, {len(missing)} "
                        f"missing from {source_dir}")
    splits = stratified_split({i: class_index[e.count] for i, (e, _) in kept.items()},
                              seed=seed, fractions=fractions)
    items = [
        ManifestItem(id=i, image_path=path, count=e.count,
                     label=class_index[e.count], split=splits[i], reviewed=e.reviewed)
        for i, (e, path) in sorted(kept.items())
    ]
    fp = fingerprint([(it.id, it.count, _size(it.image_path, object_sizes)) for it in items])
    return Manifest(created_at=datetime.now(UTC), source=source or str(source_dir), seed=seed,
                    fractions=fractions, classes=list(classes), fingerprint=fp, items=items,
                    excluded=excluded, missing=missing)


def _locate(source_dir: Path, entry: LabeledId, sizes: dict[str, int] | None) -> str | None:
    if entry.image_path and entry.image_path.startswith("s3://"):
        key = entry.image_path[5:].partition("/")[2]
        return entry.image_path if sizes is not None and key in sizes else None
    image = resolve_image(source_dir, entry)
    return str(image.resolve()) if image else None


def _size(image_path: str, sizes: dict[str, int] | None) -> int:
    if image_path.startswith("s3://"):
        assert sizes is not None
        return sizes[image_path[5:].partition("/")[2]]
    return Path(image_path).stat().st_size


def write_manifest(manifest: Manifest, path: Path) -> None:
    """``path`` (JSON) plus a CSV copy next to it (id,image_path,expected_quantity,split)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(manifest.model_dump_json(indent=1) + "\n")
    with path.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image_path", "expected_quantity", "split"])
        for item in manifest.items:
            writer.writerow([item.id, item.image_path, item.count, item.split])


def read_manifest(path: Path) -> Manifest:
    if not path.is_file():
        raise DataError(f"manifest {path} not found (create it with `binaudit train prepare`)")
    return Manifest.model_validate_json(path.read_text())

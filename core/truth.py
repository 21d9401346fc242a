"""Known wrong manifests: how a manifest is made wrong, and the sidecar truth file that
``binaudit publish --wrong-manifest-rate`` writes (never inside the event) and that replay and
the demo summary read to measure audit quality (``core.quality``).

The truth file is CSV with the header ``event_id,bin_id,true_count,manifest_count,
perturbation``: one row per published event; ``perturbation`` is empty for a correct manifest.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TextIO

from core.quality import TruthRow

# How a manifest is made wrong: the bin holds one item fewer than recorded (an item went
# missing: manifest = true + 1), one more (an extra item was put in: true - 1), or the
# manifest carries another bin's count (swapped).
WRONG_MANIFEST_KINDS = ("missing_item", "extra_item", "swapped")


def perturbed_count(true_count: int, kind: str, rng: random.Random,
                    pool: Sequence[int] = ()) -> int | None:
    """The wrong manifest count for ``kind`` (None when it cannot apply to this bin):
    ``missing_item`` true + 1, ``extra_item`` true - 1, ``swapped`` a different count drawn
    from ``pool`` (other bins' counts)."""
    if kind == "missing_item":
        return true_count + 1
    if kind == "extra_item":
        return true_count - 1 if true_count > 0 else None
    if kind == "swapped":
        others = [c for c in pool if c != true_count]
        return others[rng.randrange(len(others))] if others else None
    raise ValueError(f"unknown wrong-manifest kind {kind!r}; choose from "
                     f"{', '.join(WRONG_MANIFEST_KINDS)}")




@dataclass(frozen=True)
class TruthEntry:
    """One published event: its true count and the count its manifest says."""

    event_id: str
    bin_id: str
    true_count: int
    manifest_count: int
    perturbation: str | None = None


TRUTH_COLUMNS = tuple(f.name for f in fields(TruthEntry))


class TruthWriter:
    """Appends truth rows to an open CSV file (header first)."""

    def __init__(self, fh: TextIO) -> None:
        self._writer = csv.DictWriter(fh, fieldnames=TRUTH_COLUMNS, lineterminator="\n")
        self._writer.writeheader()

    def write(self, entry: TruthEntry) -> None:
        self._writer.writerow({**asdict(entry), "perturbation": entry.perturbation or ""})


def read_truth(path: Path) -> dict[str, TruthEntry]:
    """event id -> TruthEntry of a truth file (ValueError naming a malformed line)."""
    out: dict[str, TruthEntry] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != TRUTH_COLUMNS:
            raise ValueError(f"{path}: expected the header {','.join(TRUTH_COLUMNS)}, got "
                             f"{','.join(reader.fieldnames or ())}")
        for line, row in enumerate(reader, start=2):
            try:
                entry = TruthEntry(row["event_id"], row["bin_id"], int(row["true_count"]),
                                   int(row["manifest_count"]), row["perturbation"] or None)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: {exc}") from exc
            out[entry.event_id] = entry
    return out


def truth_rows(verdicts: Iterable[Mapping[str, Any]], truth: Mapping[str, TruthEntry]
               ) -> tuple[list[TruthRow], int]:
    """Verdict rows (event_id, expected_quantity, status, discrepancy_score) joined with the
    truth; returns the joined rows and how many verdicts the truth file does not know."""
    rows, unknown = [], 0
    for v in verdicts:
        entry = truth.get(v["event_id"])
        if entry is None:
            unknown += 1
            continue
        rows.append(TruthRow(v["event_id"], int(v["expected_quantity"]), entry.true_count,
                             v["status"], v["discrepancy_score"], entry.perturbation))
    return rows, unknown
